"""STAC inputs: Items, ItemCollections (saved search results) and static Catalogs/Collections.

``--input`` may name a STAC JSON document (a local file or an ``http(s)://``/``s3://`` URL).
Every item becomes one scene whose band files are the item's assets, matched to the profile's
bands in this order (first rule that finds an asset wins, per band):

1. the asset's ``eo:bands`` name (``B04`` == ``B4``),
2. the asset key (``B04``, ``b04``),
3. the asset's ``eo:bands`` common name with its centre wavelength within
   :data:`WAVELENGTH_TOLERANCE_NM` of the profile band's wavelength (``red`` at 665 nm).

Cloud-optimized GeoTIFF assets are preferred over other encodings of the same band (JPEG 2000
copies). Per band ``raster:bands`` gives scale, offset and nodata; the item id, datetime,
platform and ``eo:cloud_cover`` go into the manifest. An item whose assets do not cover every
profile band becomes a scene that its task quarantines, with the bands it lacks as the reason.
Asset hrefs may be local paths or URLs; remote assets are read by range (``data_pipelines.remote``).

A document read from a URL is not trusted with this machine's files: its assets may only be
URLs of :func:`allowed_asset_schemes` (an asset that is a ``file:`` URL, an absolute local path
or a GDAL ``/vsi...`` path makes its item's scene quarantined with the reason, before anything
is opened), and its links may only lead to such URLs. A local document keeps local hrefs.
Catalog links are followed to :data:`MAX_CATALOG_DEPTH` levels; a link back to a catalog above
it (a cycle) or a deeper tree stops the build with one line.
"""

from __future__ import annotations

import importlib.util
import json
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from data_pipelines.errors import BuildConfigError, InputError
from data_pipelines.remote import (
    ALLOW_GLOBAL_HTTP_CREDENTIALS_ENV,
    RemoteError,
    global_http_credentials,
    http_host,
    is_remote,
    read_bytes,
)
from data_pipelines.rs.products import EMPTY_SCENE_COLUMNS, ProductInfo
from data_pipelines.rs.products.registry import own_grid_reader, register_product
from data_pipelines.rs.profiles import SensorProfile, normalize_band_token
from data_pipelines.rs.scene import Discovery, Scene, SceneError, SceneReader
from data_pipelines.rs.toa import AFFINE_KINDS, stac_raster_calibrator

STAC_PRODUCT = "stac_item"
WAVELENGTH_TOLERANCE_NM = 30.0
MAX_CATALOG_DEPTH = 16  # child-catalog levels below --input; real catalogs have a handful
# asset URL schemes of a document read from a URL; gs and az only with their client installed
ALWAYS_ALLOWED_SCHEMES = ("https", "http", "s3")
SCHEME_CLIENTS = {"gs": "gcsfs", "az": "adlfs"}
_FIX = "give a STAC Item, ItemCollection, Catalog or Collection JSON (a path or URL)"


@dataclass(frozen=True)
class StacFacts:
    """What one item says about its scene: manifest facts and per-band raster metadata."""

    item_id: str
    href: str  # where the item came from (its self link, or the document that held it)
    datetime: str | None = None
    platform: str | None = None
    cloud_cover: float | None = None
    processing_baseline: str | None = None
    # per profile band, from raster:bands (None where the asset does not say)
    scale: tuple[float | None, ...] = ()
    offset: tuple[float | None, ...] = ()
    nodata: tuple[float | None, ...] = ()
    problem: str | None = None  # why the item cannot be used (its task quarantines it)


# -- what a document read from a URL may point at ------------------------------------------------


def allowed_asset_schemes() -> tuple[str, ...]:
    """The URL schemes an asset (or link) of a document read from a URL may use."""
    extra = [s for s, client in SCHEME_CLIENTS.items() if importlib.util.find_spec(client)]
    return (*ALWAYS_ALLOWED_SCHEMES, *extra)


