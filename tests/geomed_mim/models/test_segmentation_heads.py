"""The probing heads: the linear one reads each patch alone, the attentive one the whole image."""

from __future__ import annotations

import torch

from geomed_mim.models.segmentation import AttentivePatchHead, LinearPatchHead
from geomed_mim.models.vit import VisionTransformerEncoder


def encoder() -> VisionTransformerEncoder:
    return VisionTransformerEncoder(
        img_size=32, in_chans=3, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )


def test_both_heads_give_full_resolution_logits():
    x = torch.randn(2, 3, 32, 32)
    for head in (LinearPatchHead(encoder(), 4), AttentivePatchHead(encoder(), 4)):
        assert head(x).shape == (2, 4, 32, 32)


def train_decoder(head: LinearPatchHead, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Fit ``head.decode`` on fixed tokens; the final accuracy on them."""
    torch.manual_seed(0)
    params = [p for n, p in head.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(300):
        logits = head.decode(tokens)  # [B, L, K]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head.decode(tokens).argmax(-1) == labels).float().mean())


def test_the_attentive_head_reads_context_the_linear_head_cannot():
    """Every patch's class is whether one marked patch of its image is present: its own token
    says nothing of it (the same token appears under both classes), so only a head that looks
    across patches can be right beyond chance."""
    g = torch.Generator().manual_seed(0)
    n, length, dim = 64, 16, 32
    tokens = torch.randn(n, length, dim, generator=g) * 0.1
    marked = torch.rand(n, generator=g) < 0.5
    tokens[marked, 0, 0] += 3.0  # the mark sits in patch 0 of half the images
    labels = marked[:, None].expand(n, length).long()
    linear = train_decoder(LinearPatchHead(encoder(), 2), tokens, labels)
    attentive = train_decoder(AttentivePatchHead(encoder(), 2), tokens, labels)
    assert attentive > 0.95
    assert linear < 0.7  # beyond chance only on patch 0, the one that carries the mark
