"""Models: ViT and Swin V2 encoders, the MIM base and its four methods, token choice, the registry.

Importing this package imports every model module, and with it each one's ``@register_model``
builders, so :func:`create_model` knows all names afterwards.
"""

from geomed_mim.models import hi_end, mae, selective, simmim  # noqa: F401  (register builders)
from geomed_mim.models.base import MIMDecoder, MIMModel, MIMOutput, normalized_patch_targets
from geomed_mim.models.hi_end import HiEndMAE
from geomed_mim.models.mae import MAEDecoder, MaskedAutoencoder
from geomed_mim.models.patches import gather_tokens, patchify, unpatchify
from geomed_mim.models.registry import create_model, is_model, list_models, register_model
from geomed_mim.models.selective import SelectiveMAE
from geomed_mim.models.simmim import SimMIM
from geomed_mim.models.swin import SwinV2Encoder
from geomed_mim.models.vit import VisionTransformerEncoder

__all__ = [
    "HiEndMAE",
    "MAEDecoder",
    "MIMDecoder",
    "MIMModel",
    "MIMOutput",
    "MaskedAutoencoder",
    "SelectiveMAE",
    "SimMIM",
    "SwinV2Encoder",
    "VisionTransformerEncoder",
    "create_model",
    "gather_tokens",
    "is_model",
    "list_models",
    "normalized_patch_targets",
    "patchify",
    "register_model",
    "unpatchify",
]
