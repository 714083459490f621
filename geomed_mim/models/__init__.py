"""Models: ViT encoder, MAE, SelectiveMAE, position/patch embeddings, timm-style registry."""

from geomed_mim.models.mae import MAEDecoder, MaskedAutoencoder, MIMOutput, patchify, unpatchify
from geomed_mim.models.registry import create_model, list_models, register_model
from geomed_mim.models.selective import SelectiveMAE  # registers selective_mae_vit_*
from geomed_mim.models.vit import VisionTransformerEncoder

__all__ = [
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
