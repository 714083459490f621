"""``python -m geomed_mim.build_dataset``: turn a raw archive into a training store.

With no arguments it builds the embedded demo archive (real Sentinel-2 L1C scenes) into
``./geomed_demo/`` and prints a summary. ``build_dataset stats --output OUT`` recomputes the
per-band statistics of an existing RS store (the HU statistics of a CT store). Every flag can
also be given in a YAML file (``--config configs/data/X.yaml``, keys spelled with
underscores); later flags override it.

Exit status: 0 when samples were written; 1 when nothing was written (with one line saying
why) or, with ``--strict``, when any input was quarantined or any file ignored; 2 for a
setting that cannot work (one line naming the flag); 74 when the output could not be written
(no space, quota, file size limit, read-only filesystem, an I/O error; one line naming
``--output`` and the errno, no build.json, nothing quarantined for it; re-running resumes);
130 after Ctrl-C (re-running resumes).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from data_pipelines import parallel
from data_pipelines.build import BuildReport, PartCommitted
from data_pipelines.config import BuildConfig
from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.ct.dicom_grouping import is_export_extra
from data_pipelines.ct.pipeline import build_ct
from data_pipelines.ct.stats import recompute_ct_stats
from data_pipelines.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    BuildConfigError,
    InputError,
    NothingWrittenError,
    output_writes,
)
from data_pipelines.resources import configs_dir
from data_pipelines.rs.config import RESAMPLING_CHOICES, RSBuildConfig
from data_pipelines.rs.pipeline import build_rs
from data_pipelines.rs.profiles import available_profiles
from data_pipelines.stats import recompute_store_stats
from data_pipelines.store.layout import ATTR_MODALITY, MANIFEST_NAME, manifest_path
from data_pipelines.store.object_store import (
    ObjectStoreError,
    is_object_url,
    object_filesystem,
    publish,
    staging_dir,
)
from data_pipelines.store.read import read_store_attrs
from geomed_mim.build_summary import (
    display_path,
    format_ct_summary,
    format_summary,
    human_bytes,
    print_band_stats,
    print_hu_stats,
)
from geomed_mim.resources import demo_data_dir
from geomed_mim.usage import UserErrors

DEMO_PREFIX = "demo:"
INTERRUPTED = "interrupted; re-run the same command to resume"


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


FROM_CONFIG: Any = object()  # a Flag's type or default that its config field gives


@dataclass(frozen=True)
class Flag:
    """One command-line option: ``--name`` with its type, default and help. A flag of a config
    field (:func:`config_flag`) takes the type and default the field declares, so each default
    is written once, in the config class."""

    name: str
    type: Any
    default: Any
    help: str

    @property
    def field_name(self) -> str:
        return self.name[2:].replace("-", "_")

    def of_config(self, config_class: type) -> Flag:
        """This flag with the type and default it leaves to ``config_class``'s field."""
        if self.type is not FROM_CONFIG and self.default is not FROM_CONFIG:
            return self
        field = next(f for f in fields(config_class) if f.name == self.field_name)
        field_type = get_type_hints(config_class)[self.field_name]
        return replace(
            self,
            type=field_type if self.type is FROM_CONFIG else self.type,
            default=field.default if self.default is FROM_CONFIG else self.default,
        )

    def add_to(self, parser: ArgumentParser | Any) -> None:
        if self.type is bool:  # --flag / --no-flag
            action = ActionYesNo(no_prefix="no-")
            parser.add_argument(self.name, action=action, default=self.default, help=self.help)
        else:
            parser.add_argument(self.name, type=self.type, default=self.default, help=self.help)


def config_flag(name: str, help: str) -> Flag:
    """The flag of a config field (``--tile-size`` sets ``tile_size``), typed and defaulted as
    the field is (see :meth:`Flag.of_config`)."""
    return Flag(name, FROM_CONFIG, FROM_CONFIG, help)