def untrusted_href(raw: str, absolute: str) -> str | None:
    """Why an href of a document read from a URL may not be opened (``raw`` as written,
    ``absolute`` resolved against the document), or None when it is a URL of an allowed scheme.
    GDAL opens ``/vsi...`` paths and ``file:`` URLs on this machine, so they never qualify."""
    text = raw.strip()
    if text.lower().startswith("/vsi") or absolute.lower().startswith("/vsi"):
        return "is a GDAL virtual file system path"
    scheme = urlparse(absolute).scheme.lower()
    if scheme == "file" or urlparse(text).scheme.lower() == "file":
        return "is a file: URL (a local file)"
    if text.startswith(("/", "\\")) or Path(text).is_absolute():
        return "is an absolute local path"
    allowed = allowed_asset_schemes()
    if scheme not in allowed:
        what = f"uses the URL scheme {scheme!r}" if scheme else "is a local path"
        return f"{what} (allowed: {', '.join(allowed)})"
    return None


# -- reading the document -------------------------------------------------------------------------


def looks_like_stac(spec: str) -> bool:
    """Whether ``--input`` names a STAC document: any remote URL, or a local ``.json`` file
    other than a Landsat ``_MTL.json`` (a JSON that is not STAC is then reported as such)."""
    if is_remote(spec):
        return True
    p = Path(spec)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return True  # reported as a broken STAC document by load_stac_items
    return not (isinstance(doc, dict) and "LANDSAT_METADATA_FILE" in doc)


def read_json(href: str) -> dict[str, Any]:
    """The JSON object at ``href`` (path or URL); InputError naming ``--input`` otherwise."""
    try:
        raw = read_bytes(href) if is_remote(href) else Path(href).read_bytes()
    except (RemoteError, OSError) as e:
        raise InputError(f"--input: {e}; check the URL or path") from None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InputError(f"--input: {href} is not JSON ({e}); {_FIX}") from None
    if not isinstance(doc, dict):
        raise InputError(f"--input: {href} is a JSON {type(doc).__name__}, not an object; {_FIX}")
    return doc


@dataclass(frozen=True)
class ReadItem:
    """A ``pystac.Item`` and whether the JSON it came from was read from a URL (then its
    assets must be URLs too: :func:`untrusted_href`)."""

    item: Any
    from_url: bool


def load_stac_items(href: str) -> list[Any]:
    """The ``pystac.Item`` objects of the document at ``href``, each with a self href so that
    relative asset hrefs resolve against where it was read from."""
    return [r.item for r in read_stac_items(href)]


def read_stac_items(href: str) -> list[ReadItem]:
    """:func:`load_stac_items`, each item with where its JSON was read from."""
    import pystac

    href = _absolute(href)
    doc = read_json(href)
    kind = doc.get("type")
    if kind == "Feature":
        return [ReadItem(_item(doc, href), is_remote(href))]
    if kind == "FeatureCollection":
        items = list(pystac.ItemCollection.from_dict(doc, preserve_dict=True).items)
        for item in items:
            _set_base(item, href)
        return [ReadItem(item, is_remote(href)) for item in items]
    if kind in ("Catalog", "Collection"):
        return walk_catalog(href, doc)
    raise InputError(f"--input: {href} is JSON of type {kind!r}, not STAC; {_FIX}")


def _item(doc: dict[str, Any], read_from: str) -> Any:
    import pystac

    item = pystac.Item.from_dict(doc, migrate=True)
    _set_base(item, read_from)
    return item


def _set_base(item: Any, read_from: str) -> None:
    """Relative asset hrefs resolve against the item's self href: where it was read from when
    it has none, and always for a document read from a URL (whose self link could otherwise
    name a local folder as the base)."""
    if is_remote(read_from) or item.get_self_href() is None:
        item.set_self_href(read_from)


