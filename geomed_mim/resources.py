"""The demo archive shipped inside the package (real Sentinel-2, Landsat-8 and CT samples)."""

from __future__ import annotations

from pathlib import Path


def demo_data_dir() -> Path:
    """The embedded demo archive: a folder per demo (``sentinel2_l1c``, ``landsat8_l1``, ``ct``)."""
    return Path(__file__).resolve().parent / "demo_data"
