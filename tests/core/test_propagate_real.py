"""The real backbone on the repository's real CT spleen (tests/data/ct_spleen, every 3rd
slice: 9 slices 9 mm apart): one box propagates through the slices and beats the same box
copied to every slice; clicks, bad prompts and the CLI go through the real predictor."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from casam.errors import InputError
from casam.preprocess import mask_box

DATA = Path(__file__).resolve().parents[1] / "data" / "ct_spleen"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spleen():
    from casam.predictor import Predictor

    vol = tifffile.imread(DATA / "images.tif")[2:29:3]
    gt = tifffile.imread(DATA / "masks.tif")[2:29:3].astype(bool)
    return Predictor(library=False), vol, gt


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_one_box_propagates_and_beats_the_box_copied_to_every_slice(spleen):
    p, vol, gt = spleen
    k = int(np.argmax(gt.sum((1, 2))))
    box = mask_box(gt[k])
    r = p.propagate(vol, k, box=box, task="sam")
    assert r.indices[0] <= 1 and r.indices[-1] >= len(vol) - 2  # reached (nearly) both ends
    copied = np.stack([p.predict(box, task="sam", image=s).masks[0] for s in vol])
    d_prop, d_copy = dice(r.masks, gt), dice(copied, gt)
    assert d_prop > 0.75 and d_prop > d_copy + 0.05, (d_prop, d_copy)
    assert all(0 < x.score <= 1.5 and x.task is None for x in r.slices)
    assert set(r.logits) == set(r.indices) and r.logits[k].shape == (256, 256)


def test_points_and_logits_reach_the_decoder(spleen):
    p, vol, gt = spleen
    p.set_image(vol[5])
    box = mask_box(gt[5])
    a = p.predict(box, task="sam")
    assert a.logits.shape == (1, 256, 256)
    raw = p.sam_prompts(p.embedding, box, "sam", [[90, 70]], [0], mask_input=a.logits[0])
    assert raw.masks.shape == (1, *vol.shape[1:]) and not np.array_equal(a.masks, raw.masks)
    c = p.predict(points=[[97, 64]], labels=[1], task="sam")
    assert c.masks.shape == (1, *vol.shape[1:]) and (c.masks[0][64, 97] or not c.masks.any())


def test_predict_with_points_is_the_click_rule_of_the_dock(spleen):
    """A negative click through Predictor.predict changes the mask only near the click, and
    gives exactly what a ClickSession (the dock's path) gives for the same click."""
    from casam.clicks import ClickSession
    from casam.correct import ClickSettings, click_scale, local_boxes

    p, vol, gt = spleen
    p.set_image(vol[5])
    box = mask_box(gt[5])
    a = p.predict(box, task="sam").masks[0]
    ys, xs = np.nonzero(a)
    x, y = int(np.median(xs)), int(np.median(ys))
    assert a[y, x]
    b = p.predict(box, task="sam", points=[[x, y]], labels=[0]).masks[0]
    assert not b[y, x] and b.sum() < a.sum() and not (b & ~a).any()
    reach = local_boxes(x, y, click_scale(a, x, y, False), a.shape, ClickSettings())
    x0, y0 = np.floor(reach[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(reach[:, 2:].max(0)).astype(int)
    outside = np.ones_like(a)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(a[outside], b[outside])  # the rest of the mask is unchanged
    s = ClickSession(p, vol[5], box, task="sam")
    s.add(x, y, False)
    assert np.array_equal(s.mask, b)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(points=[[500, 5]]), "outside the 122x101 image"),
        (dict(points=[[50, 50]], labels=[0]), "only negative points"),
        (dict(), "give a box or at least one point"),
        (dict(boxes=[[1, 1, 20, 20], [30, 30, 50, 50]], points=[[5, 5]]), "one object"),
        (dict(boxes=[1, 1, 20, 20], mask_input=np.zeros((64, 64))), "low-res logits"),
    ],
)
def test_bad_prompts_are_one_clear_error(spleen, kwargs, words):
    p, vol, _ = spleen
    p.set_image(vol[0])
    with pytest.raises(InputError, match=words):
        p.predict(task="sam", **kwargs)


