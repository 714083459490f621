"""geomed_mim: masked-image-modeling foundation models for remote sensing and medical imaging.

Entry points::

    python -m geomed_mim.build_dataset   # raw archive -> zarr store + manifest (data_pipelines)
    python -m geomed_mim.pretrain fit    # MIM pretraining (geomed_mim.cli)
    python -m geomed_mim.export CKPT -o DIR   # encoder for timm / MONAI
    python -m geomed_mim.finetune_seg fit     # segmentation fine-tuning (geomed_mim.cli)
"""

__version__ = "0.1.0"
