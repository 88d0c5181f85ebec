"""The default router: pooled views, the k nearest stored images, leave-one-out threshold, one
bank."""

import pytest
import torch

from casam.neighbours import (
    MARGINS,
    NeighbourBank,
    calibrate,
    leave_one_out,
    pooled_views,
    task_floor,
    task_k,
    unit,
)
from casam.router import attention_pool
from casam.routing import decide


def _cluster(centre: torch.Tensor, n: int, spread: float, seed: int) -> torch.Tensor:
    """(n, 3, C) views around ``centre`` (3, C)."""
    g = torch.Generator().manual_seed(seed)
    return centre + spread * torch.randn(n, *centre.shape, generator=g)


def _centre(k: int, c: int = 64) -> torch.Tensor:
    v = torch.zeros(3, c)
    v[:, k] = 5.0
    v[:, k + 1] = 2.0
    return v


def test_pooled_views_are_attention_pool_channel_std_and_max():
    z = torch.randn(256, 8, 8)
    v = pooled_views(z, attention_pool(z))
    assert v.shape == (3, 256)
    assert torch.allclose(v[0], attention_pool(z))
    assert torch.allclose(v[1], z.reshape(256, -1).std(1))
    assert torch.allclose(v[2], z.reshape(256, -1).amax(1))


def test_unit_rows_make_a_dot_product_the_mean_of_per_view_cosines():
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1).mean()
    assert float(unit(a) @ unit(b)) == pytest.approx(float(cos), abs=1e-6)
    assert float(unit(a * 7.0).norm()) == pytest.approx(1.0)  # scale-free per view


def test_leave_one_out_never_scores_an_image_against_itself():
    ref = torch.stack([_centre(0), _centre(0), _centre(10)])
    loo = leave_one_out(ref)
    assert loo[:2].abs().max() < 1e-6 and loo[2] > 0.5


def test_threshold_is_margin_times_the_largest_leave_one_out_distance():
    f = _cluster(_centre(0), 10, 0.2, 3)
    assert calibrate(f, 2.0) == pytest.approx(2.0 * float(leave_one_out(f).max()), rel=1e-5)
    assert calibrate(f) == pytest.approx(calibrate(f, MARGINS[3]))
    assert calibrate(f[:, :1]) == pytest.approx(calibrate(f[:, :1], MARGINS[1]))
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(f[:1])


def test_bank_routes_each_kind_to_its_task_and_a_stranger_to_sam():
    a, b = _cluster(_centre(0), 20, 0.3, 0), _cluster(_centre(20), 20, 0.3, 1)
    bank = NeighbourBank(["A", "B"], [a, b], [calibrate(a), calibrate(b)])
    for centre, want, seed in ((_centre(0), "A", 5), (_centre(20), "B", 6)):
        routes = [bank.route(v) for v in _cluster(centre, 10, 0.3, seed)]
        assert sum(r.task == want for r in routes) >= 9
        assert all(r.task in (want, None) for r in routes)  # never the other task
    far = bank.route(_centre(40))
    assert far.fallback and far.task is None and far.ratio > 1 and far.router == "knn"
    assert far.best in ("A", "B") and far.runner_up in ("A", "B") and far.runner_up != far.best
    assert far.reason.startswith("unlike every learned task")


def test_bank_distances_equal_one_task_at_a_time_with_mixed_view_counts():
    """A task of format 1 (one view) and two of format 2 (three views) in one bank."""
    g = torch.Generator().manual_seed(4)
    refs = [torch.randn(5, 3, 32, generator=g), torch.randn(7, 1, 32, generator=g)]
    refs.append(torch.randn(3, 3, 32, generator=g))
    bank = NeighbourBank(["a", "old", "c"], refs, [0.1, 0.2, 0.3])
    x = torch.randn(4, 3, 32, generator=g)
    got = bank.distances(x)
    for k, ref in enumerate(refs):
        nv = ref.shape[1]
        want = 1 - (unit(x[:, :nv]) @ unit(ref).T).amax(1)
        assert torch.allclose(got[:, k], want, atol=1e-6)
    assert torch.allclose(bank.ratios(x), got / torch.tensor([0.1, 0.2, 0.3]))


