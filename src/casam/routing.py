"""The routing policy, in one place: which task (or plain SAM) handles an image.

Two routers score an image against every task; a task accepts when its score is at most its
threshold, and the image goes to the best-scoring task that accepts, else to plain SAM (*SAM
fallback*):

- **knn** (the default, :data:`DEFAULT_ROUTER`): the distance of the image's pooled views to
  the task's nearest stored training image (or the mean over its ``knn_k`` nearest,
  :mod:`casam.neighbours`); the best task is the one with the smallest score / threshold ratio;
  threshold = a margin x the largest leave-one-out distance among the task's stored images
  (``TaskInfo.knn_threshold``, the task's *own* threshold), raised to the task's floor
  (``LearnSettings.knn_floor``) where that is wider. An image beyond the own threshold but
  within the floor is taken only when no other task is nearly as close (the runner-up's ratio
  at least ``LearnSettings.knn_separation`` times the best's); else plain SAM, *too close to
  call*.
- **paper**: the paper's rule. Each task's VAE scores the attention-pooled feature with its
  negative ELBO (lower = more like the task's images); the lowest score wins; threshold = the
  ``percentile`` (97) of the K-fold held-out scores times ``LearnSettings.threshold_margin``
  (``TaskInfo.threshold``).
- **sanity bound**: a stored VAE threshold more than :data:`MAX_THRESHOLD_RATIO` times the
  highest score of the task's own training features would accept nearly any image, so such a
  task is refused when the library is read; so is a kNN threshold of :data:`MAX_KNN_THRESHOLD`
  or more (a cosine distance that far accepts unrelated images).
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
ROUTERS = ("knn", "paper")
DEFAULT_ROUTER = "knn"
#: A kNN threshold at or above this cosine distance would accept unrelated images (real tasks:
#: well under 0.1, see docs/benchmark-quality.md).
MAX_KNN_THRESHOLD = 0.5
#: A task's threshold may be at most this many times the highest score of its own training
#: features under its VAE. Real tasks sit at 1-16x (a 5-fold threshold times the 1.5 margin,
#: against the final VAE); far above, the task would accept nearly any image and SAM fallback
#: could never happen.
MAX_THRESHOLD_RATIO = 1000.0

SCORE_HELP = (
    "Each learned task scores an image by how unlike its stored training images it is (lower = "
    "more alike): the distance to the nearest one, or with the paper's router the VAE's "
    "negative ELBO. The score is shown as a share of the task's threshold (calibrated on the "
    "task's own images): at most 100% the task accepts the image, and the image goes to the "
    "task that accepts it best; when none does, plain SAM segments it (SAM fallback)."
)


def share(r: float | None) -> str:
    """A score / threshold ratio in words: "62% of its threshold", "3.4x its threshold"."""
    if r is None or math.isnan(r):
        return "not scored"
    r = max(r, 0.0)  # a training image's own distance can round to -1e-7: not "-0%"
    if r < 2:
        return f"{r:.0%} of its threshold"
    return f"{r:.1f}x its threshold" if r < 10 else f"{r:.0f}x its threshold"


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
    runner_up: str | None = None
    """The second-best task (None with fewer than two tasks)."""
    runner_up_ratio: float | None = None
    router: str = DEFAULT_ROUTER
    ambiguous: bool = False
    """Plain SAM because the best task was within its floor but beyond its own threshold, and
    the runner-up was nearly as close (kNN router)."""

    @property
    def ratio(self) -> float | None:
        """The score as a fraction of its task's threshold (None when not scored)."""
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
    def reason(self) -> str | None:
        """Why plain SAM segments the image, in one line (None when a task does)."""
        if self.forced:
            return "chosen by you" if self.task is None else None
        if not self.fallback:
            return None
        if self.best is None:
            return "no task learned for this model yet"
        if self.ambiguous:
            return (
                f"too close to call: {self.best} scores {share(self.ratio)}, "
                f"{self.runner_up} {share(self.runner_up_ratio)}"
            )
        return f"unlike every learned task: the closest, {self.best}, scores {share(self.ratio)}"

    @property
    def detail(self) -> str:
        """Why, in words a clinician reads: the score as a share of the threshold and the
        runner-up (no bare ELBO or distance)."""
        if self.forced:
            return "chosen by you; the router was not asked"
        if self.best is None:
            return "no task learned for this model yet"
        if self.fallback:
            text = str(self.reason)
        else:
            text = f"its images look like this one (score {share(self.ratio)})"
        if self.runner_up is not None and not self.ambiguous:  # an ambiguous reason names it
            text += f"; runner-up {self.runner_up} at {share(self.runner_up_ratio)}"
        return text

    def __str__(self) -> str:
        if self.forced:
            return f"{self.task} (chosen by you)" if self.task else "SAM (chosen by you)"
        return f"{self.headline}: {self.detail}"

    def to_json(self, image: str) -> dict:
        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else float(x)

        return {
            "image": image,
            "task": self.task,
            "score": num(self.score),
            "threshold": None if self.fallback and self.best is None else self.threshold,
            "fallback": self.fallback,
            "router": None if self.forced else self.router,
            "best": self.best,
            "ratio": num(self.ratio),
            "runner_up": self.runner_up,
            "runner_up_ratio": num(self.runner_up_ratio),
            "reason": self.reason,
            "ambiguous": self.ambiguous,
        }


def decide(
    names: Sequence[str],
    scores: Sequence[float],
    thresholds: Sequence[float],
    router: str = "paper",
    own: Sequence[float] | None = None,
    separation: Sequence[float] | None = None,
) -> RouteDecision:
    """The automatic decision for one image from every task's score (same order as ``names``).

    ``router="paper"``: the lowest score wins, then its threshold; ``"knn"``: the smallest
    score / threshold ratio wins (distances of different tasks are not on one scale).
    ``own``: each task's own threshold where ``thresholds`` raised it to a floor; a best score
    above its own threshold is accepted only if the runner-up's ratio is at least the task's
    ``separation`` times the best's (with no other task, it is).
    """
    if not names:
        return RouteDecision(None, float("nan"), None, True, router=router)
    ratios = [s / t if t > 0 else math.inf for s, t in zip(scores, thresholds, strict=True)]
    key = ratios if router == "knn" else list(scores)
    order = sorted(range(len(names)), key=lambda k: key[k])
    i = order[0]
    score, tau = float(scores[i]), float(thresholds[i])
    ok = score <= tau
    second = order[1] if len(order) > 1 else None
    ambiguous = False
    if ok and own is not None and score > own[i] and second is not None:
        sep = 1.0 if separation is None else float(separation[i])
        ambiguous = ratios[second] < sep * ratios[i]
        ok = not ambiguous
    return RouteDecision(
        names[i] if ok else None,
        score,
        tau,
        not ok,
        {n: float(v) for n, v in zip(names, scores, strict=True)},
        best=names[i],
        runner_up=None if second is None else names[second],
        runner_up_ratio=None if second is None else float(ratios[second]),
        router=router,
        ambiguous=ambiguous,
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


def knn_threshold_is_sane(threshold: float) -> bool:
    """False unless ``threshold`` is a usable kNN distance threshold (finite, in (0, 0.5))."""
    return math.isfinite(threshold) and 0 < threshold < MAX_KNN_THRESHOLD


def threshold_is_sane(threshold: float, own_max: float) -> bool:
    """False when ``threshold`` is so far above the task's own highest score (``own_max``)
    that the task would accept nearly any image."""
    return not (own_max > 0 and threshold > MAX_THRESHOLD_RATIO * own_max)
