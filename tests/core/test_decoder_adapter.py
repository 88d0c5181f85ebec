"""The decoder adapters (casam.decoder_adapter), the adapter kind "decoder", on a small SAM mask
decoder: the identity at init, an adapted view that changes the output while the shared decoder
stays untouched (also while other threads decode with it), only the adapters train, and the
stored state's checks (names, shapes, dtypes)."""

import threading

import pytest
import torch
from casam_testing import DIM, one_line, tiny_decoder  # noqa: E402
from casam_testing import run_tiny_decoder as run

from casam.decoder_adapter import DecoderAdapters, adapter_sites, from_state, trainable_parameters
from casam.errors import LibraryError
from casam.task_tensors import adapter_shapes, check_tensors


def perturbed(adapters, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters.adapters.values():
            a.up.weight.copy_(torch.randn(a.up.weight.shape, generator=g) * 0.5)
    return adapters


def test_identity_at_init_then_the_view_changes_and_the_shared_decoder_does_not():
    dec = tiny_decoder()
    adapters = DecoderAdapters.for_decoder(dec, bottleneck=4)
    assert len(adapters.adapters) == len(adapter_sites()) == 2 * 4 + 1
    view = adapters.adapted(dec)
    masks0, iou0 = run(dec)
    masks1, iou1 = run(view)
    assert torch.equal(masks0, masks1) and torch.equal(iou0, iou1)
    perturbed(adapters)
    masks2, _ = run(view)
    assert (masks2 - masks0).abs().max() > 1e-3  # the adapters act in the view...
    assert torch.equal(run(dec)[0], masks0)  # ...and never in the shared decoder
    # the view shares the decoder's tensors (no copy of 4 M parameters per task)
    assert all(a is b for a, b in zip(view.parameters(), dec.parameters(), strict=True))


def test_only_the_adapters_train_and_the_count_is_documented():
    dec = tiny_decoder()
    adapters = DecoderAdapters.for_decoder(dec, bottleneck=4).requires_grad_(True)
    masks, _ = run(adapters.adapted(dec))
    masks.pow(2).mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in dec.parameters())
    assert all(a.up.weight.grad.abs().sum() > 0 for a in adapters.adapters.values())
    assert trainable_parameters(adapters) == 9 * (DIM * 4 + 4 + 4 * DIM + DIM)
    assert trainable_parameters(DecoderAdapters(256, 32)) == 150_048  # config.py's docstring


def test_threads_decoding_with_the_shared_decoder_never_see_a_task_adapter():
    dec = tiny_decoder()
    plain = run(dec)[0]
    views = [perturbed(DecoderAdapters.for_decoder(dec, 4), seed=s).adapted(dec) for s in (1, 2)]
    adapted = [run(v)[0] for v in views]
    bad = []

    def worker(i):
        for _ in range(5):
            if i % 3 == 2:
                ok = torch.equal(run(dec)[0], plain)
            else:
                ok = torch.equal(run(views[i % 3])[0], adapted[i % 3])
            if not ok:
                bad.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def check(state):
    from casam_testing import router_state

    check_tensors(
        state, router_state(), blocks=0, threshold=1e9, beta=16.5, where="t", adapter="decoder"
    )


def test_a_stored_state_round_trips_and_wrong_names_shapes_or_values_are_refused():
    dec = tiny_decoder()
    full = perturbed(DecoderAdapters(256, 8))
    state = {k: v.clone() for k, v in full.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == adapter_shapes(8)
    with pytest.raises(LibraryError) as e:  # threshold check comes last: shapes passed
        check(state)
    assert "routing threshold" in one_line(e.value)
    small = perturbed(DecoderAdapters.for_decoder(dec, 4))
    back = from_state(small.state_dict(), dec)
    assert not any(p.requires_grad for p in back.parameters())
    assert torch.equal(run(back.adapted(dec))[0], run(small.adapted(dec))[0])
    some = next(iter(state))
    bad = [
        {k: v for k, v in state.items() if k != some},  # a tensor missing
        {**state, "extra.x": torch.zeros(1)},  # a tensor too many
        {**state, some: torch.zeros(3, 3)},  # a wrong shape
        {k: v[:4] if v.ndim == 2 and v.shape[0] == 8 else v for k, v in state.items()},  # mixed
        {**state, some: state[some].to(torch.int32)},  # not floating point
        {**state, some: state[some] * float("nan")},  # not finite
    ]
    for s in bad:
        with pytest.raises(LibraryError) as e:
            check(s)
        msg = one_line(e.value)
        assert "refused" in msg and "routing threshold" not in msg
