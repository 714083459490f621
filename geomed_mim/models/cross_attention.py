"""Cross-attention of decoder queries over encoder tokens, shared by the SelectiveMAE (CrossMAE)
and Hi-End-MAE decoders; parameter names q, kv, proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention from queries [B, T, D] to a memory [B, M, D]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, T, h, D // h).transpose(1, 2)  # [B, h, T, d]
        kv = self.kv(memory).reshape(B, memory.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [B, h, T, d]
        return self.proj(out.transpose(1, 2).reshape(B, T, D))  # [B, T, D]
