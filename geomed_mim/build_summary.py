"""The summary ``build_dataset`` prints: what a build read, wrote, set aside and took, and the
statistics of a store (``build_dataset stats``). Formatting only: the counts come from the
build's report (:mod:`data_pipelines.counts` names them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.build import BuildReport, describe_counts, ignored_by_reason
from data_pipelines.counts import (
    DUPLICATES,
    EXACT,
    EXCLUDED,
    FORMAT,
    LABELS_WRITTEN,
    NEAR,
    SAMPLES_WRITTEN,
    SCENES_READ,
    SCENES_WITHOUT_CLOUD_MASK,
    TILES_TOTAL,
    VOLUMES_READ,
    VOXELS_WRITTEN,
    BuildCounts,
)
from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.rs.config import RSBuildConfig
from data_pipelines.store.layout import COL_DUP_OF, manifest_path
from data_pipelines.store.read import read_manifest


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def ignored_row(report: BuildReport) -> str:
    """``N`` and, when any, how many per reason: ``5  (localizer/scout image: 2, ...)``."""
    if not report.ignored:
        return "0"
    return f"{len(report.ignored)}  ({describe_counts(ignored_by_reason(report.ignored))})"


def display_path(path: str | Path) -> str:
    """A path as a user reads it: absolute as is, relative with a leading ``./``."""
    text = str(path).rstrip("/")
    return text if Path(text).is_absolute() or text.startswith(".") else f"./{text}"


def _resumed(report: BuildReport) -> str:
    if not report.resumed_parts:
        return ""
    return f"  ({report.resumed_parts} resumed from an earlier run)"


def summary_table(title: str, rows: list[tuple[str, str]], report: BuildReport) -> str:
    """``title``, the aligned ``rows``, then quarantined and ignored inputs and the manifest."""
    width = max(len(k) for k, _ in rows)
    lines = [title]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += [f"  quarantined: {q.source}: {q.reason}" for q in report.quarantined]
    lines += [f"  ignored: {path}: {why}" for path, why in report.ignored[:10]]
    if len(report.ignored) > 10:
        lines.append(f"  ... and {len(report.ignored) - 10} more ignored files (see build.json)")
    manifest = manifest_path(report.out_dir)
    lines.append(f"  manifest: {manifest} ({report.manifest_rows} rows)")
    return "\n".join(lines)


def slicing_text(cfg: RSBuildConfig) -> str:
    """How tiles were cut, in a few words: ``224x224, stride 56`` or ``grid 64, 128 px, ...``."""
    sizes = cfg.tile_sizes
    stored = f"; stored at {cfg.store_size} px" if cfg.store_size else ""
    if cfg.slicing == "random":
        count = (
            f"{cfg.crops_per_scene} per scene"
            if cfg.crops_per_scene is not None
            else f"{cfg.crops_per_km2:g} per km²"
        )
        return f"random {sizes[0]}-{sizes[-1]} px, {count}, seed {cfg.seed}{stored}"
    if len(sizes) == 1:
        return f"{sizes[0]}x{sizes[0]}, stride {cfg.stride or sizes[0]}{stored}"
    return f"grid {', '.join(map(str, sizes))} px, overlap {cfg.overlap:g}{stored}"


def per_size_text(counts: BuildCounts, cfg: RSBuildConfig) -> str:
    """``64 px: 120 of 144, 128 px: 30 of 36`` (written of cut, per native size; a grid size
    larger than every scene shows ``0 of 0``); random crops per octave: ``64-127 px: ...``."""
    cut, written = counts.by_size(TILES_TOTAL), counts.by_size(SAMPLES_WRITTEN)
    if cfg.slicing == "grid":
        bins = [(s, s, f"{s} px") for s in sorted(set(cfg.tile_sizes) | set(cut))]
    else:
        low, high, bins = cfg.tile_sizes[0], cfg.tile_sizes[-1], []
        while low <= high:
            top = min(2 * low - 1, high)
            bins.append((low, top, f"{low}-{top} px" if top > low else f"{low} px"))
            low *= 2
    return ", ".join(
        f"{label}: {sum(v for s, v in written.items() if lo <= s <= hi)} of "
        f"{sum(v for s, v in cut.items() if lo <= s <= hi)}"
        for lo, hi, label in bins
    )


def cloud_mask_row(counts: BuildCounts) -> list[tuple[str, str]]:
    """A row when some scenes had no cloud mask: their cloudy tiles cannot have been excluded."""
    n = counts.total(SCENES_WITHOUT_CLOUD_MASK)
    if not n:
        return []
    return [("clouds not checked", f"{n} of {counts.total(SCENES_READ)} scene(s): no cloud "
             f"mask in the input (see the manifest's cloud_mask column)")]  # fmt: skip


def format_summary(report: BuildReport, cfg: RSBuildConfig) -> str:
    c = report.counts
    excluded = c.by_reason(EXCLUDED)
    reasons = ", ".join(f"{k}: {v}" for k, v in excluded.items())
    duplicates = c.by_reason(DUPLICATES)
    tiles_per_s = c.total(SAMPLES_WRITTEN) / max(report.seconds, 1e-9)
    rows = [
        ("scenes read", f"{c.total(SCENES_READ)}{_resumed(report)}"),
        ("scenes quarantined", f"{len(report.quarantined)}"),
        ("files ignored", ignored_row(report)),
        ("tiles cut", f"{c.total(TILES_TOTAL)}  ({slicing_text(cfg)})"),
        ("tiles written", f"{c.total(SAMPLES_WRITTEN)}"),
        *([("per size", per_size_text(c, cfg))] if cfg.multi_size else []),
        ("tiles excluded", f"{sum(excluded.values())}" + (f"  ({reasons})" if excluded else "")),
        *cloud_mask_row(c),
        ("duplicates", f"{duplicates.get(EXACT, 0)} exact, {duplicates.get(NEAR, 0)} "
                       f"near" + ("" if cfg.dedup else "  (dedup off)")),
        ("output size", f"{human_bytes(report.output_bytes)}  (store.zarr)"),
        ("time", f"{report.seconds:.1f} s  ({tiles_per_s:.0f} tiles/s, {report.scheduler})"),
    ]  # fmt: skip
    return summary_table(f"build_dataset: {cfg.profile} -> {report.out_dir}", rows, report)


def format_ct_summary(report: BuildReport, cfg: CTBuildConfig) -> str:
    c = report.counts
    fmt = ", ".join(f"{kind}: {n}" for kind, n in c.by_reason(FORMAT).items())
    volumes = c.total(VOLUMES_READ)
    rows = [
        ("volumes built", f"{volumes}{_resumed(report)}" + (f"  ({fmt})" if fmt else "")),
        ("volumes quarantined", f"{len(report.quarantined)}"),
        ("files ignored", ignored_row(report)),
        ("with label maps", f"{c.total(LABELS_WRITTEN)}"),
        ("exact duplicates", f"{_ct_duplicates(report)}  (marked dup_of in the manifest, kept "
                             f"in the store)"),
        ("spacing", " x ".join(f"{s:g}" for s in cfg.spacing) + " mm, int16 HU, RAS"),
        ("voxels written", f"{c.total(VOXELS_WRITTEN) / 1e6:.1f} M"),
        ("output size", f"{human_bytes(report.output_bytes)}  (store.zarr, {cfg.codec})"),
        ("time", f"{report.seconds:.1f} s  ({volumes / max(report.seconds, 1e-9):.2f} "
                 f"volumes/s, {report.scheduler})"),
    ]  # fmt: skip
    return summary_table(f"build_dataset: ct -> {report.out_dir}", rows, report)


def _ct_duplicates(report: BuildReport) -> str:
    """Duplicates marked in the manifest (all of them, resumed parts included)."""
    try:
        dup_of = read_manifest(report.out_dir, columns=[COL_DUP_OF]).column(COL_DUP_OF)
        return str(sum(1 for d in dup_of.to_pylist() if d))
    except Exception:  # the summary never fails a finished build
        return "?"


def print_band_stats(out: Path, attrs: dict[str, Any]) -> None:
    width = max(len(b) for b in attrs["bands"])
    print(f"band statistics of {out} ({attrs['values']}):")
    print(f"  {'band':<{width}}  {'mean':>12} {'std':>12} {'min':>12} {'max':>12}")
    for i, b in enumerate(attrs["bands"]):
        vals = [attrs[k][i] for k in ("mean", "std", "min", "max")]
        print(
            f"  {b:<{width}}  "
            + " ".join(f"{v:>12.5g}" if v is not None else f"{'-':>12}" for v in vals)
        )


def print_hu_stats(out: Path, attrs: dict[str, Any]) -> None:
    print(f"HU statistics of {out} ({attrs['computed_over']}):")
    if not attrs["voxels"]:
        print("  no voxels")
        return
    print(f"  voxels {attrs['voxels']}  mean {attrs['mean']:.2f}  std {attrs['std']:.2f}  "
          f"min {attrs['min']:g}  max {attrs['max']:g}")  # fmt: skip
    print("  percentiles " + "  ".join(f"{k} {v:g}" for k, v in attrs["percentiles"].items()))
