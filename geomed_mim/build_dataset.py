"""``python -m geomed_mim.build_dataset``: turn a raw archive into a training store.

With no arguments it builds the embedded demo archive (real Sentinel-2 L1C scenes) into
``./geomed_demo/`` and prints a summary. ``build_dataset stats --output OUT`` recomputes the
per-band statistics of an existing store. Every flag can also be given in a YAML file
(``--config configs/data/X.yaml``, keys spelled with underscores); later flags override it.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from data_pipelines import parallel
from data_pipelines.build import BuildConfigError, BuildLockedError, BuildReport
from data_pipelines.ct.pipeline import CTBuildConfig, build_ct
from data_pipelines.resources import configs_dir, demo_data_dir
from data_pipelines.rs.discover import InputError
from data_pipelines.rs.pipeline import (
    DEFAULT_NEAR_DUP_RADIUS,
    RESAMPLING_CHOICES,
    RSBuildConfig,
    build_rs,
)
from data_pipelines.rs.profiles import ProfileError, available_profiles
from data_pipelines.stats import recompute_store_stats

DEMO_PREFIX = "demo:"
EXIT_OK, EXIT_QUARANTINED_STRICT, EXIT_CONFIG = 0, 1, 2


def demo_config_path(modality: str = "rs") -> Path:
    return configs_dir() / "data" / ("demo_ct.yaml" if modality == "ct" else "demo.yaml")


def resolve_input(spec: str | list[str]) -> str | list[str]:
    """``demo:NAME[/sub/path]`` names a file or folder of the embedded demo archive; anything
    else is a path."""
    if isinstance(spec, list):
        return [str(resolve_input(s)) for s in spec]
    if not spec.startswith(DEMO_PREFIX):
        return spec
    name = spec[len(DEMO_PREFIX) :]
    target = demo_data_dir() / name
    if not target.exists():
        choices = sorted(p.name for p in demo_data_dir().iterdir() if p.is_dir())
        raise InputError(f"--input: no demo archive {name!r}; choose one of {choices}")
    if target.is_dir() and (target / "scenes").is_dir():
        return str(target / "scenes")
    return str(target)


def resolve_repo_path(path: str | None) -> str | None:
    """A path as given, or, when it does not exist here, relative to the project's configs
    parent (so ``configs/data/classes/X.yaml`` works from any working directory)."""
    if path is None or Path(path).exists():
        return path
    candidate = configs_dir().parent / path
    if str(path).startswith("configs/") and not candidate.exists():
        candidate = configs_dir() / str(path)[len("configs/") :]
    return str(candidate) if candidate.exists() else path


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m geomed_mim.build_dataset",
        description=(
            "Slice an archive of satellite scenes into tiles and write a zarr store, a parquet "
            "manifest and a build record. With no arguments, builds the embedded demo archive "
            "into ./geomed_demo/."
        ),
        env_prefix="GEOMED",
        default_env=False,
    )
    p.add_argument(
        "--config",
        action=ActionConfigFile,
        help="YAML file with any of the options "
        "below (keys with underscores, e.g. tile_size); flags after it override it.",
    )
    p.add_argument(
        "--modality",
        type=str,
        default="rs",
        help="'rs' (satellite scenes -> tiles) or 'ct' (CT volumes -> resampled HU volumes; "
        "see the CT flags below and docs/ct_pipeline.md).",
    )
    p.add_argument(
        "--input",
        type=str | list[str] | None,
        default=None,
        help="Folder of rasters (searched recursively), a glob such as "
        "'scenes/**/*.tif', a raster file, or demo:NAME for the embedded demo "
        "(demo:sentinel2_l1c, demo:landsat8_l1, demo:ct). Default: the demo archive.",
    )
    p.add_argument(
        "--output",
        type=str | None,
        default=None,
        help="Folder to write store.zarr, manifest.parquet, build.json and "
        "quarantine.jsonl into. Re-running into the same folder resumes.",
    )
    p.add_argument(
        "--profile",
        type=str,
        default="sentinel2_l1c",
        help=f"Sensor profile name ({', '.join(available_profiles())}) or a path "
        "to a profile YAML. Names the bands and their order.",
    )
    p.add_argument(
        "--tile-size", type=int, default=64, help="Tile edge in pixels of the scene's finest grid."
    )
    p.add_argument(
        "--stride",
        type=int | None,
        default=None,
        help="Step between tiles in pixels; smaller than --tile-size gives overlap. "
        "Default: the tile size (no overlap).",
    )
    p.add_argument(
        "--cover-edges",
        action=ActionYesNo,
        default=True,
        help="Add a last row/column of tiles snapped to the scene edge so no pixel is "
        "left out (--no_cover-edges drops partial edge tiles instead).",
    )
    p.add_argument(
        "--resampling",
        type=str,
        default="bilinear",
        help=f"How coarser bands are brought to the finest grid: {', '.join(RESAMPLING_CHOICES)}.",
    )
    p.add_argument(
        "--max-nodata-fraction",
        type=float,
        default=0.5,
        help="Exclude a tile when more than this fraction of its pixels is nodata/NaN.",
    )
    p.add_argument(
        "--calibrate",
        type=str,
        default="toa",
        help="'toa': store physical top-of-atmosphere values (float32) as the profile "
        "defines them (Sentinel-2 DN/10000, Landsat TOA reflectance and brightness "
        "temperature from the MTL file, MODIS scaling); 'none': store raw values.",
    )
    p.add_argument(
        "--max-out-of-range-fraction",
        type=float,
        default=0.05,
        help="Exclude a tile when more than this fraction of its valid pixels lies "
        "outside the profile's valid_range.",
    )
    p.add_argument(
        "--max-saturated-fraction",
        type=float,
        default=0.05,
        help="Exclude a tile when more than this fraction of pixels is saturated.",
    )
    p.add_argument(
        "--max-cloud-fraction",
        type=float,
        default=0.5,
        help="Exclude a tile when more than this fraction of pixels is flagged cloud by "
        "the QA band (profiles with a QA band, e.g. Landsat BQA).",
    )
    p.add_argument(
        "--min-band-std",
        type=float | None,
        default=None,
        help="Exclude a tile as 'constant' when every band's std (raw units) is at "
        "most this. Default: the profile's min_band_std.",
    )
    p.add_argument(
        "--dedup",
        action=ActionYesNo,
        default=True,
        help="Mark exact and near duplicates across the whole archive (--no_dedup to skip).",
    )
    p.add_argument(
        "--near-dup-radius",
        type=int,
        default=DEFAULT_NEAR_DUP_RADIUS,
        help="Hamming radius (bits of the 64-bit perceptual hash) within which two "
        "tiles are near duplicates.",
    )
    p.add_argument(
        "--preview",
        action=ActionYesNo,
        default=True,
        help="Write preview.png, a mosaic of sample tiles with excluded and duplicate "
        "tiles outlined.",
    )
    p.add_argument(
        "--labels",
        type=str | None,
        default=None,
        help="RS: label raster(s) for a segmentation store: one GeoTIFF covering every "
        "scene, or a folder with <scene>.tif / <scene>_label(s).tif / <scene>_mask.tif; "
        "reprojected to each scene's grid with nearest neighbour and cut like the "
        "tiles (labels/<part>); demo:sentinel2_l1c/labels/lulc_mask.tif is the demo's. "
        "CT: default 'auto' pairs label maps by the naming rule (x.nii.gz <-> x_seg.nii.gz / "
        "_label / _mask / _gt, or imagesTr/ <-> labelsTr/); 'none' builds without labels.",
    )
    p.add_argument(
        "--classes",
        type=str | None,
        default=None,
        help="Class table for --labels: YAML with ignore_index and classes: "
        "[{id, name, color}] (e.g. configs/data/classes/eolearn_lulc.yaml); ids not in "
        "the table become ignore_index. CT: a class may list source_ids (the label map's "
        "ids that become it, e.g. configs/data/classes/totalseg_abdomen.yaml); the remap is "
        "done at build time and recorded as the store's 'classes' attribute.",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="Fraction of scenes (not tiles) assigned to the 'val' split.",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=parallel.default_workers(),
        help="Worker processes of the local dask cluster (1 = run in this process).",
    )
    p.add_argument(
        "--scheduler",
        type=str,
        default=parallel.LOCAL,
        help="'local' (a LocalCluster of --workers processes), 'synchronous' (this "
        "process, for debugging) or the address of a running dask scheduler "
        "(tcp://HOST:PORT).",
    )
    p.add_argument("--compression-level", type=int, default=5, help="zstd level 0-9.")
    p.add_argument(
        "--strict",
        action=ActionYesNo,
        default=False,
        help="Exit with status 1 when any input had to be quarantined.",
    )
    p.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="Delete a previous build in --output instead of resuming it.",
    )
    add_ct_arguments(p)
    return p


# -- CT (--modality ct) --------------------------------------------------------------------------


def add_ct_arguments(p: ArgumentParser) -> None:
    """Flags that only the CT build reads (the shared ones: input, output, workers, ...)."""
    g = p.add_argument_group("CT (--modality ct)")
    g.add_argument(
        "--spacing",
        type=float | list[float],
        default=1.5,
        help="Target voxel spacing in mm: one value (isotropic) or [x, y, z] (RAS axes).",
    )
    g.add_argument(
        "--labels-csv",
        type=str | None,
        default=None,
        help="CSV of pairs with columns image,label[,patient_id] (paths relative to the CSV); "
        "wins over the naming rule. image may be a DICOM series folder.",
    )
    g.add_argument(
        "--crop-foreground",
        action=ActionYesNo,
        default=False,
        help="Crop each volume to the body (HU > --foreground-hu) plus --crop-margin-mm.",
    )
    g.add_argument("--foreground-hu", type=float, default=-500.0, help="Body threshold in HU.")
    g.add_argument("--crop-margin-mm", type=float, default=10.0, help="Margin of the crop in mm.")
    g.add_argument(
        "--foreground-points",
        type=int,
        default=1024,
        help="Crop centres stored per case for foreground-biased sampling (label or body voxels).",
    )
    g.add_argument("--chunk-size", type=int, default=64, help="Edge of the cubic zarr chunks.")
    g.add_argument(
        "--codec", type=str, default="lz4", help="Volume codec: lz4 (fast), zstd (small), none."
    )


def ct_config(args: object) -> CTBuildConfig:
    a = args
    return CTBuildConfig(
        input=resolve_input(a.input),
        output=a.output,
        spacing=a.spacing,
        labels=a.labels if a.labels is not None else "auto",
        labels_csv=a.labels_csv,
        classes=resolve_repo_path(a.classes),
        crop_foreground=a.crop_foreground,
        foreground_hu=a.foreground_hu,
        crop_margin_mm=a.crop_margin_mm,
        foreground_points=a.foreground_points,
        chunk_size=a.chunk_size,
        codec=a.codec,
        compression_level=a.compression_level,
        val_fraction=a.val_fraction,
        workers=a.workers,
        scheduler=a.scheduler,
        strict=a.strict,
        overwrite=a.overwrite,
    )


def format_ct_summary(report: BuildReport, cfg: CTBuildConfig) -> str:
    c = report.counts
    resumed = (
        f"  ({report.resumed_parts} resumed from an earlier run)" if report.resumed_parts else ""
    )
    dups = "?"
    try:
        from data_pipelines.store import read_manifest

        dups = str(sum(1 for d in read_manifest(report.out_dir).column("dup_of").to_pylist() if d))
    except Exception:  # the summary never fails a finished build
        pass
    fmt = ", ".join(
        f"{k.split(':', 1)[1]}: {v}" for k, v in sorted(c.items()) if k.startswith("format:")
    )
    rows = [
        ("volumes built", f"{c.get('volumes_read', 0)}{resumed}" + (f"  ({fmt})" if fmt else "")),
        ("volumes quarantined", f"{len(report.quarantined)}"),
        ("files ignored", f"{len(report.ignored)}"),
        ("with label maps", f"{c.get('labels_written', 0)}"),
        ("exact duplicates", f"{dups}  (marked dup_of in the manifest, kept in the store)"),
        ("spacing", " x ".join(f"{s:g}" for s in cfg.spacing) + " mm, int16 HU, RAS"),
        ("voxels written", f"{c.get('voxels_written', 0) / 1e6:.1f} M"),
        ("output size", f"{_human_bytes(report.output_bytes)}  (store.zarr, {cfg.codec})"),
        (
            "time",
            f"{report.seconds:.1f} s  ({c.get('volumes_read', 0) / max(report.seconds, 1e-9):.2f} "
            f"volumes/s, {report.scheduler})",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"build_dataset: ct -> {report.out_dir}"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += [f"  quarantined: {q.source}: {q.reason}" for q in report.quarantined]
    lines += [f"  ignored: {path}: {why}" for path, why in report.ignored[:10]]
    if len(report.ignored) > 10:
        lines.append(f"  ... and {len(report.ignored) - 10} more ignored files (see build.json)")
    lines.append(f"  manifest: {report.out_dir / 'manifest.parquet'} ({report.manifest_rows} rows)")
    return "\n".join(lines)


def parse_config(argv: list[str]) -> tuple[RSBuildConfig | CTBuildConfig, bool]:
    """Parse flags into a config; without --input (flag or YAML) the demo settings are the base."""
    parser = build_parser()
    args = parser.parse_args(argv)
    is_demo = args.input is None
    if is_demo:
        args = parser.parse_args(["--config", str(demo_config_path(args.modality)), *argv])
    if args.output is None:
        raise BuildConfigError("--output: give the folder to write the dataset into")
    if args.scheduler not in (parallel.LOCAL, parallel.SYNCHRONOUS) and "://" not in args.scheduler:
        raise BuildConfigError(
            f"--scheduler: {args.scheduler!r} is not 'local', 'synchronous' or an address "
            f"like tcp://10.0.0.5:8786"
        )
    if args.modality not in ("rs", "ct"):
        raise BuildConfigError(f"--modality: {args.modality!r} is not 'rs' or 'ct'")
    if args.modality == "ct":
        return ct_config(args), is_demo
    values = {f.name: getattr(args, f.name) for f in fields(RSBuildConfig) if f.name in args}
    values["input"] = resolve_input(args.input)
    if values.get("labels"):
        values["labels"] = resolve_input(values["labels"])
    values["classes"] = resolve_repo_path(values.get("classes"))
    return RSBuildConfig(**values), is_demo


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def format_summary(report: BuildReport, cfg: RSBuildConfig) -> str:
    c = report.counts
    excluded = {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("excluded:")}
    rows = [
        (
            "scenes read",
            f"{c.get('scenes_read', 0)}"
            + (
                f"  ({report.resumed_parts} resumed from an earlier run)"
                if report.resumed_parts
                else ""
            ),
        ),
        ("scenes quarantined", f"{len(report.quarantined)}"),
        ("files ignored", f"{len(report.ignored)}"),
        (
            "tiles cut",
            f"{c.get('tiles_total', 0)}  ({cfg.tile_size}x{cfg.tile_size}, "
            f"stride {cfg.stride or cfg.tile_size})",
        ),
        ("tiles written", f"{c.get('samples_written', 0)}"),
        (
            "tiles excluded",
            f"{sum(excluded.values())}"
            + (
                "  (" + ", ".join(f"{k}: {v}" for k, v in excluded.items()) + ")"
                if excluded
                else ""
            ),
        ),
        (
            "duplicates",
            f"{c.get('duplicates:exact', 0)} exact, {c.get('duplicates:near', 0)} near"
            + ("" if cfg.dedup else "  (dedup off)"),
        ),
        ("output size", f"{_human_bytes(report.output_bytes)}  (store.zarr)"),
        (
            "time",
            f"{report.seconds:.1f} s  "
            f"({c.get('samples_written', 0) / max(report.seconds, 1e-9):.0f} tiles/s, "
            f"{report.scheduler})",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"build_dataset: {cfg.profile} -> {report.out_dir}"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    for q in report.quarantined:
        lines.append(f"  quarantined: {q.source}: {q.reason}")
    for path, why in report.ignored[:10]:
        lines.append(f"  ignored: {path}: {why}")
    if len(report.ignored) > 10:
        lines.append(f"  ... and {len(report.ignored) - 10} more ignored files (see build.json)")
    lines.append(f"  manifest: {report.out_dir / 'manifest.parquet'} ({report.manifest_rows} rows)")
    return "\n".join(lines)


def stats_main(argv: list[str]) -> int:
    """``build_dataset stats --output OUT``: recompute the band statistics of a built store."""
    p = ArgumentParser(
        prog="python -m geomed_mim.build_dataset stats",
        description="Recompute per-band statistics (mean, std, min, max, percentiles) of an "
        "existing store from its kept, non-duplicate tiles and write them to the store.",
    )
    p.add_argument("--output", type=str, required=True, help="The built dataset folder.")
    args = p.parse_args(argv)
    out = Path(args.output)
    if not (out / "manifest.parquet").is_file():
        print(
            f"error: --output: {out} holds no built dataset (no manifest.parquet)", file=sys.stderr
        )
        return EXIT_CONFIG
    attrs = recompute_store_stats(out)
    width = max(len(b) for b in attrs["bands"])
    print(f"band statistics of {out} ({attrs['values']}):")
    print(f"  {'band':<{width}}  {'mean':>12} {'std':>12} {'min':>12} {'max':>12}")
    for i, b in enumerate(attrs["bands"]):
        vals = [attrs[k][i] for k in ("mean", "std", "min", "max")]
        print(
            f"  {b:<{width}}  "
            + " ".join(f"{v:>12.5g}" if v is not None else f"{'-':>12}" for v in vals)
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "stats":
        return stats_main(argv[1:])
    try:
        cfg, is_demo = parse_config(argv)
        if is_demo:
            print(f"No --input given: building the embedded demo archive into ./{cfg.output}/")
        report = build_ct(cfg) if isinstance(cfg, CTBuildConfig) else build_rs(cfg)
    except (BuildConfigError, ProfileError, InputError, BuildLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(cfg, CTBuildConfig):
        print(format_ct_summary(report, cfg))
    else:
        print(format_summary(report, cfg))
    if cfg.strict and report.quarantined:
        print(f"error: --strict: {len(report.quarantined)} input(s) quarantined", file=sys.stderr)
        return EXIT_QUARANTINED_STRICT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
