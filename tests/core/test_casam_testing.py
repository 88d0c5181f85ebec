"""Self-tests of the shared test helpers (``casam_testing``)."""

import torch
from casam_testing import TinyBackbone, disk_images, save_task


def test_helper_task_round_trips(tmp_path):
    from casam.library import TaskLibrary

    lib = TaskLibrary(tmp_path / "lib")
    info = save_task(lib, "helper")
    assert lib.problems() == []
    assert lib.load("helper").info == info.with_(path=None)


def test_tiny_backbone_encodes_and_decodes():
    b = TinyBackbone()
    images, _ = disk_images(1)
    z, geo = b.encode(images[0])
    assert tuple(z.shape) == (256, 64, 64)
    logits, iou = b.decode(z[None], torch.tensor([[10.0, 10.0, 100.0, 100.0]]))
    assert tuple(logits.shape) == (1, 1, 256, 256) and tuple(iou.shape) == (1, 1)
