"""geomed_mim: masked-image-modeling foundation models for remote sensing and medical imaging.

Entry points::

    python -m geomed_mim.build_dataset   # raw archive -> zarr store + manifest (data_pipelines)
    python -m geomed_mim.pretrain fit    # MIM pretraining (geomed_mim.cli)
    python -m geomed_mim.export CKPT -o DIR   # encoder for timm / MONAI
    python -m geomed_mim.finetune_seg fit     # segmentation fine-tuning (geomed_mim.cli)
"""

import warnings

__version__ = "0.1.0"

# Older MONAI releases decorate with torch.jit.interface, which torch deprecates with a warning
# printed on import: in every command it would stand above the output (and above one-line
# errors). Only that message is silenced, before anything imports MONAI.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated")