def test_propagation_bad_input(spleen):
    p, vol, gt = spleen
    with pytest.raises(InputError, match="2-D"):
        p.propagate(vol[0], 0, box=[1, 1, 20, 20])
    with pytest.raises(InputError, match="out of range"):
        p.propagate(vol, 9, box=[1, 1, 20, 20])


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    """The 9 slices as a NIfTI volume (slice axis last, 3 x 3 x 9 mm voxels)."""
    import nibabel as nib

    vol = tifffile.imread(DATA / "images.tif")[2:29:3]
    gt = tifffile.imread(DATA / "masks.tif")[2:29:3].astype(bool)
    path = tmp_path_factory.mktemp("cli") / "ct.nii.gz"
    affine = np.diag([-3.0, -3.0, 9.0, 1.0])
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).copy(), affine), str(path))
    return path, gt, affine


def cli(capsys, *argv):
    from casam.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_propagate_writes_a_3d_mask_in_the_volume_geometry(nifti, capsys, tmp_path):
    import nibabel as nib

    path, gt, affine = nifti
    k = int(np.argmax(gt.sum((1, 2))))
    x0, y0, x1, y1 = mask_box(gt[k])
    out = tmp_path / "mask.nii.gz"
    code, text, err = cli(
        capsys, "segment", path, "--slice", k, "--box", x0, y0, x1, y1, "--propagate",
        "--task", "sam", "--library", tmp_path / "lib", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    img = nib.load(str(out))
    assert np.allclose(img.affine, affine) and img.shape == (122, 101, 9)
    mask = np.asarray(img.dataobj).transpose(2, 1, 0).astype(bool)
    on = np.flatnonzero(mask.any((1, 2)))
    assert f"{int(mask.sum())} voxels on slices {on[0]}..{on[-1]}" in text  # says what it wrote
    assert on[0] <= 1 and on[-1] == 8  # through the spleen (9 slices), from its largest one
    assert dice(mask, gt) > 0.75
    # clicks on the slice go with the box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out2 = tmp_path / "mask2.npy"
    code, text, err = cli(
        capsys, "segment", path, "--slice", k, "--box", x0, y0, x1, y1, "--point", cx, cy,
        "--negative-point", 2, 2, "--propagate", "--task", "sam", "--library", tmp_path / "lib",
        "--out", out2,
    )  # fmt: skip
    assert code == 0, err
    assert np.load(out2).shape == gt.shape


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--slice", "9", "--box", "1", "1", "20", "20", "--propagate"], "out of range"),
        (["--slice", "4", "--point", "500", "5", "--propagate"], "outside"),
        (["--slice", "4", "--negative-point", "50", "50"], "only negative"),
        (["--slice", "4", "--propagate"], "give --box"),
        (["--slice", "4", "--box", "1", "1", "20", "20", "--box", "30", "30", "50", "50",
          "--propagate"], "one --box"),
    ],
)  # fmt: skip
def test_cli_bad_prompts_exit_2_and_write_nothing(nifti, capsys, tmp_path, extra, words):
    path, _, _ = nifti
    out = tmp_path / "m.nii.gz"
    code, _, err = cli(
        capsys, "segment", path, *extra, "--task", "sam", "--library", tmp_path / "l", "--out", out
    )
    assert code == 2 and words in err and "Traceback" not in err
    assert not out.exists()


def test_cli_propagate_on_a_2d_image_is_refused(capsys, tmp_path):
    import imageio.v3 as iio

    png = tmp_path / "slice.png"
    iio.imwrite(png, (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    out = tmp_path / "m.npy"
    code, _, err = cli(
        capsys, "segment", png, "--box", 1, 1, 20, 20, "--propagate", "--out", out,
        "--library", tmp_path / "l",
    )  # fmt: skip
    assert code == 2 and "needs a volume" in err and not out.exists()