def of_config(config_class: type, flags: list[Flag]) -> list[Flag]:
    return [flag.of_config(config_class) for flag in flags]


def input_output_flags() -> list[Flag]:
    """What to read and where to write (every modality)."""
    return of_config(BuildConfig, [
        Flag("--input", str | list[str] | None, None,
             "Folder of rasters or provider products (searched recursively: MOD021KM/MYD021KM "
             ".hdf, Sentinel-2 .SAFE folders or zips, Landsat Collection 1/2 scenes), a glob "
             "such as 'scenes/**/*.tif', a raster or product file, a STAC Item, "
             "ItemCollection, Catalog or Collection JSON (path or http(s)/s3 URL; remote COG "
             "assets are read by range), or demo:NAME for the "
             "embedded demo (demo:sentinel2_l1c, demo:landsat8_l1, demo:ct). Default: the demo "
             "archive."),
        Flag("--output", str | None, None,
             "Folder to write store.zarr, manifest.parquet, build.json and quarantine.jsonl "
             "into. Re-running into the same folder resumes. An object-store URL "
             "(s3://bucket/prefix) builds in a local staging folder ($GEOMED_STAGING_DIR) and "
             "publishes the finished build there, build.json last."),
    ])  # fmt: skip


def label_flags() -> list[Flag]:
    """Label maps and their class table (RS and CT, each with its own pairing rule)."""
    return of_config(BuildConfig, [
        Flag("--labels", str | None, None,
             "RS: label raster(s) for a segmentation store: one GeoTIFF covering every scene, "
             "or a folder with <scene>.tif / <scene>_label(s).tif / <scene>_mask.tif; "
             "reprojected to each scene's grid with nearest neighbour and cut like the tiles "
             "(labels/<part>); demo:sentinel2_l1c/labels/lulc_mask.tif is the demo's. CT: "
             "default 'auto' pairs label maps by the naming rule (x.nii.gz <-> x_seg.nii.gz / "
             "_label / _mask / _gt, or imagesTr/ <-> labelsTr/); 'none' builds without labels."),
        config_flag("--classes",
             "Class table for --labels: YAML with ignore_index and classes: [{id, name, "
             "color}] (e.g. configs/data/classes/eolearn_lulc.yaml); ids not in the table "
             "become ignore_index. CT: a class may list source_ids (the label map's ids that "
             "become it, e.g. configs/data/classes/totalseg_abdomen.yaml); the remap is done "
             "at build time and recorded as the store's 'classes' attribute."),
    ])  # fmt: skip


def run_flags() -> list[Flag]:
    """How to split, compress and run (every modality)."""
    return of_config(BuildConfig, [
        config_flag("--val-fraction",
             "Fraction of scenes (not tiles) assigned to the 'val' split; RS with "
             "--split-by location: of location blocks."),
        Flag("--workers", int, parallel.default_workers(),
             "Worker processes of the local dask cluster (1 = run in this process)."),
        config_flag("--scheduler",
             "'local' (a LocalCluster of --workers processes on 127.0.0.1), 'synchronous' (this "
             "process, for debugging) or the address of a running dask scheduler "
             "(tls://HOST:PORT with --tls-*, or tcp://HOST:PORT on an isolated network; see "
             "docs/cluster.md)."),
        Flag("--tls-ca-file", str | None, None,
             "--scheduler tls://...: the CA certificate (PEM) the scheduler's certificate is "
             "signed by (dask config: distributed.comm.tls.ca-file)."),
        Flag("--tls-cert", str | None, None,
             "--scheduler tls://...: this client's certificate (PEM; dask config: "
             "distributed.comm.tls.client.cert)."),
        Flag("--tls-key", str | None, None,
             "--scheduler tls://...: this client's private key (PEM; dask config: "
             "distributed.comm.tls.client.key)."),
        config_flag("--compression-level", "zstd level 0-9."),
        config_flag("--strict",
             "Exit with status 1 when any input had to be quarantined or any file was ignored, "
             "localizers, scouts and derived DICOM copies aside (an ordinary export has them); "
             "a build that writes nothing exits 1 in any case."),
        config_flag("--overwrite",
             "Delete a previous build in --output instead of resuming it."),
    ])  # fmt: skip


