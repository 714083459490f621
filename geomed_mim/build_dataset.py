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
from data_pipelines.config import BuildConfig, field_help
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


@dataclass(frozen=True)
class Flag:
    """One command-line option: ``--name`` with its type, default and help."""

    name: str
    type: Any
    default: Any
    help: str

    @property
    def field_name(self) -> str:
        return self.name[2:].replace("-", "_")

    def add_to(self, parser: ArgumentParser | Any) -> None:
        if self.type is bool:  # --flag / --no-flag
            action = ActionYesNo(no_prefix="no-")
            parser.add_argument(self.name, action=action, default=self.default, help=self.help)
        else:
            parser.add_argument(self.name, type=self.type, default=self.default, help=self.help)


# Where the command line departs from the config fields: what to read and write is optional on
# the command line (none: the demo), labels mean different defaults per modality, the worker
# count follows the machine, and --spacing also takes one number.
CLI_TYPES: dict[str, tuple[Any, Any]] = {
    "input": (str | list[str] | None, None),
    "output": (str | None, None),
    "labels": (str | None, None),
    "workers": (int, parallel.default_workers()),
    "spacing": (float | list[float], list(CTBuildConfig.spacing)),
}
TLS_FLAG_NAMES = tuple(parallel.TLS_CONFIG_KEYS.values())
TLS_FLAGS = [
    Flag("--tls-ca-file", str | None, None,
         "--scheduler tls://...: the CA certificate (PEM) the scheduler's certificate is signed "
         "by (dask config: distributed.comm.tls.ca-file)."),
    Flag("--tls-cert", str | None, None,
         "--scheduler tls://...: this client's certificate (PEM; dask config: "
         "distributed.comm.tls.client.cert)."),
    Flag("--tls-key", str | None, None,
         "--scheduler tls://...: this client's private key (PEM; dask config: "
         "distributed.comm.tls.client.key)."),
]  # fmt: skip


def field_flags(config_class: type, skip: tuple[type, ...] = ()) -> list[Flag]:
    """A flag per field of ``config_class`` (those of the classes in ``skip`` aside), typed and
    defaulted as the field is, its docstring the help: each default is written once."""
    helps = field_help(config_class)
    hints = get_type_hints(config_class)
    skipped = {f.name for cls in skip for f in fields(cls)}
    choices = {  # the lists a help text names by placeholder
        "{profiles}": ", ".join(available_profiles()),
        "{resampling}": ", ".join(RESAMPLING_CHOICES),
    }
    flags = []
    for field in fields(config_class):
        if field.name in skipped:
            continue
        type_, default = CLI_TYPES.get(field.name, (hints[field.name], field.default))
        name = "--" + field.name.replace("_", "-")
        help_text = helps[field.name]
        for placeholder, names in choices.items():
            help_text = help_text.replace(placeholder, names)
        flags.append(Flag(name, type_, default, help_text))
    return flags


def labels_flag() -> Flag:
    """--labels: one flag, the RS and the CT meaning."""
    rs_help, ct_help = field_help(RSBuildConfig)["labels"], field_help(CTBuildConfig)["labels"]
    return Flag("--labels", *CLI_TYPES["labels"], f"RS: {rs_help} CT: {ct_help}")


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
    shared = field_flags(BuildConfig) + TLS_FLAGS + [labels_flag()]
    rs_only = [f for f in field_flags(RSBuildConfig, skip=(BuildConfig,)) if f.name != "--labels"]
    for flag in shared + rs_only:
        flag.add_to(p)
    ct_group = p.add_argument_group("CT (--modality ct)")
    for flag in field_flags(CTBuildConfig, skip=(BuildConfig,)):
        if flag.name != "--labels":
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
    tls_files = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in TLS_FLAG_NAMES}
    parallel.use_tls_files(args.scheduler, tls_files)
    return (ct_config(args) if args.modality == "ct" else rs_config(args)), is_demo


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