def walk_catalog(root_href: str, root: dict[str, Any]) -> list[ReadItem]:
    """The items under a Catalog or Collection, following its ``child`` and ``item`` links
    breadth first. A link of a catalog read from a URL must be a URL of an allowed scheme; a
    link back to a catalog above it, or a tree deeper than :data:`MAX_CATALOG_DEPTH`, is an
    InputError (one line), never a RecursionError."""
    from pystac.utils import make_absolute_href

    items: list[ReadItem] = []
    seen = {root_href}
    queue: deque[tuple[str, dict[str, Any], tuple[str, ...]]] = deque(
        [(root_href, root, (root_href,))]
    )
    while queue:
        href, doc, above = queue.popleft()
        for link in doc.get("links") or []:
            rel = link.get("rel") if isinstance(link, dict) else None
            if rel not in ("child", "item"):
                continue
            raw = str(link.get("href") or "")
            target = make_absolute_href(raw, href)
            why = untrusted_href(raw, target) if is_remote(href) else None
            if why is not None:
                raise InputError(
                    f"--input: catalog {href} links to {raw!r}, which {why}; a catalog read "
                    f"from a URL may only link to URLs"
                )
            if target in above:
                raise InputError(
                    f"--input: catalog {href} links back to {target}, a catalog above it (a "
                    f"cycle); fix the catalog's child links"
                )
            if target in seen:  # reached again along another branch: once is enough
                continue
            seen.add(target)
            if rel == "item":
                items.append(ReadItem(_item(read_json(target), target), is_remote(target)))
                continue
            if len(above) > MAX_CATALOG_DEPTH:
                raise InputError(
                    f"--input: catalog {root_href} nests child catalogs deeper than "
                    f"{MAX_CATALOG_DEPTH} levels (at {target}); give a catalog further down "
                    f"as --input"
                )
            queue.append((target, read_json(target), (*above, target)))
    return items


def _absolute(href: str) -> str:
    return href if is_remote(href) else str(Path(href).resolve())


# -- matching assets to profile bands -------------------------------------------------------------


def _eo_bands(asset: Any) -> list[dict[str, Any]]:
    fields = asset.extra_fields
    bands = fields.get("eo:bands")
    if bands is None:  # STAC 1.1: a common "bands" list with eo:* fields
        bands = [
            {"name": b.get("name"), **{k[3:]: v for k, v in b.items() if k.startswith("eo:")}}
            for b in fields.get("bands", [])
        ]
    return bands or []


def _raster_band(asset: Any) -> dict[str, Any]:
    fields = asset.extra_fields
    bands = fields.get("raster:bands")
    if bands:
        return bands[0]
    bands = fields.get("bands") or [{}]  # STAC 1.1: raster:* fields on the band or the asset
    merged = {**fields, **bands[0]}
    return {k.removeprefix("raster:"): v for k, v in merged.items() if k.startswith("raster:")}


def _is_raster(key: str, asset: Any) -> bool:
    media = (asset.media_type or "").lower()
    suffix = Path(urlparse(asset.href).path).suffix.lower()
    if media:
        return "tiff" in media or "jp2" in media
    return suffix in (".tif", ".tiff", ".jp2")


def _preference(asset: Any) -> int:
    """Lower is better: a COG, then any GeoTIFF, then other rasters (JPEG 2000)."""
    media = (asset.media_type or "").lower()
    if "cloud-optimized" in media:
        return 0
    if "tiff" in media or asset.href.lower().endswith((".tif", ".tiff")):
        return 1
    return 2


def _single_band_assets(item: Any) -> list[tuple[str, Any]]:
    """The item's raster assets that hold one band, best encoding first."""
    found = [
        (k, a)
        for k, a in item.assets.items()
        if _is_raster(k, a) and len(_eo_bands(a)) <= 1 and "thumbnail" not in (a.roles or [])
    ]
    return sorted(found, key=lambda ka: _preference(ka[1]))


def _by_name(token: str, assets: list[tuple[str, Any]]) -> tuple[str, Any] | None:
    want = normalize_band_token(token)
    for key, asset in assets:
        names = [b.get("name") for b in _eo_bands(asset) if b.get("name")]
        if any(normalize_band_token(n) == want for n in names):
            return key, asset
    for key, asset in assets:
        if normalize_band_token(key) == want:
            return key, asset
    return None


def _by_wavelength(wavelength_nm: float | None, assets: list[tuple[str, Any]]):
    if wavelength_nm is None:
        return None
    # strictly closer wins, so among equally close assets the preferred encoding (listed
    # first) is kept
    best, best_gap = None, WAVELENGTH_TOLERANCE_NM + 1e-9
    for key, asset in assets:
        for b in _eo_bands(asset):
            centre = b.get("center_wavelength")
            if b.get("common_name") and centre is not None:
                gap = abs(float(centre) * 1000.0 - wavelength_nm)  # STAC: micrometres
                if gap < best_gap:
                    best, best_gap = (key, asset), gap
    return best