def rs_split_flags() -> list[Flag]:
    """How an RS build splits train and val (beside the shared --val-fraction)."""
    return of_config(RSBuildConfig, [
        config_flag("--split-by",
             "'scene': each scene (date) wholly in train or val; 'location': every date of "
             "a place on the same side, validation on held-out blocks of ground (for "
             "archives that revisit the same area)."),
        config_flag("--split-block",
             "--split-by location: edge of the square blocks in CRS units (metres for UTM). "
             "Default: two tile edges."),
        config_flag("--split-margin",
             "--split-by location: training tiles closer than this to a validation tile (CRS "
             "units) are set aside as split 'margin'; 0 keeps every tile that shares no "
             "pixel with a validation tile."),
    ])  # fmt: skip


def rs_flags() -> list[Flag]:
    """Flags of the RS build (--modality rs)."""
    return of_config(RSBuildConfig, [
        config_flag("--profile",
             f"Sensor profile name ({', '.join(available_profiles())}) or a path to a profile "
             "YAML. Names the bands and their order."),
        config_flag("--tile-size",
             "Tile edge in pixels of the scene's finest grid; several sizes cut a grid each "
             "(--tile-size 64 128 256 512 1024); with --slicing random, MIN MAX of the drawn "
             "sizes."),
        config_flag("--stride",
             "Step between tiles in pixels (one tile size); smaller than --tile-size gives "
             "overlap. Default: the tile size (no overlap)."),
        config_flag("--overlap",
             "Several tile sizes: fraction by which neighbouring tiles of a size overlap "
             "(stride = size x (1 - overlap))."),
        config_flag("--slicing",
             "'grid' (every position of a grid per tile size) or 'random' (--crops-per-scene "
             "or --crops-per-km2 crops at random positions, sizes drawn log-uniformly between "
             "the two --tile-size values, seeded by --seed and the scene: a re-run or a "
             "resumed run cuts the same crops)."),
        config_flag("--crops-per-scene", "Random slicing: crops per scene."),
        config_flag("--crops-per-km2",
             "Random slicing: crops per km² of scene (needs a CRS in metres)."),
        config_flag("--seed", "Random slicing: the seed crops are drawn from."),
        config_flag("--store-size",
             "Store every crop at this edge, e.g. 224 (area averaging for values, nearest for "
             "labels); the manifest keeps each crop's native size, window and scale. Default: "
             "crops are stored as cut."),
        config_flag("--cover-edges",
             "Add a last row/column of tiles snapped to the scene edge so no pixel is left out "
             "(--no-cover-edges drops partial edge tiles instead)."),
        config_flag("--resampling",
             f"How coarser bands are brought to the finest grid: "
             f"{', '.join(RESAMPLING_CHOICES)}."),
        config_flag("--max-nodata-fraction",
             "Exclude a tile when more than this fraction of its pixels is nodata/NaN."),
        config_flag("--calibrate",
             "'toa': training reads physical top-of-atmosphere values as the profile defines "
             "them (Sentinel-2 DN/10000, Landsat TOA reflectance and brightness temperature "
             "from the MTL file, MODIS scaling); 'none': raw values."),
        config_flag("--store-dtype",
             "How calibrated tiles are stored: 'compact' keeps the raw integers and records "
             "each scene's calibration (CF scale_factor/add_offset) for the loader to apply "
             "(about half the bytes, the same values); 'float32' stores the calibrated values."),
        config_flag("--max-out-of-range-fraction",
             "Exclude a tile when more than this fraction of its valid pixels lies outside the "
             "profile's valid_range."),
        config_flag("--max-saturated-fraction",
             "Exclude a tile when more than this fraction of pixels is saturated."),
        config_flag("--max-cloud-fraction",
             "Exclude a tile when more than this fraction of pixels is flagged cloud by the QA "
             "band or cloud mask (Landsat BQA/QA_PIXEL, Sentinel-2 MSK_CLASSI/SCL)."),
        config_flag("--max-cloud-shadow-fraction",
             "Exclude a tile when more than this fraction of pixels is flagged cloud shadow "
             "(Landsat QA_PIXEL/BQA, Sentinel-2 SCL)."),
        config_flag("--max-snow-fraction",
             "Exclude a tile when more than this fraction of pixels is flagged snow/ice "
             "(default 1.0: snowy tiles are kept, the fraction is recorded)."),
        config_flag("--grid",
             "Swath products (MODIS L1B): resample each granule to this CRS, e.g. EPSG:32632 "
             "or EPSG:4326 (nearest neighbour); default: tiles cut from the swath itself."),
        config_flag("--resolution",
             "Pixel size for --grid, in the CRS's units (metres for UTM, degrees for "
             "EPSG:4326)."),
        config_flag("--min-band-std",
             "Exclude a tile as 'constant' when every band's std (raw units) is at most this. "
             "Default: the profile's min_band_std."),
        config_flag("--dedup",
             "Mark exact and near duplicates across the whole archive (--no-dedup to skip)."),
        config_flag("--near-dup-radius",
             "Hamming radius (bits of the 64-bit perceptual hash) within which two tiles are "
             "near duplicates."),
        config_flag("--preview",
             "Write preview.png, a mosaic of sample tiles with excluded and duplicate tiles "
             "outlined."),
    ])  # fmt: skip


