import imageio.v3 as iio
import nibabel as nib
import nrrd
import numpy as np
import pytest
import tifffile

from casam.errors import InputError
from casam.io import expand_paths, read_learning_pairs, read_pairs, read_slices, write_mask


@pytest.fixture
def vol():
    rng = np.random.default_rng(0)
    v = rng.integers(-1000, 1000, (4, 20, 30)).astype(np.int16)  # (slices, rows, cols)
    m = np.zeros_like(v, dtype=np.uint8)
    m[1, 5:10, 5:12] = 1
    m[3, 2:4, 2:4] = 2
    return v, m


def test_stacks_split_along_first_axis(tmp_path, vol):
    v, m = vol
    np.save(tmp_path / "v.npy", v)
    tifffile.imwrite(tmp_path / "v.tif", v, compression="zlib")
    for name in ("v.npy", "v.tif"):
        s = read_slices(tmp_path / name)
        assert len(s) == 4 and np.array_equal(s[2], v[2])


def test_nifti_and_nrrd_give_axial_slices_in_lps_order(tmp_path, vol):
    v, _ = vol
    xyz = np.transpose(v, (2, 1, 0))  # (x=cols, y=rows, z=slices) as scanners store them
    nib.save(nib.Nifti1Image(xyz, np.eye(4)), tmp_path / "v.nii.gz")  # RAS: x towards Right
    nrrd.write(str(tmp_path / "v.nrrd"), xyz)  # no space directions: LPS as stored
    s = read_slices(tmp_path / "v.nii.gz")
    assert len(s) == 4 and np.array_equal(s[1], v[1][::-1, ::-1])  # flipped to L and P
    s = read_slices(tmp_path / "v.nrrd")
    assert len(s) == 4 and np.array_equal(s[1], v[1])


def test_rgb_png_is_one_image(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", rgb)
    (s,) = read_slices(tmp_path / "a.png")
    assert s.shape == (12, 16, 3)


def test_pairs_skip_empty_and_honour_label(tmp_path, vol):
    v, m = vol
    np.save(tmp_path / "img.npy", v)
    np.save(tmp_path / "msk.npy", m)
    pairs, skipped = read_pairs([tmp_path / "img.npy"], [tmp_path / "msk.npy"])
    assert [p.name for p in pairs] == [f"{tmp_path / 'img.npy'}[{k}]" for k in (1, 3)]
    assert skipped == 2
    pairs, skipped = read_pairs([tmp_path / "img.npy"], [tmp_path / "msk.npy"], label=2)
    assert len(pairs) == 1 and pairs[0].mask.sum() == 4 and skipped == 3


def test_learning_pairs_refuse_empty_and_too_few_slices(tmp_path, vol):
    v, m = vol
    np.save(tmp_path / "img.npy", v)
    np.save(tmp_path / "msk.npy", m)
    np.save(tmp_path / "none.npy", np.zeros_like(m))
    args = [tmp_path / "img.npy"], [tmp_path / "msk.npy"]
    pairs, skipped = read_learning_pairs(*args, min_images=2, folds=2)
    assert len(pairs) == 2 and skipped == 2
    with pytest.raises(InputError, match=r"^only 2 annotated slice\(s\); a task needs at least 3 "):
        read_learning_pairs(*args, min_images=3, folds=3)
    assert len(read_learning_pairs(*args, min_images=3, folds=3, extend=True)[0]) == 2
    with pytest.raises(InputError, match="^Masks: all 4 mask slices are empty; there is nothing"):
        read_learning_pairs(
            args[0], [tmp_path / "none.npy"], min_images=1, folds=2, what=("Images", "Masks")
        )
    with pytest.raises(InputError, match="^Images: .* does not exist"):
        read_learning_pairs([tmp_path / "x.npy"], args[1], 1, 2, what=("Images", "Masks"))


def test_folders_sorted_by_name(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    for k in (2, 10, 1):
        img = np.full((9, 9), k, np.uint16)
        img[0, 0] = 0
        np.save(tmp_path / "i" / f"s{k:02d}.npy", img)
        np.save(tmp_path / "m" / f"s{k:02d}.npy", np.ones((9, 9), np.uint8))
    (tmp_path / "i" / "notes.txt").write_text("ignored")
    files = expand_paths([tmp_path / "i"])
    assert [f.name for f in files] == ["s01.npy", "s02.npy", "s10.npy"]
    pairs, _ = read_pairs([tmp_path / "i"], [tmp_path / "m"])
    assert [int(p.image.max()) for p in pairs] == [1, 2, 10]


def test_input_errors_name_the_file(tmp_path, vol):
    v, m = vol
    np.save(tmp_path / "img.npy", v)
    np.save(tmp_path / "msk.npy", m[:3])
    np.save(tmp_path / "small.npy", m[:, :10])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    cases = [
        (
            lambda: read_pairs([tmp_path / "img.npy"], [tmp_path / "msk.npy"]),
            "4 slices but its mask",
        ),
        (lambda: read_pairs([tmp_path / "img.npy"], [tmp_path / "small.npy"]), "must match"),
        (
            lambda: read_pairs(
                [tmp_path / "img.npy"], [tmp_path / "msk.npy", tmp_path / "small.npy"]
            ),
            "1 image files but 2",
        ),
        (lambda: read_slices(tmp_path / "bad.png"), "bad.png"),
        (lambda: expand_paths([tmp_path / "nope.png"]), "does not exist"),
        (lambda: expand_paths([tmp_path / "x.bmp"]), "does not exist"),
    ]
    for call, match in cases:
        with pytest.raises(InputError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy"):
        read_slices(tmp_path / "obj.npy")


def test_4d_is_refused(tmp_path):
    np.save(tmp_path / "v4.npy", np.zeros((2, 3, 8, 8, 2), np.uint8))
    with pytest.raises(InputError, match="5-D"):
        read_slices(tmp_path / "v4.npy")


@pytest.mark.parametrize("ext, scale", [(".png", 255), (".tif", 1), (".npy", 1)])
def test_write_mask_round_trip(tmp_path, ext, scale):
    m = np.zeros((7, 9), bool)
    m[2:4, 3:7] = True
    out = write_mask(tmp_path / f"m{ext}", m)
    (back,) = read_slices(out)
    assert np.array_equal(back, m.astype(np.uint8) * scale)
    assert [p.name for p in tmp_path.iterdir()] == [f"m{ext}"]
    with pytest.raises(InputError, match="does not exist"):
        write_mask(tmp_path / "no" / "m.png", m)