def match_assets(item: Any, profile: SensorProfile) -> tuple[dict[int, tuple[str, Any]], list[str]]:
    """Profile band index -> (asset key, asset), and the names of the bands left unmatched."""
    assets = _single_band_assets(item)
    matched: dict[int, tuple[str, Any]] = {}
    for i, band in enumerate(profile.bands):
        hit = _by_name(band.name, assets)
        if hit is not None:
            matched[i] = hit
    # by wavelength only among assets no band claimed by name: a missing B8A must not be
    # filled with the B08 asset 23 nm away
    claimed = {key for key, _ in matched.values()}
    free = [(k, a) for k, a in assets if k not in claimed]
    for i, band in enumerate(profile.bands):
        if i not in matched:
            hit = _by_wavelength(band.wavelength_nm, free)
            if hit is not None:
                matched[i] = hit
                free = [(k, a) for k, a in free if k != hit[0]]
    missing = [b.name for i, b in enumerate(profile.bands) if i not in matched]
    return matched, missing


def _qa_asset(item: Any, profile: SensorProfile) -> str | None:
    if not profile.qa_band:
        return None
    hit = _by_name(profile.qa_band, _single_band_assets(item))
    return hit[1].get_absolute_href() if hit else None


# -- items -> scenes -------------------------------------------------------------------------------


def _optional_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def item_facts(item: Any, matched: dict[int, tuple[str, Any]], n_bands: int) -> StacFacts:
    props = item.properties
    raster = [_raster_band(matched[i][1]) if i in matched else {} for i in range(n_bands)]
    return StacFacts(
        item_id=item.id,
        href=item.get_self_href() or item.id,
        datetime=item.datetime.isoformat().replace("+00:00", "Z") if item.datetime else None,
        platform=props.get("platform"),
        cloud_cover=_optional_float(props.get("eo:cloud_cover")),
        processing_baseline=props.get("s2:processing_baseline")
        or props.get("landsat:collection_number"),
        scale=tuple(_optional_float(r.get("scale")) for r in raster),
        offset=tuple(_optional_float(r.get("offset")) for r in raster),
        nodata=tuple(_optional_float(r.get("nodata")) for r in raster),
    )


def untrusted_assets(item: Any, keys: list[str]) -> str | None:
    """Why the assets ``keys`` of an item read from a URL may not be opened, or None."""
    for key in keys:
        asset = item.assets[key]
        why = untrusted_href(asset.href, asset.get_absolute_href() or asset.href)
        if why is not None:
            return (
                f"STAC item {item.id} was read from a URL, but its asset {key} ({asset.href}) "
                f"{why}; such a catalog may only name asset URLs"
            )
    return None


def item_scene(item: Any, profile: SensorProfile, from_url: bool = False) -> tuple[Scene, int]:
    """The scene of one item, and how many profile bands its assets matched. ``from_url``: the
    item was read from a URL, so a scene with an asset that is no allowed URL is quarantined
    (its task opens nothing)."""
    matched, missing = match_assets(item, profile)
    facts = item_facts(item, matched, len(profile.bands))
    if from_url:
        keys = [key for key, _ in matched.values()]
        qa = _by_name(profile.qa_band, _single_band_assets(item)) if profile.qa_band else None
        untrusted = untrusted_assets(item, keys + ([qa[0]] if qa else []))
        if untrusted is not None:
            facts = replace(facts, problem=untrusted)
    files = tuple(
        (profile.bands[i].name, matched[i][1].get_absolute_href()) for i in sorted(matched)
    )
    if missing and facts.problem is None:
        keys = ", ".join(sorted(item.assets)) or "none"
        facts = replace(
            facts,
            problem=f"STAC item {item.id} has no asset for band(s) {', '.join(missing)} of "
            f"profile {profile.name} (assets: {keys})",
        )
    scene = Scene(
        scene_id=item.id,
        files=files,
        qa_file=_qa_asset(item, profile),
        product=STAC_PRODUCT,
        origin=facts.href,
        stac=facts,
    )
    return scene, len(matched)


