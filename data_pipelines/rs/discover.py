"""Find the scenes of an archive: provider products, single multi-band rasters and
one-file-per-band groups.

Provider products are recognised by their names, by the file-name rules each product module
registers (``rs.products.registry``; the names themselves in ``rs.products.names``): MODIS
``MOD021KM``/``MYD021KM`` granules (with a ``MOD03``/``MYD03`` of the same granule beside them
as geolocation), Sentinel-2 ``.SAFE`` folders and zips (everything inside belongs to the
product), Landsat Collection 1/2 files grouped by product id (bands, ``QA_PIXEL``/``BQA``,
``_MTL.txt``/``_MTL.json``; the product's other sidecars are skipped). A product the profile
does not read is listed as ignored, naming the profile that reads it.

Any other raster: a file whose stem ends in a band token of the profile (``l8_B4.tif``,
``..._B8A.tif``) joins the multi-file scene of its folder and prefix; any other raster is a
scene of its own. Files are only listed here, never opened: a bad file must fail inside its
task, where it is quarantined, not stop discovery.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from data_pipelines.errors import InputError

# imported for their registration: each product module registers its file-name rules
from data_pipelines.rs.products import landsat as _landsat  # noqa: F401
from data_pipelines.rs.products import modis as _modis  # noqa: F401
from data_pipelines.rs.products import safe as _safe  # noqa: F401
from data_pipelines.rs.products.registry import scene_finders
from data_pipelines.rs.profiles import SensorProfile
from data_pipelines.rs.scene import Discovery, Listing, Scene, scene_id_for
from data_pipelines.rs.stac import discover_stac, looks_like_stac

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
# product containers and sidecars: MODIS HDF4, .SAFE zips, Landsat MTL text/JSON
PRODUCT_SUFFIXES = (".hdf", ".zip", ".txt", ".json")
_BAND_FILE = re.compile(r"^(?P<prefix>.+?)[_.-](?P<band>B\d{1,2}A?|BQA|QA_PIXEL)$", re.IGNORECASE)


def _is_safe_dir(p: Path) -> bool:
    return p.is_dir() and p.name.upper().endswith(".SAFE")


def _wanted(f: Path) -> bool:
    return f.is_file() and f.suffix.lower() in RASTER_SUFFIXES + PRODUCT_SUFFIXES


def _list_folder(folder: Path, files: list[Path], safe_dirs: list[Path]) -> None:
    if _is_safe_dir(folder):
        safe_dirs.append(folder)
        return
    found = sorted(folder.rglob("*"))
    safes = [d for d in found if _is_safe_dir(d)]
    safe_dirs += safes
    for f in found:
        if _wanted(f) and not any(d in f.parents for d in safes):
            files.append(f)


def list_inputs(input_spec: str | list[str]) -> Listing:
    """Files named by a folder (recursive), a glob, or a list; .SAFE folders among them; and
    the root scene ids are relative to."""
    specs = [input_spec] if isinstance(input_spec, str | Path) else list(input_spec)
    files: list[Path] = []
    safe_dirs: list[Path] = []
    roots: list[Path] = []
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            roots.append(p.parent if _is_safe_dir(p) else p)
            _list_folder(p, files, safe_dirs)
        elif p.is_file():
            roots.append(p.parent)
            files.append(p)
        elif glob.has_magic(spec):
            matched = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            roots.append(Path(_glob_root(spec)))
            safe_dirs += [m for m in matched if _is_safe_dir(m)]
            files += [f for f in matched if _wanted(f)]
        else:
            raise InputError(
                f"--input: {spec!r} does not exist; give a folder of rasters or products, a glob "
                f"such as 'scenes/**/*.tif', or a raster or product file"
            )
    if not files and not safe_dirs:
        raise InputError(
            f"--input: no raster files ({', '.join(RASTER_SUFFIXES)}) or products (.hdf, .SAFE, "
            f".zip) found in {specs}; check the path or glob"
        )
    root = Path(_common_root(roots))
    return Listing(sorted(set(files)), sorted(set(safe_dirs)), root)


def _glob_root(spec: str) -> str:
    parts = []
    for part in Path(spec).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def _common_root(roots: list[Path]) -> str:
    return os.path.commonpath([str(r.resolve()) for r in roots])


def discover_scenes(input_spec: str | list[str], profile: SensorProfile) -> Discovery:
    """Group the files of ``input_spec`` into scenes for ``profile``; sorted by scene id.

    A STAC document (a URL, or a local Item/ItemCollection/Catalog JSON) lists its scenes itself
    (``rs.stac``)."""
    specs = [input_spec] if isinstance(input_spec, str | Path) else list(input_spec)
    if len(specs) == 1 and looks_like_stac(str(specs[0])):
        return discover_stac(str(specs[0]), profile)
    if any(looks_like_stac(str(s)) for s in specs):
        raise InputError(
            "--input: a STAC document or URL must be the only --input; build each catalog "
            "on its own or merge the items into one ItemCollection"
        )
    listing = list_inputs(input_spec)
    found = Discovery(scenes=[])
    files, root = listing.files, listing.root
    claimed: set[Path] = set()
    for find in scene_finders():  # each product's file-name rules claim their files
        claimed |= find(listing, profile, found)
    rasters = [f for f in files if f.suffix.lower() in RASTER_SUFFIXES and f not in claimed]
    for f in files:
        if f.suffix.lower() in (".hdf", ".zip") and f not in claimed:
            found.ignored.append((str(f), "not a recognised provider product name"))
    raster_scenes(rasters, root, profile, found)
    found.scenes.sort(key=lambda s: s.scene_id)
    return found


def raster_scenes(files: list[Path], root: Path, profile: SensorProfile, found: Discovery) -> None:
    """Plain rasters: one-file-per-band groups by folder and prefix, other files alone."""
    groups: dict[tuple[Path, str], dict[str, str]] = {}
    qa: dict[tuple[Path, str], str] = {}
    singles: list[Path] = []
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
            found.ignored.append((str(f), f"band {token} is not in profile {profile.name}"))
    # a one-file-per-band scene with an MTL under a Landsat profile is a Landsat product whose
    # collection the reader tells from the MTL (pre-collection names carry none)
    landsat = profile.reads_product("landsat_pre_collection_l1")
    for (folder, prefix), band_files in groups.items():
        ordered = sorted(band_files.items(), key=lambda kv: profile.band_index(kv[0]) or 0)
        meta = _metadata_files(folder, profile)
        found.scenes.append(
            Scene(
                scene_id=scene_id_for(folder / prefix, root),
                files=tuple(ordered),
                qa_file=qa.get((folder, prefix)),
                metadata_files=meta,
                product="landsat_pre_collection_l1" if landsat else "",
            )
        )
    for f in singles:
        found.scenes.append(
            Scene(
                scene_id=scene_id_for(f.with_suffix(""), root),
                files=(("", str(f)),),
                metadata_files=_metadata_files(f.parent, profile),
            )
        )


def _metadata_files(folder: Path, profile: SensorProfile) -> tuple[str, ...]:
    if not profile.metadata_file:
        return ()
    return tuple(sorted(str(m) for m in folder.glob(profile.metadata_file)))
