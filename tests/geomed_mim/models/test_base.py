"""The MIM base: one forward template the three methods share, each overriding only the step
that differs, and the loss with its per-sample means."""

from __future__ import annotations

import pytest
import torch

from geomed_mim.models import (
    HiEndMAE,
    MaskedAutoencoder,
    MIMModel,
    SelectiveMAE,
    create_model,
    normalized_patch_targets,
    patchify,
)

STEPS = ("choose_tokens", "forward_encoder", "forward_decoder", "loss_targets", "make_output")
SHARED = ("forward", "forward_loss", "patchify", "unpatchify", "no_weight_decay", "from_size")
TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3, "decoder_embed_dim": 32,
        "decoder_depth": 1, "decoder_num_heads": 4}  # fmt: skip


def overridden(cls: type) -> set[str]:
    return {name for name in STEPS + SHARED if name in vars(cls)}


@pytest.mark.parametrize(
    ("cls", "steps"),
    [
        (MaskedAutoencoder, set()),  # the template as is
        (HiEndMAE, {"forward_encoder", "forward_decoder"}),  # also reads intermediate blocks
        (SelectiveMAE, {"choose_tokens", "forward_decoder", "loss_targets", "make_output"}),
    ],
)
def test_each_method_overrides_only_the_step_that_differs(cls, steps):
    assert issubclass(cls, MIMModel)
    assert overridden(cls) == steps
    assert all(hasattr(MIMModel, name) for name in STEPS + SHARED)


@pytest.mark.parametrize("name", ["mae_vit_tiny_patch16", "hi_end_mae_vit_tiny_patch16"])
def test_per_sample_loss_is_each_samples_masked_mean(name):
    torch.manual_seed(0)
    kwargs = {"in_chans": 2, "img_size": 16, "patch_size": 4, "spatial_dims": 2, **TINY}
    if name.startswith("hi_end"):
        kwargs["encoder_levels"] = (2, 1)
    model = create_model(name, norm_pix_loss=True, **kwargs)
    x = torch.randn(3, 2, 16, 16)
    out = model(x, sample_seeds=torch.tensor([1, 2, 3]))
    target = normalized_patch_targets(patchify(x, (4, 4)))
    per_patch = ((out.pred - target) ** 2).mean(-1)  # [B, L]
    masked = out.mask.bool()
    expected = torch.stack([per_patch[i][masked[i]].mean() for i in range(3)])
    torch.testing.assert_close(out.per_sample_loss, expected)
    # equal masked counts per sample: the loss is the mean of the per-sample means
    torch.testing.assert_close(out.loss, expected.mean())


def test_from_size_takes_the_size_then_overrides():
    model = MaskedAutoencoder.from_size("small", 16, {"decoder_embed_dim": 64}, None, depth=1)
    assert (model.encoder.embed_dim, model.encoder.num_heads, model.encoder.depth) == (384, 6, 1)
    assert model.decoder.embed_dim == 64
    assert model.encoder_arch == {"size": "small", "patch_size": 16}
    patch8 = MaskedAutoencoder.from_size("tiny", 16, {}, 16, patch_size=8, img_size=32, depth=1)
    assert patch8.encoder.patch_size == (8, 8)
    assert patch8.encoder_arch == {"size": "tiny", "patch_size": 16}  # the timm name it maps to