def discover_stac(href: str, profile: SensorProfile) -> Discovery:
    """One scene per item of the STAC document at ``href``; InputError when no item has an
    asset for any profile band (the wrong ``--profile`` or not a raster catalog)."""
    read = read_stac_items(href)
    items = [r.item for r in read]
    if not items:
        raise InputError(f"--input: {href} holds no STAC items; {_FIX} with items")
    scenes, best = [], 0
    hrefs = [item.get_self_href() for item in items]
    for r, item_href in zip(read, hrefs, strict=True):
        item = r.item
        scene, n_matched = item_scene(item, profile, from_url=r.from_url)
        if hrefs.count(item_href) > 1:  # items of one ItemCollection: name the item too
            scene = replace(scene, origin=f"{item_href}#{item.id}")
        scenes.append(scene)
        best = max(best, n_matched)
    if best == 0:
        keys = sorted({k for item in items for k in item.assets})
        raise InputError(
            f"--input: no asset of the {len(items)} STAC item(s) matches a band of profile "
            f"{profile.name} ({', '.join(profile.band_names)}) by eo:bands name, asset key or "
            f"common name (assets: {', '.join(keys[:20])}); choose the --profile of this "
            f"collection"
        )
    check_credential_scope(href, scenes)
    ids = [s.scene_id for s in scenes]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"--input: STAC item id {dup!r} appears twice; give each item once")
    return Discovery(scenes=sorted(scenes, key=lambda s: s.scene_id))


def check_credential_scope(href: str, scenes: list[Scene]) -> None:
    """Refuse to send credentials set for every host (``GDAL_HTTP_HEADERS`` ...) to hosts that a
    catalog read from a URL chose: BuildConfigError naming the option, the hosts and the fix."""
    if not is_remote(href):
        return  # a local document: the user chose its hosts
    options = global_http_credentials()
    if not options:
        return
    own = http_host(href)
    hosts = sorted(
        {h for s in scenes for _, f in s.files if (h := http_host(f)) is not None and h != own}
    )
    if hosts:
        shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
        raise BuildConfigError(
            f"{options[0]}: it is set for every host, and the catalog {href} names assets on "
            f"{shown}, which would receive it; give credentials per host in a GDAL "
            f"configuration file ([credentials] with path=/vsicurl/https://HOST/, see "
            f"docs/cloud.md) or set {ALLOW_GLOBAL_HTTP_CREDENTIALS_ENV}=1 to send them anyway"
        )


# -- reading an item's scene -------------------------------------------------------------------


class StacSceneReader(SceneReader):
    """A STAC item's assets as a one-file-per-band scene, with the item's facts as the product
    (calibration from ``raster:bands``, manifest columns from the item's properties)."""

    def _open(self) -> None:
        facts: StacFacts = self.scene.stac
        if facts.problem:
            raise SceneError(facts.problem)
        nodata = {v for v in facts.nodata if v is not None}
        if len(nodata) > 1:
            raise SceneError(
                f"STAC item {facts.item_id}: raster:bands nodata differs between bands "
                f"({sorted(nodata)}); one nodata value per scene is needed"
            )
        if nodata:
            self.profile = replace(self.profile, nodata=nodata.pop())
        super()._open()
        self.product = ProductInfo(
            kind=STAC_PRODUCT,
            product_id=facts.item_id,
            platform=facts.platform,
            acquired=facts.datetime,
            processing_baseline=facts.processing_baseline,
            calibration=self._raster_calibration(facts),
        )

    @staticmethod
    def _raster_calibration(facts: StacFacts) -> dict[str, Any]:
        """Scale and offset per band when ``raster:bands`` gives a scale for every band."""
        if not facts.scale or any(s is None for s in facts.scale):
            return {}
        return {
            "scale": list(facts.scale),
            "offset": [o if o is not None else 0.0 for o in facts.offset],
            "source": "STAC raster:bands",
        }

    def scene_columns(self) -> dict[str, Any]:
        columns = dict(EMPTY_SCENE_COLUMNS)
        if self.product is not None:
            columns.update(self.product.scene_columns())
        columns["cloud_cover"] = self.scene.stac.cloud_cover
        return columns


register_product(
    STAC_PRODUCT,
    "STAC Items/ItemCollections whose assets are local files or http/s3 COGs",
    own_grid_reader(StacSceneReader),
    # raster:bands scale/offset stand in for the profile's affine calibration only
    calibrator=lambda profile, product: (
        stac_raster_calibrator(profile, product)
        if product.calibration and profile.calibration.get("kind") in AFFINE_KINDS
        else None
    ),
)
