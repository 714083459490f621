"""Token choice: which patches the encoder sees and which the decoder reconstructs.

| module | what it holds |
|---|---|
| :mod:`~geomed_mim.models.masking.strategies` | the shared bookkeeping (:func:`masking_from_noise`), ``RandomMasking`` (MAE), ``BlockMasking`` (BEiT), ``MaskUnitMasking`` (SimMIM) |
| :mod:`~geomed_mim.models.masking.semantic_score` | the semantic-richness score per patch (HOG-style, any bands, 2-D/3-D) |
| :mod:`~geomed_mim.models.masking.semantic` | SelectiveMAE's selection: semantic seeds, PSTS, score-drawn targets |
| :mod:`~geomed_mim.models.masking.pruning` | InfoBatch-style easy-sample pruning (which samples take part in a step) |
"""  # noqa: E501

from geomed_mim.models.masking.pruning import EasySamplePruner
from geomed_mim.models.masking.semantic import (
    PSTSSchedule,
    SelectionResult,
    SemanticTokenSelection,
)
from geomed_mim.models.masking.semantic_score import semantic_richness, semantic_score
from geomed_mim.models.masking.strategies import (
    MASKING_STRATEGIES,
    BlockMasking,
    MaskingResult,
    MaskingStrategy,
    MaskUnitMasking,
    RandomMasking,
    build_masking,
    masking_from_mask,
    masking_from_noise,
    num_visible_patches,
    seeded_uniform,
    uniform_noise,
)

__all__ = [
    "MASKING_STRATEGIES",
    "BlockMasking",
    "EasySamplePruner",
    "MaskUnitMasking",
    "MaskingResult",
    "MaskingStrategy",
    "PSTSSchedule",
    "RandomMasking",
    "SelectionResult",
    "SemanticTokenSelection",
    "build_masking",
    "masking_from_mask",
    "masking_from_noise",
    "num_visible_patches",
    "seeded_uniform",
    "semantic_richness",
    "semantic_score",
    "uniform_noise",
]
