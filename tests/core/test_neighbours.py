"""The router's second opinion: nearest stored feature, leave-one-out threshold, ratio routing."""

import pytest
import torch

from casam.neighbours import NeighbourCheck, leave_one_out, nearest_distance, route_ratios


def _cluster(centre: torch.Tensor, n: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return centre + spread * torch.randn(n, centre.shape[0], generator=g)


def test_nearest_distance_is_cosine_to_closest_row():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    d = nearest_distance(x, ref)
    assert torch.allclose(d, torch.tensor([0.0, 1 - 2**-0.5, 1.0]), atol=1e-6)


def test_leave_one_out_never_scores_a_row_against_itself():
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(leave_one_out(ref), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_check_accepts_its_own_kind_and_rejects_another():
    a, b = torch.zeros(64), torch.zeros(64)
    a[0], b[1] = 5.0, 5.0
    check = NeighbourCheck.from_features(_cluster(a, 20, 0.3, 0), margin=1.5)
    assert (check.ratio(_cluster(a, 30, 0.3, 1)) <= 1.0).float().mean() >= 0.9
    assert (check.ratio(_cluster(b, 30, 0.3, 2)) > 1.0).all()


def test_threshold_is_margin_times_the_largest_leave_one_out_distance():
    f = _cluster(torch.ones(16), 10, 0.2, 3)
    check = NeighbourCheck.from_features(f, margin=2.0)
    assert check.threshold == pytest.approx(2.0 * float(leave_one_out(f).max()), rel=1e-5)


def test_too_few_features_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        NeighbourCheck.from_features(torch.ones(1, 8))


def test_route_ratios_takes_the_smallest_ratio_within_one():
    r = torch.tensor([[0.5, 0.2], [1.5, 3.0], [0.9, 1.1]])
    out = route_ratios(r, ["a", "b"])
    assert out[0][:2] == ("b", "b")
    assert out[1][:2] == (None, "a") and out[1][2] == pytest.approx(1.5)
    assert out[2][:2] == ("a", "a")
    assert (
        route_ratios(torch.empty(2, 0), [])
        == [(None, None, pytest.approx(float("nan"), nan_ok=True))] * 2
    )