def test_the_smallest_ratio_wins_not_the_smallest_distance():
    """Distances of two tasks are not on one scale: a tight task at 0.9 of its threshold
    beats a loose one whose raw distance is smaller but at 0.95 of its threshold."""
    tight = torch.stack([_centre(0), _centre(0) * 1.001])
    loose = torch.stack([_centre(2), _centre(2) * 1.001])
    x = (_centre(0) + _centre(2) * 0.98)[None]
    bank = NeighbourBank(["tight", "loose"], [tight, loose], [1.0, 1.0])
    d = bank.distances(x)[0]
    bank = NeighbourBank(
        ["tight", "loose"], [tight, loose], [float(d[0]) / 0.9, float(d[1]) / 0.95]
    )
    r = bank.route(x[0])
    assert r.task == "tight" and r.ratio == pytest.approx(0.9, rel=1e-4)
    assert r.runner_up == "loose" and r.runner_up_ratio == pytest.approx(0.95, rel=1e-4)


def test_empty_bank_falls_back_with_its_reason():
    r = NeighbourBank([], [], []).route(torch.zeros(3, 256))
    assert r.fallback and r.task is None and r.best is None
    assert r.reason == "no task learned for this model yet"


def _mean_k_nearest(x: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Brute force: (N,) mean cosine distance of each unit row of x to its k nearest of ref."""
    nv = ref.shape[1]
    d = 1 - unit(x[:, :nv]) @ unit(ref).T
    return d.sort(dim=1).values[:, : min(k, ref.shape[0])].mean(1)


def test_bank_distance_is_the_mean_over_each_tasks_own_k_nearest():
    """Tasks of different sizes (padded in one product), each with its own k; a task with
    fewer stored images than k averages the ones it has."""
    g = torch.Generator().manual_seed(9)
    refs = [torch.randn(m, nv, 32, generator=g) for m, nv in ((6, 3), (2, 3), (9, 3), (4, 1))]
    ks = [2, 3, 1, 2]
    bank = NeighbourBank(list("abcd"), refs, [0.1] * 4, ks)
    x = torch.randn(5, 3, 32, generator=g)
    got = bank.distances(x)
    for j, (ref, k) in enumerate(zip(refs, ks, strict=True)):
        assert torch.allclose(got[:, j], _mean_k_nearest(x, ref, k), atol=1e-6), "abcd"[j]
    k2 = NeighbourBank(["a"], refs[:1], [0.1], [2]).distances(x)[:, 0]
    assert (k2 > NeighbourBank(["a"], refs[:1], [0.1]).distances(x)[:, 0]).all()


def test_with_k_2_one_stored_image_alone_cannot_accept_a_stranger():
    """A task of 10 alike images and one odd one, the same threshold: an image next to the
    odd one is accepted with k = 1 (its one neighbour decides) and refused with k = 2."""
    task = torch.cat([_cluster(_centre(0), 10, 0.1, 1), _centre(30)[None]])
    stranger = _centre(30) + 0.05 * torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    tau = 2 * float(leave_one_out(task[:10], k=2).max())  # the alike images' own spread
    one = NeighbourBank(["t"], [task], [tau], [1]).route(stranger)
    two = NeighbourBank(["t"], [task], [tau], [2]).route(stranger)
    assert one.task == "t"
    assert two.task is None and two.fallback and two.ratio > 1
    bank = NeighbourBank(["t"], [task], [tau], [2])
    assert all(bank.route(v).task == "t" for v in _cluster(_centre(0), 10, 0.1, 8))


def test_leave_one_out_with_k_averages_the_k_nearest_others():
    ref = torch.stack([_centre(0), _centre(0), _centre(0) * 2, _centre(10)])
    loo = leave_one_out(ref, k=2)
    assert loo[:3].abs().max() < 1e-6  # three identical directions: both nearest at 0
    far = 1 - unit(ref[3:]) @ unit(ref[:3]).T
    assert float(loo[3]) == pytest.approx(float(far.mean()), abs=1e-6)
    assert torch.allclose(leave_one_out(ref[:2], k=5), leave_one_out(ref[:2], k=1))  # k <= M-1


def test_a_task_calibrated_before_knn_k_keeps_k_1_and_format_1_always_has_k_1():
    assert task_k(3, {}) == 1
    assert task_k(3, {"knn_k": 2}) == 2
    assert task_k(1, {"knn_k": 2}) == 1


# ---- the floor and the runner-up separation (LearnSettings.knn_floor, knn_separation) -------


def test_decide_within_the_own_threshold_ignores_the_runner_up():
    r = decide(["a", "b"], [0.8, 0.9], [1.0, 1.0], router="knn", own=[1.0, 1.0], separation=[2, 2])
    assert r.task == "a" and not r.ambiguous and not r.fallback


def test_decide_beyond_the_own_threshold_needs_a_clear_runner_up():
    """a's own threshold is 0.5, raised to 1.0 by its floor: a distance of 0.8 is taken only
    when the runner-up's ratio is at least ``separation`` times a's (0.8)."""
    kw = dict(router="knn", own=[0.5, 1.0], separation=[1.1, 1.1])
    clear = decide(["a", "b"], [0.8, 2.0], [1.0, 1.0], **kw)
    assert clear.task == "a" and not clear.fallback and clear.ratio == pytest.approx(0.8)
    near = decide(["a", "b"], [0.8, 0.85], [1.0, 1.0], **kw)
    assert near.fallback and near.task is None and near.ambiguous
    assert near.best == "a" and near.runner_up == "b"
    assert near.reason.startswith("too close to call: a scores 80% of its threshold, b 85%")
    assert near.to_json("x")["ambiguous"] is True and near.to_json("x")["reason"] == near.reason
    assert near.detail == near.reason and str(near) == f"SAM fallback: {near.reason}"
    beyond = decide(["a", "b"], [1.2, 3.0], [1.0, 1.0], **kw)  # beyond the floor too
    assert beyond.fallback and not beyond.ambiguous
    assert beyond.reason.startswith("unlike every learned task")


def test_decide_with_one_task_accepts_within_the_floor():
    r = decide(["a"], [0.8], [1.0], router="knn", own=[0.5], separation=[1.1])
    assert r.task == "a" and not r.ambiguous


def test_bank_raises_tight_thresholds_to_the_floor_and_keeps_wider_ones():
    g = torch.Generator().manual_seed(11)
    refs = [torch.randn(4, 3, 32, generator=g) for _ in range(3)]
    bank = NeighbourBank(list("abc"), refs, [0.01, 0.05, 0.02], floors=[0.03, 0.03, 0.0])
    assert bank.thresholds.tolist() == pytest.approx([0.03, 0.05, 0.02])
    assert bank.own == pytest.approx([0.01, 0.05, 0.02])
    x = torch.randn(2, 3, 32, generator=g)
    assert torch.allclose(bank.ratios(x), bank.distances(x) / bank.thresholds)


def test_bank_takes_a_new_scan_of_a_tight_task_but_not_a_near_tie():
    """Task A's stored images are one tight scan; an image just beyond A's own threshold but
    within the floor goes to A when B is far, and to plain SAM when B is about as close."""
    a = _cluster(_centre(0), 12, 0.02, 1)
    b = _cluster(_centre(20), 12, 0.02, 2)
    own = [calibrate(a, 2.0), calibrate(b, 2.0)]
    x = (_centre(0) + 0.6 * _centre(4))[None]  # a little off A's scan, far from B
    d = NeighbourBank(["A", "B"], [a, b], own).distances(x)[0]
    assert d[0] > own[0]  # the own threshold alone rejects it
    floor = float(d[0]) * 1.2
    bank = NeighbourBank(["A", "B"], [a, b], own, floors=[floor] * 2, separations=[1.1] * 2)
    r = bank.route(x[0])
    assert r.task == "A" and r.threshold == pytest.approx(max(floor, own[0]))
    plain = NeighbourBank(["A", "B"], [a, b], own).route(x[0])
    assert plain.fallback and not plain.ambiguous
    # B as close as A (B's stored images next to A's): too close to call
    b_near = torch.cat([b, _cluster(_centre(0) + 0.6 * _centre(4), 1, 0.03, 3)])
    d2 = NeighbourBank(["A", "B"], [a, b_near], own).distances(x)[0]
    bank2 = NeighbourBank(
        ["A", "B"],
        [a, b_near],
        [own[0], float(d2[1]) * 0.9],
        floors=[floor] * 2,
        separations=[1.1] * 2,
    )
    r2 = bank2.route(x[0])
    assert r2.task != "A"


def test_task_floor_is_off_for_tasks_learned_before_it_and_for_format_1():
    assert task_floor(3, {}) == (0.0, 1.0)
    assert task_floor(3, {"knn_floor": 0.03, "knn_separation": 1.2}) == (0.03, 1.2)
    assert task_floor(1, {"knn_floor": 0.03, "knn_separation": 1.2}) == (0.0, 1.0)
