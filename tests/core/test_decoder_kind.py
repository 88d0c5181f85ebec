"""Tasks of adapter kind "decoder" (decoder adapters, task format 3) beside Alignment Layer tasks,
on the tiny backbone: learned, saved as safetensors only, reloaded, routed, decoded through
their own adapters (not plain SAM, equal to the in-memory model, from several threads at once),
exported and imported, extended with their own kind; refused with one line by a release that
reads only format 2 and when the kind is unknown or does not match the weights."""

import json
import threading

import numpy as np
import pytest
import torch
from casam_testing import (
    TinyBackbone,
    alignment_state,
    disk_images,
    make_info,
    one_line,
    router_state,
    tiny_settings,
)

from casam import training
from casam.errors import LibraryError
from casam.library import META, TaskLibrary
from casam.library import format as fmt
from casam.predictor import Predictor

BOX = [[12, 12, 52, 52]]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A library with a decoder task "disks" and an Alignment Layer task "aligned" (tiny
    backbone), and the decoder task's adapter as it was in memory when training ended."""
    root = tmp_path_factory.mktemp("kinds") / "lib"
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(root))
    images, masks = disk_images(4, seed=0)
    seen = {}
    train = training.train_adapter

    def spy(*a, **k):
        seen["adapter"] = yield from train(*a, **k)
        return seen["adapter"]

    training.train_adapter = spy
    try:
        s = tiny_settings(seed=0, adapter="decoder", epochs=2, batch_size=2)
        training.learn_task(images, masks, "disks", predictor=p, settings=s)
    finally:
        training.train_adapter = train
    g = torch.Generator().manual_seed(1)  # an Alignment Layer task that is not the identity
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in alignment_state().items()}
    TaskLibrary(root).save(make_info("aligned"), state, router_state(n=6))
    return root, images[:2], seen["adapter"]


def fresh(root):
    return Predictor(backbone=TinyBackbone(), library=TaskLibrary(root))


def test_task_json_records_the_kind_and_the_weights_are_safetensors_only(learned):
    root, _, _ = learned
    meta = json.loads((root / "disks" / META).read_text())
    assert meta["adapter"] == "decoder" and meta["format_version"] == 3 and meta["blocks"] == 0
    assert meta["settings"]["adapter"] == "decoder" and meta["settings"]["adapter_bottleneck"] == 32
    other = json.loads((root / "aligned" / META).read_text())
    assert other["adapter"] == "alignment" and other["format_version"] == 2  # format-2 readers
    assert sorted(p.name for p in (root / "disks").iterdir()) == sorted(fmt.TASK_FILES)
    from safetensors.torch import load_file

    state = load_file(str(root / "disks" / "alignment.safetensors"))
    assert len(state) == 36 and all(k.startswith("adapters.") for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())


def test_reloaded_it_routes_and_decodes_like_the_model_in_memory_not_like_sam(learned):
    root, images, in_memory = learned
    p = fresh(root)
    assert p.task_names == ["aligned", "disks"] and p.problems == []
    assert p.adapter("disks").kind == "decoder" and p.adapter("aligned").kind == "alignment"
    route = p.set_image(images[0])
    assert route.task in ("disks", "aligned")  # a training image goes to a task, not SAM
    task = p.predict(BOX, task="disks")
    sam = p.predict(BOX, task="sam")
    assert task.task == "disks" and np.abs(task.logits - sam.logits).max() > 1e-3
    e = p.embed(images[0])
    bt = torch.from_numpy(e.geometry.boxes_to_input(np.asarray(BOX, float)))
    with torch.no_grad():
        ref = in_memory.decode(p.backbone, e.z[None], bt)[0][:, 0].numpy()
    np.testing.assert_allclose(task.logits, ref, rtol=0, atol=1e-5)
    # the shared decoder was never changed: plain SAM is still plain SAM
    with torch.no_grad():
        plain = p.backbone.decode(e.z[None], bt)[0][:, 0].numpy()
    np.testing.assert_array_equal(sam.logits, plain)


def test_four_threads_on_one_predictor_each_get_their_own_tasks_masks(learned):
    root, images, _ = learned
    p = fresh(root)
    embs = [p.embed(im) for im in images]
    tasks = ["disks", "sam", "aligned"]
    ref = {(i, t): p.predict_embedding(e, BOX, t).logits for i, e in enumerate(embs) for t in tasks}
    bad = []

    def worker(k):
        for _ in range(2):
            for i, e in enumerate(embs):
                t = tasks[(i + k) % 3]
                if not np.array_equal(p.predict_embedding(e, BOX, t).logits, ref[(i, t)]):
                    bad.append((k, i, t))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_export_import_carries_the_kind(learned, tmp_path):
    root, images, _ = learned
    pkg = TaskLibrary(root).export("disks", tmp_path)
    other = TaskLibrary(tmp_path / "other")
    info = other.import_task(pkg, name="disks copy")
    assert info.adapter == "decoder" and info.format_version == 3
    a, b = fresh(root), fresh(other.root)
    for p in (a, b):
        p.set_image(images[1])
    np.testing.assert_array_equal(
        a.predict(BOX, task="disks").logits, b.predict(BOX, task="disks copy").logits
    )


def test_extending_keeps_the_tasks_kind(learned, tmp_path):
    import shutil

    root, images, _ = learned
    shutil.copytree(root, tmp_path / "lib")
    p = fresh(tmp_path / "lib")
    more, masks = disk_images(2, seed=5)
    info = training.learn_task(
        more, masks, "disks", predictor=p, settings=tiny_settings(), extend=True
    )
    assert info.adapter == "decoder" and info.n_images == 6


def test_a_format_2_reader_refuses_a_decoder_task_with_one_line(learned, monkeypatch):
    root, _, _ = learned
    monkeypatch.setattr(fmt, "TASK_FORMAT_VERSION", 2)
    with pytest.raises(LibraryError) as e:
        fmt.parse_meta((root / "disks" / META).read_bytes(), "task 'disks'")
    msg = one_line(e.value)
    assert "newer napari-casam" in msg and "format 3" in msg and "upgrade" in msg
    assert fmt.parse_meta((root / "aligned" / META).read_bytes(), "x").adapter == "alignment"


@pytest.mark.parametrize(
    ("task", "kind", "needle"),
    [
        ("disks", "prompt", "does not know"),
        ("disks", "alignment", "0 Alignment Layer blocks"),
        ("aligned", "decoder", "does not hold the decoder adapters"),
        ("disks", 3, "does not know"),
    ],
)
def test_an_unknown_or_wrong_kind_is_refused_and_other_tasks_still_route(
    learned, tmp_path, task, kind, needle
):
    import shutil

    root, images, _ = learned
    shutil.copytree(root, tmp_path / "lib")
    meta_path = tmp_path / "lib" / task / META
    meta = json.loads(meta_path.read_text())
    meta["adapter"] = kind
    meta_path.write_text(json.dumps(meta))
    p = fresh(tmp_path / "lib")
    assert len(p.problems) == 1 and needle in p.problems[0], p.problems
    assert "\n" not in p.problems[0] and f"'{task}'" in p.problems[0]
    assert p.task_names == [n for n in ("aligned", "disks") if n != task]
    p.set_image(images[0])
    assert p.predict(BOX).masks.shape == (1, 64, 64)
