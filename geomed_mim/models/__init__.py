"""Models: ViT encoder, MAE, SelectiveMAE, Hi-End-MAE, embeddings, the timm-style registry."""

from geomed_mim.models.hi_end import HiEndMAE
from geomed_mim.models.mae import MAEDecoder, MaskedAutoencoder, MIMOutput, patchify, unpatchify
from geomed_mim.models.registry import create_model, list_models, register_model
from geomed_mim.models.selective import SelectiveMAE  # registers selective_mae_vit_*
from geomed_mim.models.vit import VisionTransformerEncoder

__all__ = [
    "HiEndMAE",
    "MAEDecoder",
    "MIMOutput",
    "MaskedAutoencoder",
    "SelectiveMAE",
    "VisionTransformerEncoder",
    "create_model",
    "list_models",
    "patchify",
    "register_model",
    "unpatchify",
]
