"""Provider products as the agencies ship them, read into the RS pipeline's scene interface.

One module per provider: ``modis`` (MOD021KM/MYD021KM Level-1B HDF4 granules), ``safe``
(Sentinel-2 ``.SAFE`` L1C/L2A folders or zips), ``landsat`` (Landsat Level-1 and Collection 2
Level-2 scenes with their MTL). Each knows its products' file names (for discovery, without
opening anything) and gives the scene reader what the product itself says: band files or
arrays, the calibration coefficients, the cloud mask, and the acquisition facts that go into
the manifest (:class:`ProductInfo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProductInfo:
    """What a provider product says about itself, for calibration and the manifest."""

    kind: str  # one of data_pipelines.rs.profiles.PRODUCT_KINDS
    product_id: str  # granule / .SAFE / Landsat product name
    platform: str | None = None  # Terra, Aqua, Sentinel-2A, LANDSAT_8, ...
    acquired: str | None = None  # ISO 8601 UTC
    day_night: str | None = None  # MODIS: Day / Night / Mixed
    processing_baseline: str | None = None  # S2 baseline, Landsat collection, MODIS collection
    # kind-specific coefficients read from the product (see rs.toa), e.g. per-band offsets
    calibration: dict[str, Any] = field(default_factory=dict)

    def scene_columns(self) -> dict[str, Any]:
        """The manifest columns every tile of the scene shares."""
        return {
            "acquired": self.acquired,
            "platform": self.platform,
            "day_night": self.day_night,
            "product": self.product_id,
            "processing_baseline": self.processing_baseline,
        }

    def describe(self) -> dict[str, Any]:
        """For the ``tiles/<part>`` attributes."""
        return {"kind": self.kind, **self.scene_columns()}


EMPTY_SCENE_COLUMNS: dict[str, Any] = {
    "acquired": None,
    "platform": None,
    "day_night": None,
    "product": None,
    "processing_baseline": None,
    "cloud_cover": None,
}
