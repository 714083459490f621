"""A tiny Medical Segmentation Decathlon task folder in the Decathlon's own layout:
``dataset.json`` (the metadata keys, ``training`` pairs ``./imagesTr/x.nii.gz`` /
``./labelsTr/x.nii.gz`` and a ``test`` list of ``./imagesTs/`` paths, as the Task09_Spleen
release writes it), int16 HU images and uint8 label maps (0 background, 1 spleen) as NIfTI.

Two kinds of pixels: crops of the shared sample data's real abdominal CT around its spleen
(TotalSegmentator's CT, 3 mm, the spleen of its ``--fast`` label map), and a synthetic soft-tissue
block with a spleen-like sphere, from the repository alone."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

TASK = "Task09_Spleen"
SPLEEN_ID = 1  # TotalSegmentator's id of the spleen
CROP = (18, 18, 12)  # source voxels of a real-CT case (3 mm): 35 x 35 x 23 at 1.5 mm
# corners of the real-CT crops: around the spleen (x 10-43, y 21-57, z 82-111 in the scan)
CORNERS = [(14, 28, 88), (18, 30, 92), (12, 34, 96), (20, 26, 90), (16, 32, 99)]


def dataset_json(cases: list[str], tests: list[str]) -> dict:
    """The Decathlon's dataset.json of Task09_Spleen, listing ``cases`` and ``tests``."""
    return {
        "name": "Spleen",
        "description": "Spleen Segmentation",
        "reference": "Memorial Sloan Kettering Cancer Center",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 06/08/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": len(cases),
        "numTest": len(tests),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases
        ],
        "test": [f"./imagesTs/{t}.nii.gz" for t in tests],
    }


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def write_task(
    root: Path, volumes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tests: int = 1
) -> Path:
    """``root/Task09_Spleen`` holding the (HU, label, affine) ``volumes`` as spleen_<k> cases
    and the first ``tests`` images again, unlabeled, in imagesTs/; returns the task folder."""
    task = root / TASK
    names = [f"spleen_{2 + 3 * k}" for k in range(len(volumes))]
    for name, (hu, label, affine) in zip(names, volumes, strict=True):
        write_nifti(task / "imagesTr" / f"{name}.nii.gz", hu.astype(np.int16), affine)
        write_nifti(task / "labelsTr" / f"{name}.nii.gz", label.astype(np.uint8), affine)
    # the release's archive also holds macOS resource files ("._spleen_2.nii.gz"), which are
    # not NIfTI: dataset.json does not list them, so the reader never opens them
    for folder in ("imagesTr", "labelsTr"):
        (task / folder / f"._{names[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 not NIfTI")
    test_names = [f"spleen_{1 + 3 * k}" for k in range(tests)]
    for name, (hu, _, affine) in zip(test_names, volumes, strict=False):
        write_nifti(task / "imagesTs" / f"{name}.nii.gz", hu.astype(np.int16), affine)
    (task / "dataset.json").write_text(json.dumps(dataset_json(names, test_names), indent=4))
    return task


def real_ct_volumes(shared_data: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Crops of the real abdominal CT around its spleen, each with its own affine."""
    folder = shared_data / "ct" / "totalsegmentator_example"
    ct = nib.load(folder / "example_ct.nii.gz")
    seg = np.asarray(nib.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)
    hu = np.asarray(ct.dataobj)
    out = []
    for corner in CORNERS:
        box = tuple(slice(c, c + n) for c, n in zip(corner, CROP, strict=True))
        affine = ct.affine.copy()
        affine[:3, 3] = ct.affine[:3, :3] @ np.array(corner) + ct.affine[:3, 3]
        out.append((hu[box], (seg[box] == SPLEEN_ID).astype(np.uint8), affine))
    return out


def synthetic_volumes(n: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fat-and-muscle blocks (16 x 16 x 12 voxels of 3 mm, LPS axes as many scanners write)
    holding a spleen-like sphere of about 45 HU and a little air at one side."""
    rng = np.random.default_rng(seed)
    shape = (16, 16, 12)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    affine[:3, 3] = [120.0, 140.0, -60.0]
    out = []
    for _ in range(n):
        centre = rng.uniform([5, 5, 4], [11, 11, 8])
        spleen = np.linalg.norm(grid - centre, axis=-1) < rng.uniform(3.5, 5.0)
        hu = np.where(rng.random(shape) < 0.5, -90.0, 55.0) + rng.normal(0, 15, shape)
        hu[spleen] = rng.normal(45, 8, int(spleen.sum()))
        hu[:2] = -1000.0
        out.append((np.rint(hu), spleen.astype(np.uint8), affine))
    return out
