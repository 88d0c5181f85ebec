import numpy as np
import pytest
import torch

from casam.router import (
    VAE,
    VAEBank,
    attention_pool,
    fit_router,
    fold_indices,
    neg_elbo,
    train_vae,
    train_vaes,
)
from casam.routing import RouteDecision


def test_attention_pool_matches_formula():
    torch.manual_seed(0)
    z = torch.randn(256, 4, 5)
    flat = z.reshape(256, -1)
    a = torch.softmax(flat.norm(dim=0) / 256.0, dim=0)
    expected = (flat * a).sum(1)
    assert torch.allclose(attention_pool(z), expected, atol=1e-6)
    # the temperature sharpens: at T -> 0 the feature is the highest-norm position's vector
    sharp = attention_pool(z, temperature=1e-7)
    assert torch.allclose(sharp, flat[:, flat.norm(dim=0).argmax()], atol=1e-4)
    assert attention_pool(z[None].repeat(3, 1, 1, 1)).shape == (3, 256)


def test_neg_elbo_hand_computed():
    f = torch.tensor([[1.0, 2.0]])
    f_hat = torch.tensor([[0.0, 0.0]])
    mu = torch.tensor([[1.0]])
    logvar = torch.tensor([[0.0]])
    # rec = (1 + 4) / 2 = 2.5 ; KL sum = 1 + 1 - 1 - 0 = 1 ; beta/2 * 1 = 8.25
    assert neg_elbo(f, f_hat, mu, logvar, 16.5).item() == pytest.approx(2.5 + 8.25)


def test_folds_cover_every_image_once():
    folds = fold_indices(13, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(13))
    assert all(len(f) > 0 for f in folds)


def _cluster(center: float, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.full((256,), center)
    base[::2] *= -1
    return base + 0.05 * torch.randn(n, 256, generator=g)


KW = dict(steps=300, batch=16, lr=5e-3, hidden=64, latent=16, beta=16.5)


def test_threshold_is_97th_percentile_of_heldout_scores():
    feats = _cluster(0.3, 20, 0)
    vae, tau, scores = fit_router(feats, folds=5, percentile=97.0, seed=0, **KW)
    assert scores.shape == (20,)
    assert tau == pytest.approx(np.percentile(scores, 97.0))
    # held-out scores come from VAEs that did not see the image: above the in-sample scores
    with torch.no_grad():
        in_sample = vae.neg_elbo(feats, 16.5, sample=False).numpy()
    assert np.median(scores) >= np.median(in_sample) * 0.9


def test_bank_equals_each_vae_and_routes_with_fallback():
    a, b = _cluster(0.3, 30, 1), _cluster(-0.5, 30, 2)
    va, ta, _ = fit_router(a, folds=5, percentile=97.0, seed=1, **KW)
    vb, tb, _ = fit_router(b, folds=5, percentile=97.0, seed=2, **KW)
    bank = VAEBank(["A", "B"], [va, vb], [ta, tb], [16.5, 16.5])
    test = torch.cat([_cluster(0.3, 3, 9), _cluster(-0.5, 3, 10)])
    s = bank.scores(test)
    with torch.no_grad():
        assert torch.allclose(s[:, 0], va.neg_elbo(test, 16.5, sample=False), rtol=1e-4, atol=1e-5)
        assert torch.allclose(s[:, 1], vb.neg_elbo(test, 16.5, sample=False), rtol=1e-4, atol=1e-5)
    assert [bank.route(f).task for f in test] == ["A"] * 3 + ["B"] * 3
    far = bank.route(torch.full((256,), 3.0))
    assert (
        far.fallback and far.task is None and far.best in ("A", "B") and far.score > far.threshold
    )
    assert "SAM fallback" in str(far)


def test_empty_bank_falls_back():
    r = VAEBank([], [], [], []).route(torch.zeros(256))
    assert r.fallback and r.task is None and r.best is None
    assert r.to_json("x") == {
        "image": "x",
        "task": None,
        "score": None,
        "threshold": None,
        "fallback": True,
        "router": "paper",
        "best": None,
        "ratio": None,
        "runner_up": None,
        "runner_up_ratio": None,
        "reason": "no task learned for this model yet",
        "ambiguous": False,
    }


def test_route_json_fields():
    r = RouteDecision(
        "CT spleen",
        0.05,
        0.1,
        False,
        {"CT spleen": 0.05, "MR liver": 0.3},
        best="CT spleen",
        runner_up="MR liver",
        runner_up_ratio=3.0,
    )
    assert r.to_json("a.png") == {
        "image": "a.png",
        "task": "CT spleen",
        "score": 0.05,
        "threshold": 0.1,
        "fallback": False,
        "router": "knn",
        "best": "CT spleen",
        "ratio": 0.5,
        "runner_up": "MR liver",
        "runner_up_ratio": 3.0,
        "reason": None,
        "ambiguous": False,
    }
    assert str(r) == (
        "CT spleen: its images look like this one (score 50% of its threshold); "
        "runner-up MR liver at 3.0x its threshold"
    )


def test_vae_score_is_deterministic():
    vae = VAE(hidden=32, latent=8).eval()
    f = torch.randn(4, 256)
    with torch.no_grad():
        assert torch.equal(vae.neg_elbo(f, 16.5, sample=False), vae.neg_elbo(f, 16.5, sample=False))


def test_batched_training_equals_separate_training():
    a, b = _cluster(0.3, 12, 3), _cluster(-0.2, 9, 4)
    kw = dict(KW, steps=20)
    together = train_vaes([a, b], seeds=[5, 6], **kw)
    alone = [train_vae(a, seed=5, **kw), train_vae(b, seed=6, **kw)]
    f = torch.randn(3, 256)
    with torch.no_grad():
        for t, s in zip(together, alone, strict=True):
            assert torch.allclose(
                t.neg_elbo(f, 16.5, sample=False),
                s.neg_elbo(f, 16.5, sample=False),
                rtol=1e-4,
                atol=1e-5,
            )


def test_a_share_never_reads_minus_zero():
    """A training image's own cosine distance can round below 0 (-1e-7): the user reads 0%."""
    from casam.routing import share

    assert share(-1e-7) == "0% of its threshold"
    assert share(0.62) == "62% of its threshold"
    assert share(3.44) == "3.4x its threshold"
