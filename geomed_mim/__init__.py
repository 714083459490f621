"""geomed_mim: masked-image-modeling foundation models for remote sensing and medical imaging.

Entry points::

    python -m geomed_mim.build_dataset   # raw archive -> zarr store + manifest (data_pipelines)
"""

__version__ = "0.1.0"
