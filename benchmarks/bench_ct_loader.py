"""Random 96³ CT crops per second: the store + CTCropDataset vs MONAI from .nii.gz.

In one run and one process each (torch and blosc limited to one thread, files in the page
cache), for a real volume and for a clinical-size one:

* **MONAI chain**: ``Dataset`` with LoadImaged, EnsureChannelFirstd, Orientationd(RAS),
  Spacingd(1.5 mm), ScaleIntensityRanged(-175..250 -> 0..1), RandSpatialCropd(96³): every crop
  loads and resamples the whole .nii.gz.
* **MONAI PersistentDataset**: the same transforms, the deterministic part cached on disk
  (warmed before timing); every crop still loads the whole cached float32 volume.
* **zarr slice**: ``zarr.open_array(...)[crop]`` from the store + the window (the naive reader).
* **CTCropDataset**: this project's loader (uniform crops, no augmentation, like the chain),
  with 1 and with several crops per visit.

Bytes decoded per crop are counted for the store readers (chunks decompressed) and are the
whole decoded volume for the MONAI paths; a 96³ int16 crop itself is 1.77 MB.

    python benchmarks/bench_ct_loader.py                 # real 243x201x223 + 512x512x300 case
    python benchmarks/bench_ct_loader.py --sweep         # also chunk size x codec on the real one
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED_CT = (
    REPO.parent / "shared" / "data" / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"
)
CROP = 96
CROP_BYTES = CROP**3 * 2  # int16
WINDOW = (-175.0, 250.0)


def make_clinical_volume(src: Path, out: Path) -> Path:
    """A real scan resampled (trilinear) onto a 512x512x300 grid at 0.8x0.8x1.5 mm, centred on
    the scan, air outside it: the size and spacing of a routine abdominal CT."""
    import nibabel as nib
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    img = nib.as_closest_canonical(nib.load(str(src)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    shape = np.array([512, 512, 300])
    spacing = np.array([0.8, 0.8, 1.5])
    centre = img.affine @ np.r_[(np.array(data.shape) - 1) / 2, 1.0]
    dst = np.diag([*spacing, 1.0])
    dst[:3, 3] = centre[:3] - spacing * (shape - 1) / 2
    t = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(img.affine))
    res = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
        t - (-1024.0), dst_affine=torch.as_tensor(dst), spatial_size=tuple(int(s) for s in shape)
    )
    vol = np.rint(res[0].numpy() - 1024.0).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, dst), str(out))
    return out


def build_store(nifti: Path, out: Path, chunk: int = 64, codec: str = "lz4") -> Path:
    from data_pipelines.ct.config import CTBuildConfig
    from data_pipelines.ct.pipeline import build_ct

    src = out.parent / f"{out.name}_in"
    src.mkdir(parents=True, exist_ok=True)
    link = src / nifti.name
    if not link.exists():
        link.symlink_to(nifti)
    report = build_ct(
        CTBuildConfig(
            input=str(src), output=str(out), chunk_size=chunk, codec=codec, val_fraction=0.0
        )
    )
    assert not report.quarantined, report.quarantined
    return out


def monai_transforms():
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        RandSpatialCropd,
        ScaleIntensityRanged,
        Spacingd,
    )

    return Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
            ScaleIntensityRanged(
                keys="image", a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True
            ),
            RandSpatialCropd(keys="image", roi_size=(CROP,) * 3, random_size=False),
        ]
    )


def timed(fn: Callable[[], int], repeats: int) -> float:
    """Best seconds per crop over ``repeats`` runs of ``fn`` (which returns its crop count)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def bench_volume(name: str, nifti: Path, store: Path, work: Path, args) -> list[dict]:
    import zarr
    from monai.data import Dataset, PersistentDataset

    from geomed_mim.data.ct import CTCropDataset

    rows: list[dict] = []
    shape = None

    # MONAI chain from .nii.gz
    ds = Dataset([{"image": str(nifti)}], transform=monai_transforms())
    first = ds[0]["image"]
    assert tuple(first.shape) == (1, CROP, CROP, CROP)
    chain = timed(lambda: sum(1 for _ in range(args.chain_crops) if ds[0] is not None), 1)
    import nibabel as nib

    vol_bytes = int(np.prod(nib.load(str(nifti)).shape)) * 4  # decoded as float32
    rows.append({"method": "MONAI chain (.nii.gz)", "s": chain, "bytes": vol_bytes})

    # PersistentDataset: warm the cache, then time
    cache = work / f"{name}_persistent"
    pds = PersistentDataset([{"image": str(nifti)}], transform=monai_transforms(), cache_dir=cache)
    pds[0]
    cached = sum(f.stat().st_size for f in cache.glob("*"))
    persistent = timed(lambda: sum(1 for _ in range(args.persistent_crops) if pds[0]), 3)
    rows.append({"method": "MONAI PersistentDataset", "s": persistent, "bytes": cached})

    # naive zarr slice + window
    from data_pipelines.store.read import read_manifest

    row = read_manifest(store).to_pylist()[0]
    shape = tuple(row["shape"])
    z = zarr.open_array(str(store / "store.zarr" / row["array"]), mode="r")
    rng = np.random.default_rng(0)
    touched = {"bytes": 0, "n": 0}
    chunk_bytes = int(np.prod(z.chunks)) * 2

    def zarr_slices() -> int:
        for _ in range(args.store_crops // 4):
            o = [int(rng.integers(0, max(1, d - CROP + 1))) for d in shape]
            n_chunks = np.prod(
                [(a + CROP - 1) // c - a // c + 1 for a, c in zip(o, z.chunks, strict=True)]
            )
            touched["bytes"] += int(n_chunks) * chunk_bytes
            touched["n"] += 1
            hu = z[o[0] : o[0] + CROP, o[1] : o[1] + CROP, o[2] : o[2] + CROP]
            np.clip((hu.astype(np.float32) - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)
        return args.store_crops // 4

    naive = timed(zarr_slices, 3)
    chunk = z.chunks[0]
    rows.append(
        {
            "method": f"zarr slice ({chunk}³ chunks)",
            "s": naive,
            "bytes": touched["bytes"] / touched["n"],
        }
    )

    for k in (1, args.crops_per_volume):
        for augment in (False, True) if k > 1 else (False,):
            cds = CTCropDataset(store, crop_size=CROP, crops_per_volume=k, split=None,
                                augment=augment, foreground_fraction=0.0)  # fmt: skip
            cds[0]  # open the arrays
            arr = cds._arrays[f"{store}|{row['array']}"]
            arr.bytes_decoded = 0
            visits = max(1, args.store_crops // k)
            counted = {"n": 0}

            def run(cds=cds, visits=visits, counted=counted, k=k) -> int:
                for i in range(visits):
                    assert cds[i]["image"].shape == (k, 1, CROP, CROP, CROP)
                counted["n"] += visits * k
                return visits * k

            s = timed(run, 3)
            label = f"CTCropDataset, {k} crop{'s' if k > 1 else ''}/visit"
            rows.append(
                {
                    "method": label + (" + augment" if augment else ""),
                    "s": s,
                    "bytes": arr.bytes_decoded / counted["n"],
                }
            )
    for r in rows:
        r["volume"] = name
        r["shape"] = shape
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| volume (stored shape) | method | ms/crop | crops/s | × MONAI chain | × Persistent "
        "| MB decoded/crop (× crop) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for vol in dict.fromkeys(r["volume"] for r in rows):
        group = [r for r in rows if r["volume"] == vol]
        chain = next(r["s"] for r in group if r["method"].startswith("MONAI chain"))
        pers = next(r["s"] for r in group if r["method"].startswith("MONAI Persistent"))
        for r in group:
            b = r["bytes"]
            bytes_txt = "" if b is None else f"{b / 1e6:.1f} ({b / CROP_BYTES:.1f}×)"
            print(
                f"| {vol} {'x'.join(map(str, r['shape']))} | {r['method']} | {r['s'] * 1e3:.2f} "
                f"| {1 / r['s']:.0f} | {chain / r['s']:.0f}× | {pers / r['s']:.1f}× | {bytes_txt} |"
            )


def sweep(nifti: Path, work: Path, args) -> None:
    from geomed_mim.data.ct import CTCropDataset

    print(
        "\n| chunk | codec | store MB | ms/crop (1/visit) | ms/crop (4/visit) "
        "| MB decoded/crop (4/visit) |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for chunk in (32, 48, 64, 96):
        for codec in ("lz4", "zstd", "none"):
            store = build_store(nifti, work / f"sweep_{chunk}_{codec}", chunk, codec)
            from data_pipelines.store.write import dir_size

            out = []
            dec = 0.0
            for k in (1, 4):
                cds = CTCropDataset(store, crop_size=CROP, crops_per_volume=k, split=None,
                                    augment=False, foreground_fraction=0.0)  # fmt: skip
                cds[0]
                arr = next(iter(cds._arrays.values()))
                arr.bytes_decoded = 0
                visits = max(1, args.store_crops // k)
                out.append(timed(lambda cds=cds, v=visits, k=k: sum(
                    k for i in range(v) if cds[i] is not None), 3))  # fmt: skip
                dec = arr.bytes_decoded / (3 * visits * k)
            size = dir_size(store / "store.zarr") / 1e6
            print(f"| {chunk} | {codec} | {size:.1f} | {out[0] * 1e3:.2f} | {out[1] * 1e3:.2f} "
                  f"| {dec / 1e6:.1f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, default=SHARED_CT, help="a real CT .nii.gz")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--chain-crops", type=int, default=3)
    p.add_argument("--persistent-crops", type=int, default=20)
    p.add_argument("--store-crops", type=int, default=200)
    p.add_argument("--crops-per-volume", type=int, default=4)
    p.add_argument("--no-clinical", action="store_true", help="skip the 512x512x300 case")
    p.add_argument("--sweep", action="store_true", help="also sweep chunk size x codec")
    args = p.parse_args()

    import torch
    from numcodecs import blosc

    torch.set_num_threads(1)
    blosc.set_nthreads(1)
    if not args.input.is_file():
        sys.exit(f"--input: {args.input} not found (the real TotalSegmentator sample)")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"# bench_ct_loader: {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread")
        rows = []
        store = build_store(args.input, work / "real")
        rows += bench_volume("real", args.input, store, work, args)
        if not args.no_clinical:
            big = make_clinical_volume(args.input, work / "clinical_512x512x300.nii.gz")
            store = build_store(big, work / "clinical")
            rows += bench_volume("clinical", big, store, work, args)
        print_table(rows)
        if args.sweep:
            sweep(args.input, work, args)


if __name__ == "__main__":
    main()
