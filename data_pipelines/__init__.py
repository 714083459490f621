"""Raw archives in, a chunked training store out.

``rs`` slices multispectral scenes into tiles and ``ct`` resamples CT volumes; ``store`` owns
the store's layout and its reading and writing; ``build`` runs the per-input tasks (resume,
quarantine, summary) and ``parallel`` decides where they run (in-process or on
dask.distributed). ``classes``, ``errors``, ``config`` and ``dedup`` are shared by both
modalities. Nothing here imports ``geomed_mim``.
"""

__version__ = "0.1.0"