def ct_flags() -> list[Flag]:
    """Flags that only the CT build reads (--modality ct)."""
    return of_config(CTBuildConfig, [
        Flag("--spacing", float | list[float], 1.5,
             "Target voxel spacing in mm: one value (isotropic) or [x, y, z] (RAS axes)."),
        config_flag("--labels-csv",
             "CSV of pairs with columns image,label[,patient_id] (paths relative to the CSV); "
             "wins over the naming rule. image may be a DICOM series folder."),
        config_flag("--crop-foreground",
             "Crop each volume to the body (HU > --foreground-hu) plus --crop-margin-mm."),
        config_flag("--foreground-hu", "Body threshold in HU."),
        config_flag("--crop-margin-mm", "Margin of the crop in mm."),
        config_flag("--foreground-points",
             "Crop centres stored per case for foreground-biased sampling (label or body "
             "voxels)."),
        config_flag("--chunk-size", "Edge of the cubic zarr chunks."),
        config_flag("--codec", "Volume codec: lz4 (fast), zstd (small), none."),
    ])  # fmt: skip


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m geomed_mim.build_dataset",
        description=(
            "Slice an archive of satellite scenes into tiles and write a zarr store, a parquet "
            "manifest and a build record. With no arguments, builds the embedded demo archive "
            "into ./geomed_demo/. 'build_dataset stats --output OUT' recomputes the statistics "
            "of a built store (see 'build_dataset stats --help')."
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
    for flag in input_output_flags() + rs_flags() + rs_split_flags() + label_flags() + run_flags():
        flag.add_to(p)
    ct_group = p.add_argument_group("CT (--modality ct)")
    for flag in ct_flags():
        flag.add_to(ct_group)
    return p


# -- configs from parsed flags -------------------------------------------------------------------


def config_values(args: Any, config_class: type) -> dict[str, Any]:
    """The parsed flags a config class has a field for."""
    return {f.name: getattr(args, f.name) for f in fields(config_class) if f.name in args}


def ct_config(args: Any) -> CTBuildConfig:
    values = config_values(args, CTBuildConfig)
    values["input"] = resolve_input(args.input)
    values["labels"] = args.labels if args.labels is not None else "auto"
    values["classes"] = resolve_repo_path(args.classes)
    return CTBuildConfig(**values)


def rs_config(args: Any) -> RSBuildConfig:
    values = config_values(args, RSBuildConfig)
    values["input"] = resolve_input(args.input)
    if values.get("labels"):
        values["labels"] = resolve_input(values["labels"])
    values["classes"] = resolve_repo_path(values.get("classes"))
    return RSBuildConfig(**values)


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
    apply_tls_flags(args)
    return (ct_config(args) if args.modality == "ct" else rs_config(args)), is_demo


def apply_tls_flags(args: Any) -> None:
    """``--tls-ca-file/--tls-cert/--tls-key`` into dask's configuration, which the client of a
    ``tls://`` scheduler reads (:func:`data_pipelines.parallel.scheduler_security`)."""
    import dask

    given = {
        key: (flag, getattr(args, flag[2:].replace("-", "_"), None))
        for key, flag in parallel.TLS_CONFIG_KEYS.items()
    }
    for _key, (flag, path) in given.items():
        if path is None:
            continue
        if not str(args.scheduler).lower().startswith("tls://"):
            raise BuildConfigError(
                f"{flag}: only a --scheduler tls://HOST:PORT address uses it (got "
                f"--scheduler {args.scheduler})"
            )
        if not Path(path).is_file():
            raise BuildConfigError(f"{flag}: {path} is not a file; give the PEM file")
    dask.config.set({key: path for key, (_, path) in given.items() if path is not None})


# -- entry points ----------------------------------------------------------------------------------


def stats_main(argv: list[str]) -> int:
    """``build_dataset stats --output OUT``: recompute the statistics of a built store (band
    statistics of an RS store, HU statistics of a CT store)."""
    p = ArgumentParser(
        prog="python -m geomed_mim.build_dataset stats",
        description="Recompute the statistics of an existing store from its kept, non-duplicate "
        "samples and write them to the store: per-band mean, std, min, max, percentiles (RS), "
        "or the exact HU histogram's mean, std, min, max, percentiles (CT).",
    )
    p.add_argument("--output", type=str, required=True, help="The built dataset folder.")
    args = p.parse_args(argv)
    out = Path(args.output)
    if not manifest_path(out).is_file():
        raise BuildConfigError(f"--output: {out} holds no built dataset (no {MANIFEST_NAME})")
    is_ct = read_store_attrs(out).get(ATTR_MODALITY) == "ct"
    with UserErrors(output=out, system_exit=False) as errors, output_writes():
        # the statistics are written into the store
        attrs = recompute_ct_stats(out) if is_ct else recompute_store_stats(out)
    if errors.status is not None:
        return errors.status
    (print_hu_stats if is_ct else print_band_stats)(out, attrs)
    return EXIT_OK


def build_failure(report: BuildReport, strict: bool) -> NothingWrittenError | None:
    """Why a finished build failed (nothing written; with ``strict``, inputs set aside)."""
    why = report.why_nothing_written()
    if why is not None:
        return NothingWrittenError(f"nothing was written to {report.out_dir}: {why}")
    # localizers, scouts and derived copies are part of an ordinary DICOM export, not a fault
    ignored = [why for _, why in report.ignored if not is_export_extra(why)]
    if strict and (report.quarantined or ignored):
        return NothingWrittenError(
            f"--strict: {len(report.quarantined)} input(s) quarantined, "
            f"{len(ignored)} file(s) ignored (see build.json)"
        )
    return None


def staged_output(cfg: RSBuildConfig | CTBuildConfig) -> tuple[Any, str | None]:
    """For ``--output s3://...``: the config building into the local staging folder, and the
    URL to publish the finished build to (None for a local ``--output``)."""
    if not is_object_url(cfg.output):
        return cfg, None
    url = cfg.output.rstrip("/")
    try:
        object_filesystem(url)
    except ObjectStoreError as e:
        raise BuildConfigError(
            f"--output: {e}; install the fsspec filesystem for this scheme (s3fs for s3://) or "
            f"give a local folder"
        ) from None
    return replace(cfg, output=str(staging_dir(url))), url


def publish_build(out_dir: Path, url: str) -> None:
    """Upload a finished build to ``url`` and say so in one line."""
    try:
        published = publish(out_dir, url)
    except ObjectStoreError as e:  # the object store refused or failed the upload
        raise ObjectStoreError(f"{e}; re-run the same command to retry") from None
    print(
        f"  published: {url} ({published.uploaded} files, "
        f"{human_bytes(published.bytes_uploaded)} uploaded; {published.skipped} unchanged, "
        f"{published.deleted} stale removed)"
    )


def build_main(argv: list[str], on_part_committed: PartCommitted | None = None) -> int:
    """A build; the dask settings its flags make (--tls-*) hold for this build only."""
    import dask
    import distributed  # noqa: F401  (its config defaults must be in the snapshot restored below:
    # imported first inside the build, they would be dropped again with the build's own settings)

    saved = copy.deepcopy(dask.config.config)
    try:
        return run_build_command(argv, on_part_committed)
    finally:  # in place: dask's functions hold the dict itself as a default argument
        dask.config.config.clear()
        dask.config.config.update(saved)


def run_build_command(argv: list[str], on_part_committed: PartCommitted | None = None) -> int:
    with UserErrors(system_exit=False) as settings_errors:
        cfg, is_demo = parse_config(argv)
        cfg, publish_url = staged_output(cfg)
    if settings_errors.status is not None:
        return settings_errors.status
    # an output error names the folder being written; no build.json: committed parts stay
    with UserErrors(output=cfg.output, system_exit=False) as errors:
        if is_demo:
            print(
                f"No --input given: building the embedded demo archive into "
                f"{display_path(cfg.output)}/"
            )
        build = build_ct if isinstance(cfg, CTBuildConfig) else build_rs
        report = build(cfg, on_part_committed)
        if isinstance(cfg, CTBuildConfig):
            print(format_ct_summary(report, cfg))
        else:
            print(format_summary(report, cfg))
        failure = build_failure(report, cfg.strict)
        if publish_url is not None and report.samples_written > 0:
            publish_build(report.out_dir, publish_url)
        if failure is not None:
            raise failure
    return EXIT_OK if errors.status is None else errors.status


def kebab_negations(argv: list[str]) -> list[str]:
    """``--no_dedup`` (the older spelling) → ``--no-dedup``: both negate a yes/no flag."""
    return [f"--no-{a[5:]}" if a.startswith("--no_") else a for a in argv]


LIST_FLAGS = ("--tile-size",)  # flags that take several values: --tile-size 64 128 256


def gather_list_values(argv: list[str]) -> list[str]:
    """``--tile-size 64 128 256`` → ``--tile-size [64,128,256]`` (the parser's list syntax);
    one value stays as it is."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in LIST_FLAGS:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            values = argv[i + 1 : j]
            out.append(f"[{','.join(values)}]" if len(values) > 1 else "".join(values))
            if not values:
                out.pop()  # leave "--tile-size" alone: the parser reports the missing value
            i = j
        else:
            i += 1
    return out


def main(argv: list[str] | None = None, on_part_committed: PartCommitted | None = None) -> int:
    """The command; ``on_part_committed(n)`` is called after the n-th part a build commits."""
    argv = kebab_negations(list(sys.argv[1:] if argv is None else argv))
    argv = gather_list_values(argv)
    try:
        with UserErrors(system_exit=False) as errors:
            if argv and argv[0] == "stats":
                return stats_main(argv[1:])
            return build_main(argv, on_part_committed)
        return errors.status if errors.status is not None else EXIT_OK
    except KeyboardInterrupt:
        # finished parts are committed; a re-run skips them and builds the rest
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
