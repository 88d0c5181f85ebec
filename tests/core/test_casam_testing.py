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


def test_wait_for_line_leaves_the_next_lines_to_communicate():
    """The child's later lines already sit in the pipe (as on a loaded machine): wait_for_line
    returns only the first, and communicate() still gets every later one (a lost line made
    test_kill's learner look as if no kill landed mid-work)."""
    import subprocess
    import sys
    import time

    from casam_testing import wait_for_line

    code = "import sys; sys.stdout.write('ready\\nsaving x\\nsaved x\\n'); sys.stdout.flush()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # all three lines are in the pipe before the parent reads
    assert wait_for_line(proc, 30) == "ready\n"
    out, _ = proc.communicate(timeout=30)
    assert out.splitlines() == ["saving x", "saved x"]
