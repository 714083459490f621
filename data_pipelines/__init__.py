"""Raw archives in, a chunked training store out.

``rs`` slices multispectral scenes into tiles, ``store`` writes the zarr store and manifest,
``build`` runs the per-input tasks (resume, quarantine, summary) and ``parallel`` decides where
they run (in-process or on dask.distributed).
"""

__version__ = "0.1.0"
