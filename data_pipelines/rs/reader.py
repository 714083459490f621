"""The one door to raw scenes: every input the build reads, opened as scenes, for the build,
its preview and whole-scene prediction alike.

Importing this module imports every product module, and each registers its reader
(``rs.products.registry``): GeoTIFF/COG stacks and band files (the base reader of
``rs.scene``), Sentinel-2 ``.SAFE``, Landsat, MODIS L1B granules and STAC items.
:func:`open_scene_reader` picks a scene's reader from the registry. ``Scene``, ``Grid``,
``SceneError`` and ``SceneReader`` live in ``rs.scene`` and are re-exported here.
"""

from __future__ import annotations

# imported for their registration: each product module registers its reader
from data_pipelines.rs import stac  # noqa: F401
from data_pipelines.rs.products import landsat, modis, safe  # noqa: F401

# the registry's lookup, opened through this module so that every product is registered first
from data_pipelines.rs.products.registry import reader_for as open_scene_reader
from data_pipelines.rs.scene import Grid, Scene, SceneError, SceneReader

__all__ = ["Grid", "Scene", "SceneError", "SceneReader", "open_scene_reader"]
