"""The routing policy, in one place: which task (or plain SAM) handles an image.

Each task's VAE scores an image's router feature with its negative ELBO (lower = more like the
task's training images). The policy:

- **auto**: the image goes to the lowest-scoring task if that score is at most the task's
  threshold; otherwise to plain SAM (*SAM fallback*).
- **threshold**: calibrated when the task is learned: the ``percentile`` (97) of the K-fold
  held-out scores of its training images, times ``margin`` (``LearnSettings.threshold_margin``,
  1.5 by default, 1 in the paper).
- **sanity bound**: a stored threshold more than :data:`MAX_THRESHOLD_RATIO` times the highest
  score of the task's own training features would accept nearly any image, so such a task is
  refused when the library is read.
- **a forced choice**: ``"sam"`` (or None) is plain SAM; a task name is that task, unscored.

Pure Python: no torch needed to import or to decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from casam.errors import InputError

AUTO = "auto"
SAM = "sam"
#: A task's threshold may be at most this many times the highest score of its own training
#: features under its VAE. Real tasks sit at 1-16x (a 5-fold threshold times the 1.5 margin,
#: against the final VAE); far above, the task would accept nearly any image and SAM fallback
#: could never happen.
MAX_THRESHOLD_RATIO = 1000.0

SCORE_HELP = (
    "Each learned task scores an image with its VAE: the score (the negative ELBO) says how "
    "unlike the task's training images the image is, lower = more alike. An image goes to the "
    "lowest-scoring task when that score is at most the task's threshold (calibrated on the "
    "task's own images when it was learned); otherwise plain SAM segments it (SAM fallback)."
)


@dataclass(frozen=True)
class RouteDecision:
    """Where an image goes: a task (``fallback`` False) or plain SAM."""

    task: str | None
    score: float
    threshold: float | None
    fallback: bool
    scores: dict[str, float] = field(default_factory=dict)
    forced: bool = False
    best: str | None = None
    """The best-scoring task even when it was rejected (None without tasks)."""

    @property
    def ratio(self) -> float | None:
        """The score as a multiple of its task's threshold (None when not scored)."""
        if self.threshold is None or math.isnan(self.score) or self.threshold <= 0:
            return None
        return self.score / self.threshold

    @property
    def kind(self) -> str:
        """``"override"`` (chosen by the user), ``"task"`` or ``"fallback"``."""
        if self.forced:
            return "override"
        return "fallback" if self.fallback else "task"

    @property
    def headline(self) -> str:
        """What segments the image, in a few words: a task name, "SAM fallback" or a choice."""
        if self.forced:
            return f"{self.task} (your choice)" if self.task else "Plain SAM (your choice)"
        return "SAM fallback" if self.fallback else str(self.task)

    @property
    def detail(self) -> str:
        """Why, in words a clinician reads (no bare ELBO comparison)."""
        if self.forced:
            return "chosen by you; the router was not asked"
        if self.best is None:
            return "no task learned for this model yet"
        r = self.ratio
        times = f"score {r:.2g}x its threshold" if r is not None else "not scored"
        if self.fallback:
            return f"closest task {self.best} was rejected ({times})"
        return f"its images look like this one ({times})"

    def __str__(self) -> str:
        if self.forced:
            return f"{self.task} (chosen by you)" if self.task else "SAM (chosen by you)"
        return f"{self.headline}: {self.detail}"

    def to_json(self, image: str) -> dict:
        return {
            "image": image,
            "task": self.task,
            "score": None if math.isnan(self.score) else float(self.score),
            "threshold": None if self.fallback and self.best is None else self.threshold,
            "fallback": self.fallback,
        }


def decide(
    names: Sequence[str], scores: Sequence[float], thresholds: Sequence[float]
) -> RouteDecision:
    """The automatic decision for one image from every task's score (same order as ``names``)."""
    if not names:
        return RouteDecision(None, float("nan"), None, True)
    i = min(range(len(names)), key=lambda k: scores[k])
    score, tau = float(scores[i]), float(thresholds[i])
    ok = score <= tau
    return RouteDecision(
        names[i] if ok else None,
        score,
        tau,
        not ok,
        {n: float(v) for n, v in zip(names, scores, strict=True)},
        best=names[i],
    )


def choose(
    choice: str | None,
    auto: Callable[[], RouteDecision],
    thresholds: Mapping[str, float],
    model: str,
) -> RouteDecision:
    """``"auto"`` -> ``auto()``; ``"sam"``/None -> plain SAM; a task name -> that task.

    ``thresholds``: the tasks that can route (those of ``model``, the backbone identity).
    """
    if choice in (None, SAM, "SAM"):
        return RouteDecision(None, float("nan"), None, True, forced=True)
    if choice == AUTO:
        return auto()
    check_known(choice, thresholds, model)
    return RouteDecision(choice, float("nan"), thresholds[choice], False, forced=True)


def check_known(name: str, thresholds: Mapping[str, float], model: str) -> None:
    """InputError unless ``name`` is one of the tasks that can route with ``model``."""
    if name not in thresholds:
        known = ", ".join(thresholds) or "none yet"
        raise InputError(f"no task '{name}' for model {model}; known tasks: {known}")


def calibrated_threshold(percentile_score: float, margin: float) -> float:
    """A task's routing threshold from the percentile of its held-out fold scores."""
    return percentile_score * margin


def threshold_is_sane(threshold: float, own_max: float) -> bool:
    """False when ``threshold`` is so far above the task's own highest score (``own_max``)
    that the task would accept nearly any image."""
    return not (own_max > 0 and threshold > MAX_THRESHOLD_RATIO * own_max)
