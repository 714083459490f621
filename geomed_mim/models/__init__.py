"""Models: ViT encoder, MAE, Hi-End-MAE, position/patch embeddings, and the timm-style registry."""

from geomed_mim.models.hi_end import HiEndMAE
from geomed_mim.models.mae import MAEDecoder, MaskedAutoencoder, MIMOutput, patchify, unpatchify
from geomed_mim.models.registry import create_model, list_models, register_model
from geomed_mim.models.vit import VisionTransformerEncoder

__all__ = [
    "HiEndMAE",
    "MAEDecoder",
    "MIMOutput",
    "MaskedAutoencoder",
    "VisionTransformerEncoder",
    "create_model",
    "list_models",
    "patchify",
    "register_model",
    "unpatchify",
]
