"""The stores a training command names, checked before anything is built from them.

A missing folder, a folder that is no store, a store of the other modality, an unlabeled store
for fine-tuning, or a store with no usable training sample would otherwise surface deep inside
a data module (and through jsonargparse as a page of union-type errors). Each is one
:class:`~geomed_mim.usage.UsageError` naming the flag and the fix.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_pipelines.store.layout import (
    ATTR_CLASSES,
    ATTR_MODALITY,
    BUILD_RECORD_NAME,
    COL_ARRAY,
    COL_EXCLUDED,
    COL_LABEL_ARRAY,
    manifest_path,
    store_path,
)
from data_pipelines.store.object_store import is_object_url
from data_pipelines.store.read import read_manifest, read_store_attrs, usable_rows
from data_pipelines.store.source import join, source_for
from geomed_mim.data.datamodules import missing_crop_size
from geomed_mim.usage import UsageError

BUILD_HINT = {
    "rs": "python -m geomed_mim.build_dataset --output {store}",
    "ct": "python -m geomed_mim.build_dataset --modality ct --input demo:ct --output {store}",
}
LABELED_HINT = {
    "rs": "python -m geomed_mim.build_dataset --config configs/data/demo_lulc.yaml",
    "ct": "python -m geomed_mim.build_dataset --config configs/data/demo_ct_organs.yaml",
}


def data_modality(class_path: str) -> str:
    """``"ct"`` for the CT data modules, else ``"rs"``."""
    return "ct" if class_path.rsplit(".", 1)[-1].startswith("CT") else "rs"


def named_stores(init_args: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(flag, store folders) of a data module's arguments: ``store`` or ``stores``."""
    if init_args.get("stores") is not None:
        return "--data.init_args.stores", [str(s) for s in init_args["stores"]]
    if init_args.get("store") is not None:
        return "--data.init_args.store", [str(init_args["store"])]
    return "--data.init_args.store", []


def store_attributes(store: str, flag: str, modality: str) -> dict[str, Any]:
    """The store's attributes; a usage error when ``store`` is not a built store."""
    meta = store_path(store) / "zarr.json"
    hint = BUILD_HINT[modality].format(store=store)
    if is_object_url(store):
        return object_store_attributes(store, flag, hint)
    if not Path(store).exists():
        raise UsageError(f"{flag} {store}: no such folder; build a store first ({hint})")
    if not Path(store).is_dir():
        raise UsageError(
            f"{flag} {store}: a file, not a store; give the folder build_dataset wrote ({hint})"
        )
    if not meta.is_file() or not manifest_path(store).is_file():
        raise UsageError(
            f"{flag} {store}: not a store (no store.zarr/ and manifest.parquet); give the "
            f"folder build_dataset wrote with --output ({hint})"
        )
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError) as e:
        raise UsageError(f"{flag} {store}: unreadable store.zarr/zarr.json ({e})") from None


def object_store_attributes(store: str, flag: str, hint: str) -> dict[str, Any]:
    """The attributes of a finished store on object storage (read in place, nothing staged)."""
    try:
        source = source_for(store)
        if not source.exists(join(store, BUILD_RECORD_NAME)):
            raise UsageError(
                f"{flag} {store}: no finished build there (no {BUILD_RECORD_NAME}); give the "
                f"--output URL of a build that completed ({hint})"
            )
        return read_store_attrs(store)
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(
            f"{flag} {store}: not a store (no store.zarr/zarr.json); give the --output URL of "
            f"a build ({hint})"
        ) from None
    except Exception as e:  # credentials, endpoint, bucket: what the object store answered
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(
            f"{flag} {store}: cannot read it ({first}); check the AWS_* settings "
            f"(AWS_ENDPOINT_URL for a custom endpoint)"
        ) from None


def check_store(
    store: str,
    flag: str,
    modality: str,
    labeled: bool,
    split: str | None = "train",
    include_duplicates: bool = False,
) -> dict[str, Any]:
    """One store of a training command: built, of ``modality``, labeled when ``labeled``, and
    with at least one usable sample in ``split`` (None: no sample needed); its attributes."""
    attrs = store_attributes(store, flag, modality)
    found = attrs.get(ATTR_MODALITY) or modality
    if found != modality:
        raise UsageError(
            f"{flag} {store}: a {found.upper()} store, but this config's data module reads "
            f"{modality.upper()} stores; use a {found.upper()} config or a {modality.upper()} store"
        )
    if labeled and not attrs.get(ATTR_CLASSES):
        raise UsageError(
            f"{flag} {store}: the store has no labels (no class table); fine-tuning needs a "
            f"store built with --labels and --classes ({LABELED_HINT[modality]})"
        )
    if split is None:
        return attrs
    require = (COL_ARRAY, COL_LABEL_ARRAY) if labeled else (COL_ARRAY,)
    manifest = read_manifest(store)
    if usable_rows(manifest, split, include_duplicates, require).num_rows == 0:
        raise UsageError(
            f"{flag} {store}: no usable {split} sample in the store "
            f"({why_nothing_usable(manifest)}); rebuild it from inputs that pass the filters"
        )
    return attrs


def why_nothing_usable(manifest: Any) -> str:
    """``N rows; excluded: reason ×n, ...``: what the manifest says about its samples."""
    rows = manifest.num_rows
    if rows == 0 or COL_EXCLUDED not in manifest.column_names:
        return f"{rows} manifest rows"
    reasons = Counter(r for r in manifest.column(COL_EXCLUDED).to_pylist() if r)
    if not reasons:
        return f"{rows} manifest rows, none excluded, none in the split"
    listed = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common(3))
    return f"{rows} manifest rows; excluded: {listed}"


def check_data_config(data: Mapping[str, Any], subcommand: str, labeled: bool) -> None:
    """The stores of the ``data`` config section (``class_path`` + ``init_args``) for
    ``subcommand``; training subcommands need a usable training sample."""
    class_path = str(data.get("class_path") or "")
    init_args = data.get("init_args") or {}
    modality = data_modality(class_path)
    flag, stores = named_stores(init_args)
    if not stores:
        raise UsageError(f"{flag}: no store given; pass the folder build_dataset wrote")
    split = "train" if subcommand == "fit" else None
    dups = bool(init_args.get("include_duplicates") or False)
    for store in stores:
        attrs = check_store(store, flag, modality, labeled, split, dups)
        if modality == "rs" and "crop_size" in init_args:
            problem = missing_crop_size(store, attrs, init_args.get("crop_size"))
            if problem:
                raise UsageError(problem)
