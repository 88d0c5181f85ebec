"""The baselines benchmark's models (benchmarks/_baselines_models.py) on small synthetic tensors:
each module decodes through its own decoder (the product's decoder adapters: their adapted view,
tests/core/test_decoder_adapter.py; the tuned decoder: its copy), EWC's and LwF's gradient hooks
equal their loss terms' gradients."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _baselines_models import (  # noqa: E402
    DecoderAdapters,
    DecoderCopy,
    anchor_of,
    decoder_of,
    diag_fisher,
    ewc_hooks,
    ewc_penalty,
    lwf_hooks,
    lwf_loss,
    trainable_parameters,
)
from casam_testing import run_tiny_decoder as run
from casam_testing import tiny_decoder  # noqa: E402

from casam.alignment import AlignmentLayer  # noqa: E402


def test_decoder_of_gives_each_module_its_own_decoder_and_leaves_the_backbone_alone():
    dec = tiny_decoder()
    bb = SimpleNamespace(mask_decoder=dec)
    adapters = DecoderAdapters.for_decoder(dec, bottleneck=4)
    view = decoder_of(adapters, bb)
    assert view is not dec and decoder_of(adapters, bb) is view  # built once per module
    assert decoder_of(None, bb) is None and decoder_of(AlignmentLayer(1, channels=4), bb) is None
    with torch.no_grad():
        for a in adapters.adapters.values():
            a.up.weight.normal_(0, 0.5)
    assert (run(view)[0] - run(dec)[0]).abs().max() > 1e-3
    assert bb.mask_decoder is dec


def test_decoder_copy_trains_alone():
    dec = tiny_decoder()
    bb = SimpleNamespace(mask_decoder=dec)
    plug = DecoderCopy(dec).requires_grad_(True)
    assert trainable_parameters(plug) == trainable_parameters(dec)
    assert decoder_of(plug, bb) is plug.decoder
    masks, _ = run(decoder_of(plug, bb))
    assert bb.mask_decoder is dec
    masks.pow(2).mean().backward()
    assert all(p.grad is None for p in dec.parameters())
    assert any(p.grad is not None for p in plug.decoder.parameters())


def small_layer(seed=0):
    torch.manual_seed(seed)
    layer = AlignmentLayer(1, channels=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.1)
    return layer


def test_ewc_penalty_zero_at_anchor_positive_away_and_hook_is_its_gradient():
    layer = small_layer()
    anchor = anchor_of(layer)
    fisher = {n: torch.rand_like(p) + 0.1 for n, p in layer.named_parameters()}
    assert float(ewc_penalty(layer, fisher, anchor)) == 0.0
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05)
    pen = ewc_penalty(layer, fisher, anchor)
    assert float(pen) > 0
    expected = torch.autograd.grad(3.0 * pen, list(layer.parameters()))
    with ewc_hooks(layer, fisher, anchor, weight=3.0):
        layer(torch.zeros(1, 4, 5, 5)).sum().mul(0).backward()  # task loss with zero gradient
    for g, p in zip(expected, layer.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_lwf_loss_zero_when_layers_agree_and_hook_is_its_gradient():
    student, teacher = small_layer(0), small_layer(0)
    x = torch.randn(2, 4, 5, 5)
    assert float(lwf_loss(student(x), teacher(x), scale=0.1)) == 0.0
    with lwf_hooks(student, teacher, weight=2.0, scale=0.1):
        student(x).sum().mul(0).backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in student.parameters())
    student.zero_grad()
    other = small_layer(1)
    expected = torch.autograd.grad(
        2.0 * lwf_loss(student(x), other(x).detach(), 0.1), list(student.parameters())
    )
    assert float(lwf_loss(student(x), other(x), 0.1)) > 0
    with lwf_hooks(student, other, weight=2.0, scale=0.1):
        student(x).sum().mul(0).backward()
    for g, p in zip(expected, student.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_diag_fisher_is_non_negative_with_mean_one():
    layer = small_layer()

    class Fake:  # decode = the first channel as mask logits
        @staticmethod
        def decode(z, boxes):
            return z[:, :1], None

    z = torch.randn(3, 4, 6, 6)
    targets = (torch.rand(3, 6, 6) > 0.5).float()
    f = diag_fisher(Fake(), layer, z, torch.zeros(3, 4), targets)
    flat = torch.cat([v.flatten() for v in f.values()])
    assert float(flat.min()) >= 0
    assert float(flat.mean()) == pytest.approx(1.0, rel=1e-5)
    assert not any(p.grad is not None for p in layer.parameters())
