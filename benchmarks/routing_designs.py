"""Router designs compared by ``routing.py`` on cached pooled features (no encoder calls).

A design turns each task's fit features into a scorer and a threshold; an image goes to the task
with the lowest score / threshold ratio when that ratio is at most 1, else to plain SAM. Scores:

- ``vae``: the engine's VAE (``casam.router.fit_router``, 5-fold thresholds) on one view;
- ``knn``: cosine distance to the nearest stored training feature of the task (exemplar-free:
  pooled features only), threshold from the leave-one-out nearest distances;
- ``and``: both must accept (ratio = the larger of the two ratios).

Thresholds: ``q`` percentile of the held-out scores x ``margin``; with ``aug`` the calibration
scores also include the task's augmented copies (scored by a model fitted without them).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

VIEWS = {
    "attn": ("attn",),
    "mean+std": ("mean", "std"),
    "attn+std+max": ("attn", "std", "max"),
    "grid2+std": ("grid2", "std"),
}


@dataclasses.dataclass(frozen=True)
class Design:
    name: str
    score: str  # vae, knn, and
    view: str = "attn"
    q: float = 97.0
    margin: float = 1.0
    aug: bool = False
    beta: float = 16.5
    steps: int = 600
    norm: bool = False  # per-view L2 normalisation (intensity-independent scale)


def view(data: dict, name: str, part: str, v: str, norm: bool) -> np.ndarray:
    keys = data["keys"].get((name, part), [])
    rows = []
    for k in keys:
        parts = [data["store"][k][x].astype(np.float64) for x in VIEWS[v]]
        if norm:
            parts = [a / (np.linalg.norm(a) + 1e-9) for a in parts]
        rows.append(np.concatenate(parts))
    return np.array(rows) if rows else np.zeros((0, 0))


# ---- scorers -------------------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    an = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    bn = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    return 1.0 - an @ bn.T


class KNN:
    def __init__(self, fit: np.ndarray):
        self.fit = fit
        d = _cos(fit, fit)
        np.fill_diagonal(d, np.inf)
        self.heldout = d.min(1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _cos(x, self.fit).min(1)


class VAEScorer:
    def __init__(self, fit: np.ndarray, beta: float, steps: int):
        from casam.router import fit_router

        self.scale = float(np.abs(fit).mean()) + 1e-12  # 1/D ||.||^2 is not scale-free
        f = torch.from_numpy(fit / self.scale).float()
        kw = dict(steps=steps, batch=32, lr=5e-4, hidden=128, latent=64)
        self.vae, _, self.heldout = fit_router(f, folds=5, percentile=97, seed=0, beta=beta, **kw)
        self.beta = beta

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(x / self.scale).float()
        return self.vae.neg_elbo(f, self.beta, sample=False).double().numpy()


def make_scorer(d: Design, fit: np.ndarray, cache: dict):
    key = (d.score, d.view, d.norm, d.beta, d.steps, fit.shape, float(fit.sum()))
    if key not in cache:
        cache[key] = KNN(fit) if d.score == "knn" else VAEScorer(fit, d.beta, d.steps)
    return cache[key]


# ---- fitting and evaluating a design ---------------------------------------------------------


def fitted(d: Design, data: dict, cache: dict) -> dict:
    """task -> list of (scorer, threshold) (two for ``and`` designs)."""
    out = {}
    for t in data["tasks"]:
        parts = ("vae", "knn") if d.score == "and" else (d.score,)
        fit = view(data, t.name, "fit", d.view, d.norm)
        if len(fit) < 5:  # not embedded (yet): the task is not learned
            continue
        out[t.name] = []
        for s in parts:
            dd = dataclasses.replace(d, score=s)
            sc = make_scorer(dd, fit, cache)
            cal = sc.heldout
            if d.aug:
                aug = view(data, t.name, "aug", d.view, d.norm)
                if len(aug):
                    cal = np.concatenate([cal, sc(aug)])
            out[t.name].append((sc, float(np.percentile(cal, d.q)) * d.margin))
    return out


def ratios(model: dict, data: dict, name: str, part: str, d: Design) -> np.ndarray:
    """(N, T) score / threshold of every image of (name, part) under every task."""
    x = view(data, name, part, d.view, d.norm)
    if not len(x):
        return np.zeros((0, len(model)))
    cols = [np.max([sc(x) / tau for sc, tau in model[t]], axis=0) for t in model]
    return np.stack(cols, axis=1)


def decide(r: np.ndarray, names: list[str]) -> list[str | None]:
    i = r.argmin(1)
    return [names[j] if r[k, j] <= 1.0 else None for k, j in enumerate(i)]


def evaluate(d: Design, data: dict, cache: dict, split: str) -> dict:
    t0 = time.perf_counter()
    model = fitted(d, data, cache)
    names = list(model)
    own = wrong = tot = 0
    per_task = {}
    for t in data["tasks"]:
        if t.name not in model:
            continue
        routes = decide(ratios(model, data, t.name, split, d), names)
        c = sum(r == t.name for r in routes)
        w = sum(r is not None and r != t.name for r in routes)
        per_task[t.name] = {"n": len(routes), "own": c, "wrong": w, "fallback": len(routes) - c - w}
        own, wrong, tot = own + c, wrong + w, tot + len(routes)
    r_ood = ratios(model, data, "ood", split, d)
    ood_routes = decide(r_ood, names)
    ood_meta = data["ood"][split]
    return {
        "design": dataclasses.asdict(d),
        "split": split,
        "own": own / max(tot, 1),
        "wrong": wrong / max(tot, 1),
        "n_known": tot,
        "ood_to_sam": float(np.mean([r is None for r in ood_routes])),
        "n_ood": len(ood_routes),
        "per_task": per_task,
        "ood": [
            {
                "kind": k,
                "name": n,
                "task": r,
                "best": names[int(row.argmin())],
                "ratio": float(row.min()),
            }
            for (k, n, _), r, row in zip(ood_meta, ood_routes, r_ood, strict=False)
        ],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def candidates() -> list[Design]:
    ds = [
        Design("paper (VAE attn, p97)", "vae"),
        Design("shipped (VAE attn, 1.5 x p97)", "vae", margin=1.5),
        Design("VAE attn, 1.5 x p97, aug", "vae", margin=1.5, aug=True),
        Design("VAE attn, p100, aug", "vae", q=100, aug=True),
        Design("VAE mean+std norm, p100, aug", "vae", "mean+std", q=100, aug=True, norm=True),
    ]
    for v in VIEWS:
        for norm in (False, True):
            tag = f"{v}{' norm' if norm else ''}"
            ds.append(Design(f"kNN {tag}, p100 x 1.5", "knn", v, q=100, margin=1.5, norm=norm))
            ds.append(Design(f"kNN {tag}, p100, aug", "knn", v, q=100, aug=True, norm=norm))
            ds.append(Design(f"kNN {tag}, p100 x 1.25, aug", "knn", v, 100, 1.25, True, norm=norm))
    ds += [
        Design("VAE and kNN attn, p100, aug", "and", "attn", q=100, aug=True),
        Design("VAE and kNN attn, p100 x 1.25, aug", "and", "attn", 100, 1.25, True),
        Design(
            "VAE and kNN mean+std norm, p100 x 1.25, aug",
            "and",
            "mean+std",
            100,
            1.25,
            True,
            norm=True,
        ),
    ]
    return ds


def compare(data: dict) -> dict:
    cache: dict = {}
    out = {"val": [], "test": []}
    for d in candidates():
        for split in ("val", "test"):
            out[split].append(evaluate(d, data, cache, split))
        v, t = out["val"][-1], out["test"][-1]
        print(
            f"{d.name:<50} val own {v['own']:.3f} wrong {v['wrong']:.3f} "
            f"ood {v['ood_to_sam']:.3f} | "
            f"test own {t['own']:.3f} wrong {t['wrong']:.3f} ood {t['ood_to_sam']:.3f}",
            flush=True,
        )
    return out


def render(run: dict) -> str:
    L = ["| design | val own | val wrong | val OOD->SAM | test own | test wrong | test OOD->SAM |"]
    L.append("|---|---|---|---|---|---|---|")
    for v, t in zip(run["val"], run["test"], strict=False):
        L.append(
            f"| {v['design']['name']} | {v['own'] * 100:.1f}% | {v['wrong'] * 100:.1f}% | "
            f"{v['ood_to_sam'] * 100:.1f}% | {t['own'] * 100:.1f}% | {t['wrong'] * 100:.1f}% | "
            f"{t['ood_to_sam'] * 100:.1f}% |"
        )
    return "\n".join(L) + "\n"
