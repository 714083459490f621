"""Find the scenes of an archive: single multi-band rasters and one-file-per-band groups.

A file whose stem ends in a band token of the profile (``l8_B4.tif``, ``..._B8A.tif``) joins
the multi-file scene of its folder and prefix; any other raster is a scene of its own. Files
are only listed here, never opened: a bad file must fail inside its task, where it is
quarantined, not stop discovery.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines.errors import InputError
from data_pipelines.rs.profiles import SensorProfile

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
_BAND_FILE = re.compile(r"^(?P<prefix>.+?)[_.-](?P<band>B\d{1,2}A?|BQA|QA_PIXEL)$", re.IGNORECASE)


@dataclass(frozen=True)
class Scene:
    """One scene: an id, its raster files, and sidecar metadata files (e.g. Landsat MTL)."""

    scene_id: str
    # (band token or "" for a multi-band file, path) in discovery order
    files: tuple[tuple[str, str], ...]
    qa_file: str | None = None
    metadata_files: tuple[str, ...] = ()

    @property
    def multi_file(self) -> bool:
        return any(token for token, _ in self.files)

    @property
    def paths(self) -> list[str]:
        return [p for _, p in self.files] + ([self.qa_file] if self.qa_file else [])


@dataclass
class Discovery:
    scenes: list[Scene]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def list_raster_files(input_spec: str | list[str]) -> tuple[list[Path], Path]:
    """Files named by a folder (recursive), a glob, or a list; and the root ids are relative to."""
    specs = [input_spec] if isinstance(input_spec, str | Path) else list(input_spec)
    files: list[Path] = []
    roots: list[Path] = []
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            roots.append(p)
            files += [f for f in sorted(p.rglob("*")) if f.suffix.lower() in RASTER_SUFFIXES]
        elif p.is_file():
            roots.append(p.parent)
            files.append(p)
        elif glob.has_magic(spec):
            matched = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            roots.append(Path(_glob_root(spec)))
            files += [f for f in matched if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES]
        else:
            raise InputError(
                f"--input: {spec!r} does not exist; give a folder of rasters, a glob such as "
                f"'scenes/**/*.tif', or a raster file"
            )
    if not files:
        raise InputError(
            f"--input: no raster files ({', '.join(RASTER_SUFFIXES)}) found in {specs}; "
            f"check the path or glob"
        )
    root = Path(_common_root(roots))
    return sorted(set(files)), root


def _glob_root(spec: str) -> str:
    parts = []
    for part in Path(spec).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def _common_root(roots: list[Path]) -> str:
    import os

    return os.path.commonpath([str(r.resolve()) for r in roots])


def _scene_id(path_without_suffix: Path, root: Path) -> str:
    try:
        rel = path_without_suffix.resolve().relative_to(root)
    except ValueError:
        rel = Path(path_without_suffix.name)
    return "/".join(rel.parts)


def discover_scenes(input_spec: str | list[str], profile: SensorProfile) -> Discovery:
    """Group the files of ``input_spec`` into scenes for ``profile``; sorted by scene id."""
    files, root = list_raster_files(input_spec)
    groups: dict[tuple[Path, str], dict[str, str]] = {}
    qa: dict[tuple[Path, str], str] = {}
    singles: list[Path] = []
    ignored: list[tuple[str, str]] = []
    for f in files:
        m = _BAND_FILE.match(f.stem)
        if m is None:
            singles.append(f)
            continue
        key = (f.parent, m.group("prefix"))
        token = m.group("band")
        if profile.is_qa_token(token):
            qa[key] = str(f)
        elif profile.band_index(token) is not None:
            groups.setdefault(key, {})[token] = str(f)
        else:
            ignored.append((str(f), f"band {token} is not in profile {profile.name}"))
    scenes: list[Scene] = []
    for (folder, prefix), band_files in groups.items():
        ordered = sorted(band_files.items(), key=lambda kv: profile.band_index(kv[0]) or 0)
        meta = ()
        if profile.metadata_file:
            meta = tuple(sorted(str(m) for m in folder.glob(profile.metadata_file)))
        scenes.append(
            Scene(
                scene_id=_scene_id(folder / prefix, root),
                files=tuple(ordered),
                qa_file=qa.get((folder, prefix)),
                metadata_files=meta,
            )
        )
    for f in singles:
        meta = ()
        if profile.metadata_file:
            meta = tuple(sorted(str(m) for m in f.parent.glob(profile.metadata_file)))
        scenes.append(
            Scene(
                scene_id=_scene_id(f.with_suffix(""), root),
                files=(("", str(f)),),
                metadata_files=meta,
            )
        )
    scenes.sort(key=lambda s: s.scene_id)
    return Discovery(scenes=scenes, ignored=ignored)
