"""The compiled box decoder (OpenVINO): torch's masks, built once, refused when it disagrees,
off for good after a failure, and used by ``Backbone.decode`` only in the plain case."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from casam.runtime import BoxDecoderRuntime, _decoder, rel_error
from casam.sam import get_backbone


@pytest.fixture(scope="module")
def bb():
    return get_backbone("litemedsam", runtime="torch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASAM_RUNTIME_CACHE", str(tmp_path / "runtimes"))
    return tmp_path / "runtimes"


@pytest.fixture(scope="module")
def built(bb, tmp_path_factory):
    """One real conversion for the module (tens of seconds): the cache folder it made."""
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASAM_RUNTIME_CACHE", str(root))
        d = compiled(bb)
        assert d.prepare() and d.notice is None
    (folder,) = [m.parent for m in root.glob("*/manifest.json")]
    return folder


def compiled(bb) -> BoxDecoderRuntime:
    return BoxDecoderRuntime(
        bb.identity, bb.digest, lambda: (bb.prompt_encoder, bb.mask_decoder, bb._image_pe)
    )


def inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 256, 64, 64, generator=g) * 0.5
    boxes = torch.tensor([[30.0, 40.0, 200.0, 220.0], [100.0, 90.0, 150.0, 160.0]])
    return z, boxes


def test_compiled_decoder_gives_torch_masks_and_is_built_once(bb, built, monkeypatch):
    import openvino as ov

    def no_conversion(*a, **k):
        raise AssertionError("converted again instead of loading the cached model")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    monkeypatch.setenv("CASAM_RUNTIME_CACHE", str(built.parent))
    d = compiled(bb)
    assert d.prepare() and d.ready  # loaded from the module's build, not converted again
    z, boxes = inputs()
    with torch.no_grad():
        masks, iou = d.decode(z, boxes)
        ref_masks, ref_iou = bb.decode(z, boxes)  # torch: this backbone has no compiled decoder
    assert bb.box_decoder is None
    assert masks.shape == ref_masks.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
    assert rel_error(masks.numpy(), ref_masks.numpy()) < 1e-4
    assert ((masks > 0) == (ref_masks > 0)).float().mean() > 0.9999
    assert torch.allclose(iou, ref_iou, atol=1e-4)


def test_a_compiled_decoder_that_disagrees_is_refused_and_not_cached(bb, built, cache, monkeypatch):
    import openvino as ov

    xml = str(built / "box-decoder.xml")
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: ov.Core().read_model(xml))
    monkeypatch.setattr(_decoder, "TOLERANCE", -1.0)
    d = compiled(bb)
    with pytest.warns(RuntimeWarning, match="compiled box decoder unavailable"):
        assert not d.prepare()
    assert "differs from torch" in d.notice
    assert d.decode(*inputs()) is None
    assert not list(cache.glob("*/manifest.json"))  # nothing half-built looks valid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not d.prepare()  # one notice, no second try


def test_a_failure_at_run_time_hands_back_to_torch_for_good(bb):
    calls = []

    def broken(arrays):
        calls.append(1)
        raise RuntimeError("device lost")

    d = compiled(bb)
    d._model = broken
    with pytest.warns(RuntimeWarning, match="device lost"):
        assert d.decode(*inputs()) is None
    assert d.decode(*inputs()) is None and len(calls) == 1 and not d.prepare()


class Recorder:
    """Stands in for the compiled decoder; returns torch's answer shifted so it can be told."""

    def __init__(self, bb, answer: bool = True):
        self.bb, self.answer, self.calls = bb, answer, 0

    def prepare(self) -> bool:
        return True

    def decode(self, z, boxes):
        self.calls += 1
        if not self.answer:
            return None
        return torch.full((boxes.shape[0], 1, 256, 256), 7.0), torch.ones(boxes.shape[0], 1)


def test_backbone_uses_it_for_plain_boxes_only(bb, monkeypatch):
    z, boxes = inputs()
    rec = Recorder(bb)
    monkeypatch.setattr(bb, "box_decoder", rec)
    with torch.no_grad():
        assert float(bb.decode(z, boxes)[0].mean()) == 7.0 and rec.calls == 1
        pts, lab = torch.tensor([[[120.0, 130.0]]]).expand(2, 1, 2), torch.ones(2, 1)
        assert float(bb.decode(z, boxes, pts, lab)[0].mean()) != 7.0  # clicks: torch
        assert float(bb.decode(z, boxes, multimask=True)[0].mean()) != 7.0
        prev = torch.zeros(2, 1, 256, 256)
        assert float(bb.decode(z, boxes, mask_input=prev)[0].mean()) != 7.0
        assert float(bb.decode(z.expand(2, -1, -1, -1), boxes)[0].mean()) != 7.0  # paired
    zg = z.clone().requires_grad_(True)
    masks, _ = bb.decode(zg, boxes)  # training: gradients must reach z
    assert masks.requires_grad and rec.calls == 1
    rec.answer = False  # gone off: torch answers the same call
    with torch.no_grad():
        assert float(bb.decode(z, boxes)[0].mean()) != 7.0 and rec.calls == 2


def test_it_comes_with_the_openvino_encoder_only():
    pytest.importorskip("openvino")
    assert get_backbone("litemedsam", runtime="openvino").box_decoder is not None
    assert get_backbone("litemedsam", runtime="torch").box_decoder is None
    assert np.isfinite(_decoder.TOLERANCE)


def test_threads_sharing_the_compiled_decoder_get_their_own_answers(bb, built, monkeypatch):
    """Dask workers and the dock may decode from several threads: one compiled model serves
    them one call at a time, each thread getting the masks of its own box."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("CASAM_RUNTIME_CACHE", str(built.parent))
    d = compiled(bb)
    assert d.prepare()
    z, _ = inputs()
    boxes = [torch.tensor([[10.0 + 9 * k, 20.0, 120.0 + 9 * k, 200.0]]) for k in range(8)]
    alone = [d.decode(z, b)[0] for b in boxes]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: d.decode(z, b)[0], boxes * 3))
    for k, m in enumerate(together):
        assert torch.equal(m, alone[k % 8])
