"""Training memory per model: parameters, optimizer state and activations per sample, with and
without per-block activation checkpointing (the table in docs/pretraining.md).

    OMP_NUM_THREADS=1 python benchmarks/memory_table.py      # 2.5 min on 2 busy CPU cores

* parameters: the whole pretraining model (encoder and decoder), Swin V2 on the meta device;
* weights + gradients (fp32, 8 B per parameter) and AdamW's two moments (fp32, 8 B per
  parameter), before any sharding (FSDP divides both by the GPU count);
* activations per sample: *measured* in fp32 on the CPU, batch 1, as the bytes of the distinct
  tensors autograd saves for the backward pass (``saved_tensors_hooks``, parameters excluded),
  on depth-truncated copies of each model (one block per stage, then one more in each stage in
  turn); the full model's figure is extrapolated linearly in depth (each block of a stage saves
  the same). With checkpointing each block keeps only its input, and one block's activations
  are rebuilt at a time in the backward pass: non-block + Σ block inputs + the largest block.

Inputs as the MODIS TOA14 configs: 14 bands; MAE ViTs at 224 px, patch 16, 75 % masked (the
encoder sees 49 tokens, the 8-block 512-d decoder all 196); SimMIM Swin V2 at 128 px, patch 4,
every one of the 32 x 32 positions encoded. bf16-mixed keeps most saved tensors in bf16 (about
half these activation figures); no GPU measurement was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from geomed_mim.models import create_model

GiB = 1024**3
MiB = 1024**2

# name → (registry name, model kwargs, stage depths of the full model)
MODELS: dict[str, tuple[str, dict[str, Any], list[int]]] = {
    "MAE ViT-B/16": ("mae_vit_base_patch16", {}, [12]),
    "MAE ViT-L/16": ("mae_vit_large_patch16", {}, [24]),
    "MAE ViT-H/16": (
        "mae_vit_large_patch16",
        {"embed_dim": 1280, "num_heads": 16},
        [32],
    ),
    "SimMIM SwinV2-B": ("simmim_swinv2_base_window8", {}, [2, 2, 18, 2]),
    "SimMIM SwinV2-G": ("simmim_swinv2_giant_window8", {}, [2, 2, 42, 2]),
}


def build(name: str, kwargs: dict[str, Any], depths: list[int]) -> torch.nn.Module:
    if name.startswith("simmim"):
        return create_model(name, in_chans=14, img_size=128, depths=depths, **kwargs)
    return create_model(name, in_chans=14, img_size=224, depth=depths[0], **kwargs)


def num_params(name: str, kwargs: dict[str, Any], depths: list[int]) -> int:
    # the ViT's fixed positions are computed with real tensors: it is built on the CPU
    device = "meta" if name.startswith("simmim") else "cpu"
    with torch.device(device):
        model = build(name, kwargs, depths)
    return sum(p.numel() for p in model.parameters())


def saved_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward of a sample."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(0)
    size = 128 if hasattr(model, "mask_patch_size") else 224
    x = torch.randn(1, 14, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, sample_seeds=torch.tensor([0]))  # the graph alive: no storage reused
    total = sum(storages.values())
    del out
    return total


def block_input_bytes(name: str, kwargs: dict[str, Any], depths: list[int]) -> list[int]:
    """fp32 bytes of one block's input per stage, one sample."""
    model = build(name, kwargs, [1] * len(depths))
    enc = model.encoder
    if name.startswith("simmim"):
        tokens = math.prod(enc.grid_size)
        return [4 * tokens // 4**s * enc.embed_dim * 2**s for s in range(len(depths))]
    visible = 1 + int(enc.num_patches * (1 - model.mask_ratio))  # class token + visible
    return [4 * visible * enc.embed_dim]


def activations(
    name: str, kwargs: dict[str, Any], depths: list[int], measure: Callable = saved_bytes
) -> tuple[int, int]:
    """(bytes per sample without checkpointing, with per-block checkpointing)."""
    stages = len(depths)
    base_depths = [1] * stages
    base = measure(build(name, kwargs, base_depths))
    per_block = []
    for s in range(stages):
        more = list(base_depths)
        more[s] += 1
        per_block.append(measure(build(name, kwargs, more)) - base)
    non_block = base - sum(per_block)
    plain = non_block + sum(d * b for d, b in zip(depths, per_block, strict=True))
    inputs = block_input_bytes(name, kwargs, depths)
    ckpt = non_block + sum(d * i for d, i in zip(depths, inputs, strict=True)) + max(per_block)
    return plain, ckpt


def main() -> None:
    rows = []
    for label, (name, kwargs, depths) in MODELS.items():
        n = num_params(name, kwargs, depths)
        plain, ckpt = activations(name, kwargs, depths)
        rows.append((label, n, plain, ckpt))
        print(f"measured {label}", flush=True)
    print()
    print(
        "| model | parameters | weights + grads (fp32) | AdamW state (fp32) "
        "| activations / sample | with checkpointing |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, plain, ckpt in rows:
        print(
            f"| {label} | {n / 1e6:,.0f} M | {8 * n / GiB:.1f} GiB | {8 * n / GiB:.1f} GiB "
            f"| {plain / MiB:,.0f} MiB | {ckpt / MiB:,.0f} MiB |"
        )


if __name__ == "__main__":
    main()
