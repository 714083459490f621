"""Provider products register themselves here, as models do in ``geomed_mim.models.registry``.

A product module calls :func:`register_product` at import with the product kinds it reads (a
kind prefix: ``"sentinel2"`` covers ``sentinel2_l1c`` and ``sentinel2_l2a``), the function
that opens such a scene and, when the product carries its own calibration coefficients, the
function that makes its calibrator (``rs.toa.make_calibrator`` asks it first). The registry
knows no product; ``rs.reader`` imports every product module and opens a scene through
:func:`reader_for`, so a new product is one new module (and one import line there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipelines.rs.products import ProductInfo
from data_pipelines.rs.profiles import SensorProfile
from data_pipelines.rs.scene import Discovery, Listing, Scene, SceneReader

# (scene, profile, resampling, swath grid (CRS, resolution) or None) -> an unopened reader with
# SceneReader's interface (MODIS's swath reader has it without subclassing)
ReaderFactory = Callable[[Scene, SensorProfile, str, "tuple[str, float] | None"], Any]
# (profile as it applies to the product, what the reader found) -> an rs.toa Calibrator, or
# None when this profile's calibration does not use the product's coefficients
CalibratorFactory = Callable[[SensorProfile, ProductInfo], Any]
# (what --input lists, profile, the discovery to add scenes and ignored files to) -> the files
# the product's file-name rules claim (no other rule sees them)
SceneFinder = Callable[[Listing, SensorProfile, Discovery], "set[Path]"]


@dataclass(frozen=True)
class ProductEntry:
    name: str  # the kind, or the prefix of the kinds, this entry reads
    description: str
    open_reader: ReaderFactory
    calibrator: CalibratorFactory | None = None
    find_scenes: SceneFinder | None = None

    def reads(self, kind: str) -> bool:
        return kind == self.name or kind.startswith(f"{self.name}_")


_PRODUCTS: dict[str, ProductEntry] = {}


def register_product(
    name: str,
    description: str,
    open_reader: ReaderFactory,
    calibrator: CalibratorFactory | None = None,
    find_scenes: SceneFinder | None = None,
) -> None:
    """Register the reader (and calibrator, and file-name rules) of the kinds ``name`` names."""
    if name in _PRODUCTS and _PRODUCTS[name].open_reader is not open_reader:
        raise ValueError(f"product {name!r} is registered twice")
    _PRODUCTS[name] = ProductEntry(name, description, open_reader, calibrator, find_scenes)


def calibrator_when(kind: str, make: CalibratorFactory) -> CalibratorFactory:
    """The factory that calls ``make`` for a profile whose ``calibration.kind`` is ``kind``, and
    gives None (the product's coefficients unused) for any other profile."""

    def calibrator(profile: SensorProfile, product: ProductInfo) -> Any:
        return make(profile, product) if profile.calibration.get("kind") == kind else None

    return calibrator


def own_grid_reader(reader: Callable[[Scene, SensorProfile, str], Any]) -> ReaderFactory:
    """The factory of a reader that reads a scene on its own grid: the swath grid, which only
    MODIS's swath reader resamples to, is not passed on."""

    def open_reader(
        scene: Scene, profile: SensorProfile, resampling: str, swath_grid: tuple[str, float] | None
    ) -> Any:
        return reader(scene, profile, resampling)

    return open_reader


def list_products() -> list[str]:
    """The registered product names, sorted."""
    return sorted(_PRODUCTS)


def scene_finders() -> list[SceneFinder]:
    """The registered file-name rules, in product-name order (their claims are disjoint)."""
    return [_PRODUCTS[n].find_scenes for n in sorted(_PRODUCTS) if _PRODUCTS[n].find_scenes]


def product_entry(kind: str) -> ProductEntry | None:
    """The entry that reads scenes of ``kind`` (the longest matching name), or None."""
    matches = [e for e in _PRODUCTS.values() if kind and e.reads(kind)]
    return max(matches, key=lambda e: len(e.name)) if matches else None


def reader_for(
    scene: Scene,
    profile: SensorProfile,
    resampling: str = "bilinear",
    swath_grid: tuple[str, float] | None = None,
) -> Any:
    """The registered reader of ``scene``'s product; plain rasters (no product) get the base
    reader. A product kind no module registered is a ``ValueError`` (a programming error).

    ``swath_grid`` (CRS, resolution) resamples swath products (MODIS L1B) to a map grid;
    without it they are read in swath geometry.
    """
    if not scene.product:
        return SceneReader(scene, profile, resampling)
    entry = product_entry(scene.product)
    if entry is None:
        raise ValueError(
            f"no reader registered for product {scene.product!r} (known: {list_products()})"
        )
    return entry.open_reader(scene, profile, resampling, swath_grid)
