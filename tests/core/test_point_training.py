"""Training with point prompts (``LearnSettings.point_share``): which batches get clicks, and
that a point batch is prompted the way the product prompts a click (with the object's box)."""

import pytest
import torch

from casam.config import LearnSettings
from casam.progress import drive
from casam.training import train_alignment


class SpyBackbone:
    """Records every training decode's prompts; its logits are a cheap function of the
    embedding (the training loop, not SAM, is under test)."""

    device = torch.device("cpu")
    input_size = 256

    def __init__(self):
        self.calls = []

    def decode(self, z, boxes, points=None, labels=None, mask_input=None, decoder=None, **kw):
        self.calls.append(
            {
                "box": None if boxes is None else boxes.detach().clone(),
                "points": None if points is None else points.clone(),
                "labels": None if labels is None else labels.clone(),
                "mask_input": mask_input,
                "grad": z.requires_grad,
            }
        )
        logits = z.mean((1, 2, 3))[:, None, None, None].expand(-1, 1, 256, 256)
        return logits, torch.zeros(z.shape[0], 1)


class Scale(torch.nn.Module):
    """A one-parameter 'adapter' on tiny embeddings: the loop runs in milliseconds."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, z):
        return z * self.w


def data(n: int = 6):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 4, 2, 2, generator=g)
    targets = torch.zeros(n, 256, 256)
    targets[:, 100:150, 60:120] = 1
    boxes = torch.tensor([[60.0, 100, 120, 150]]).repeat(n, 1)
    return z, boxes, targets


def train(share: float, epochs: int = 1, batch: int = 2, seed: int = 0) -> SpyBackbone:
    bb = SpyBackbone()
    s = LearnSettings(point_share=share, epochs=epochs, batch_size=batch, bf16=False, seed=seed)
    drive(train_alignment(bb, *data(), s, layer=Scale()))
    return bb


def point_calls(bb: SpyBackbone) -> list[dict]:
    return [c for c in bb.calls if c["points"] is not None]


def test_box_only_by_default():
    bb = train(0.0, epochs=3)
    assert len(bb.calls) == 9 and not point_calls(bb)
    assert all(c["box"] is not None and c["grad"] for c in bb.calls)


def test_every_point_batch_carries_its_jittered_box_and_clicks_on_the_object():
    bb = train(1.0, epochs=4)
    calls = point_calls(bb)
    assert len(calls) == len(bb.calls) == 12  # share 1: every batch
    for c in calls:
        assert c["box"] is not None, "a training click comes with its object's box"
        assert c["mask_input"] is None
        box = c["box"]  # the ground truth box 60..120 x 100..150, each side moved <= 10%
        assert (box[:, 0] - 60).abs().max() <= 6.01 and (box[:, 3] - 150).abs().max() <= 5.01
        lab, pts = c["labels"], c["points"]
        assert (lab[:, 0] == 1).all()  # the first click is positive
        for (x, y), lb in zip(pts.reshape(-1, 2), lab.reshape(-1), strict=True):
            if lb == 1:  # positive clicks on the object (the target), negatives off it
                assert 60 <= x < 120 and 100 <= y < 150
            elif lb == 0:
                assert not (60 <= x < 120 and 100 <= y < 150)


@pytest.mark.parametrize("share", [0.15, 0.3])
def test_the_share_of_point_batches_is_respected(share):
    bb = train(share, epochs=100, batch=6)  # 100 batches, each drawn independently
    got = len(point_calls(bb)) / len(bb.calls)
    assert abs(got - share) < 0.1, got


def test_a_point_batch_trains_the_adapter():
    bb = SpyBackbone()
    layer = Scale()
    s = LearnSettings(point_share=1.0, epochs=2, batch_size=3, bf16=False)
    drive(train_alignment(bb, *data(), s, layer=layer))
    assert point_calls(bb) and float(layer.w) != 1.0
