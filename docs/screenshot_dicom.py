"""Make docs/screenshot-dicom.png: a DICOM CT series opened, segmented with a box, saved back.

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/screenshot_dicom.py

What it does, as a user would: write the repository's 29 real CT slices (tests/data/ct_spleen)
as a DICOM series with shuffled file names (tests/core/volume_helpers.py), open the folder in
napari with the CA-SAM dock (``viewer.open(folder, plugin="napari-casam")``), draw a box
around the spleen on one slice, let the dock segment it with plain SAM, then save the masks
layer as ``.nii.gz`` and as a DICOM SEG and check both: the NIfTI re-read with nibabel has
the scan's affine and the mask sits on the spleen. Runs in a throw-away ``CASAM_HOME``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "core"))
from screenshot import open_with_dock, save_window, throwaway_home, wait  # noqa: E402  (docs/screenshot.py)

SHOW = 14  # the axial slice the box is drawn on


def check_saved(folder: Path, image, masks, truth: np.ndarray) -> None:
    """Re-read what was saved: the NIfTI's affine is the series', the mask is on the spleen."""
    import highdicom as hd
    import nibabel as nib

    from casam.metrics import iou
    from casam.volumes import read_mask_like
    from napari_casam._volume_layers import geometry_of

    geo = geometry_of(image.metadata)
    nii = nib.load(folder / "masks.nii.gz")
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geo.affine_lps()  # LPS -> RAS
    print("NIfTI affine = the series' affine:", np.allclose(nii.affine, expected, atol=1e-4))
    back = read_mask_like(folder / "masks.nii.gz", geo)
    print(
        f"IoU of the saved mask with the reference on slice {SHOW}:",
        f"{iou(back[SHOW] > 0, truth[SHOW] > 0):.3f}",
    )
    seg = hd.seg.segread(folder / "masks.dcm")
    print("SEG references the series:", seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    same = np.array_equal(read_mask_like(folder / "masks.dcm", geo) > 0, back > 0)
    print("SEG == NIfTI mask:", same)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "screenshot-dicom.png")
    args = ap.parse_args()
    tmp = throwaway_home("casam-dicom-")
    from volume_helpers import write_ct_series

    _, truth, _ = write_ct_series(tmp / "CT series", n=29)

    viewer, dock, app = open_with_dock()
    (image,) = viewer.open(str(tmp / "CT series"), plugin="napari-casam")
    print(
        "opened",
        image.name,
        image.data.shape,
        "scale",
        tuple(image.scale),
        "translate",
        tuple(image.translate),
        "HU",
        image.data.min(),
        image.data.max(),
    )
    viewer.layers.selection.active = image
    wait(app, lambda: dock.image_layer is not None and not dock.busy, 600, "the model")
    viewer.dims.set_point(0, SHOW * image.scale[0] + image.translate[0])
    wait(app, lambda: not dock.busy, 600, "routing")
    boxes = dock.prompts_layer()
    m = truth[SHOW] > 0
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    r0, r1, c0, c1 = rows[0] - 2, rows[-1] + 2, cols[0] - 2, cols[-1] + 2
    boxes.add_rectangles(
        np.array([[SHOW, r0, c0], [SHOW, r0, c1], [SHOW, r1, c1], [SHOW, r1, c0]], float)
    )
    wait(app, lambda: not dock.busy, 600, "the mask")
    masks = dock.masks_layer()
    print("segmented:", dock.status.text(), "| voxels:", int((masks.data > 0).sum()))
    viewer.layers.selection.active = masks
    for sfx in (".nii.gz", ".dcm"):
        viewer.layers.save(str(tmp / f"masks{sfx}"), selected=True, plugin="napari-casam")
    check_saved(tmp, image, masks, truth)

    masks.opacity = 0.6
    viewer.layers.selection.active = boxes
    viewer.reset_view()
    viewer.dims.set_point(0, SHOW * image.scale[0] + image.translate[0])
    save_window(viewer, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
