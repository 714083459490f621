"""Built datasets on object storage (``s3://bucket/prefix``): publishing a build, staging one in.

A build always runs in a local folder, where its commit records work as everywhere else
(atomic renames, one fragment per finished part, resume by re-running). With
``--output s3://...`` that folder is a staging folder (:func:`staging_dir`), and the finished
build is published to the URL in commit order:

1. ``build.json`` is removed from the URL first, so readers see the store as unfinished while
   it changes;
2. array data (chunks and shards), then the zarr metadata, then the part fragments, then the
   manifest and the other records; objects the build no longer has are deleted;
3. ``build.json`` last: its presence is the commit record of the whole store.

Every object is one PUT, which object stores apply atomically, so an interrupted publish leaves
whole objects and no ``build.json``; re-running the same command resumes the build (a no-op when
it had finished) and uploads only what is missing or changed in size.

Training reads a store on object storage in place, by range, with the same code as a local
store (:mod:`data_pipelines.store.source`): nothing is copied first. :func:`stage_in` makes a
local copy of a finished store for whoever wants one (files already there with the same size are
kept; each file lands by an atomic rename, so processes staging at once do not see half files).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from data_pipelines.errors import EXIT_OUTPUT_ERROR, UserError
from data_pipelines.store.layout import (
    BUILD_RECORD_NAME,
    LOCK_NAME,
    PARTS_DIRNAME,
    STORE_DIRNAME,
)

OBJECT_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")
STAGING_ENV = "GEOMED_STAGING_DIR"  # where --output URLs are built before publishing
STORE_CACHE_ENV = "GEOMED_STORE_CACHE"  # where stores on object storage are staged in


class ObjectStoreError(UserError, RuntimeError):
    """An object-store URL that cannot be written or read; the message is one line."""

    exit_status = EXIT_OUTPUT_ERROR  # the object store refused or failed a transfer


@dataclass
class PublishReport:
    url: str
    uploaded: int
    skipped: int
    deleted: int
    bytes_uploaded: int


def is_object_url(path: str | Path) -> bool:
    return urlparse(str(path)).scheme.lower() in OBJECT_SCHEMES


def _cache_root(env: str, sub: str) -> Path:
    configured = os.environ.get(env)
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geomed_mim" / sub


def _local_for(url: str, root: Path) -> Path:
    parsed = urlparse(url)
    return root / parsed.scheme / parsed.netloc / parsed.path.strip("/")


def staging_dir(url: str) -> Path:
    """The local folder a build for ``--output URL`` runs in (``$GEOMED_STAGING_DIR`` or
    ``~/.cache/geomed_mim/staging``, then scheme/bucket/prefix)."""
    return _local_for(url, _cache_root(STAGING_ENV, "staging"))


def object_filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    for name in ("botocore", "aiobotocore"):  # "found credentials in ...": INFO on every open
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)

    try:
        # a fresh filesystem: endpoint and credentials are read from the environment now
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except (ImportError, ValueError) as e:
        raise ObjectStoreError(f"{url}: {e}") from None
    return fs, root.rstrip("/")


def _commit_order(rel: str) -> int:
    """0 array data, 1 zarr metadata, 2 part fragments, 3 other records, 4 build.json."""
    if rel == BUILD_RECORD_NAME:
        return 4
    if rel.startswith(f"{STORE_DIRNAME}/"):
        return 1 if rel.endswith("zarr.json") else 0
    if rel.startswith(f"{PARTS_DIRNAME}/"):
        return 2
    return 3


def _local_files(local: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(local.rglob("*")):
        if p.is_file() and p.name != LOCK_NAME and not p.name.endswith(".tmp"):
            files[p.relative_to(local).as_posix()] = p
    return files


def _remote_sizes(fs: Any, root: str) -> dict[str, int]:
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    return {k[len(root) + 1 :]: int(v.get("size") or 0) for k, v in found.items()}


def publish(local: str | Path, url: str) -> PublishReport:
    """Upload the build in ``local`` to ``url`` in commit order (see the module docstring)."""
    local = Path(local)
    fs, root = object_filesystem(url)
    files = _local_files(local)
    try:
        remote = _remote_sizes(fs, root)
        if BUILD_RECORD_NAME in remote:
            fs.rm_file(f"{root}/{BUILD_RECORD_NAME}")  # unfinished from here on
        report = PublishReport(url, 0, 0, 0, 0)
        for rel in sorted(files, key=lambda r: (_commit_order(r), r)):
            if _commit_order(rel) == 4:
                stale = sorted(set(remote) - set(files) - {BUILD_RECORD_NAME})
                for gone in stale:  # objects of an earlier build this one does not have
                    fs.rm_file(f"{root}/{gone}")
                report.deleted = len(stale)
            size = files[rel].stat().st_size
            if _commit_order(rel) == 0 and remote.get(rel) == size:
                report.skipped += 1  # array data of a finished part does not change
                continue
            fs.put_file(str(files[rel]), f"{root}/{rel}")
            report.uploaded += 1
            report.bytes_uploaded += size
    except ObjectStoreError:
        raise
    except Exception as e:
        raise ObjectStoreError(f"--output: publishing to {url} failed: {_one_line(e)}") from None
    return report


def stage_in(url: str, cache: str | Path | None = None) -> Path:
    """A local copy of the finished store at ``url`` (only missing or changed files fetched)."""
    fs, root = object_filesystem(url)
    local = _local_for(url, Path(cache) if cache else _cache_root(STORE_CACHE_ENV, "stores"))
    try:
        remote = _remote_sizes(fs, root)
        if BUILD_RECORD_NAME not in remote:
            raise ObjectStoreError(
                f"store: {url} holds no finished build (no {BUILD_RECORD_NAME}); give the "
                f"--output URL of a build that completed"
            )
        for rel, size in sorted(remote.items(), key=lambda kv: (_commit_order(kv[0]), kv[0])):
            target = local / rel
            if _commit_order(rel) == 0 and target.is_file() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
            try:
                fs.get_file(f"{root}/{rel}", str(tmp))
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    except ObjectStoreError:
        raise
    except Exception as e:
        raise ObjectStoreError(f"store: reading {url} failed: {_one_line(e)}") from None
    return local


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
