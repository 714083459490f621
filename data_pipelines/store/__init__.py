"""The store: the contract between ``data_pipelines`` (which writes built datasets) and
``geomed_mim`` (which trains from them).

- :mod:`~data_pipelines.store.layout`: every folder, file, array group, attribute key and
  manifest column of a built dataset, and the paths built from them.
- :mod:`~data_pipelines.store.write`: atomic files, per-part arrays (each task owns whole
  shards), fragments (a part's commit record) and the manifest.
- :mod:`~data_pipelines.store.read`: attributes, the manifest and its filter (the samples
  training may use), and arrays opened lazily in each process.

The atomic writes are used beyond stores too (checkpoints, exports), so they are also
importable from here.
"""

from data_pipelines.store.write import atomic_write_bytes, atomic_write_json

__all__ = ["atomic_write_bytes", "atomic_write_json"]
