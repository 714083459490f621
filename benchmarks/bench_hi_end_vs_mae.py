"""Hi-End-MAE vs MAE: training-step time, FLOPs and memory at the same encoder and crop (3-D).

    PYTHONPATH=. python benchmarks/bench_hi_end_vs_mae.py [--size base] [--img 96] [--batch 2]

Three models share the encoder (ViT-<size>/16 on 1-channel <img>³ crops, mask 0.75,
normalized-pixel loss) and are stepped in one run, interleaved step by step so machine load hits
all alike (forward + backward + AdamW):

* ``mae``: the project's MAE (``mae_vit_<size>_patch16``, reference decoder 512 wide × 8 blocks,
  as in ``configs/pretrain/mae_vit_base_ct96.yaml``) — **the baseline**;
* ``hi_end``: ``hi_end_mae_vit_<size>_patch16`` with its default decoder (base: 384 wide, 2
  self-attention blocks + 3 level blocks reading encoder blocks 10, 7, 4);
* ``mae_same_decoder``: MAE with Hi-End's decoder width, heads and block count (384 × 5): what the
  cross-attention and the level projections add on their own.

Reported per model: median step seconds, ratio to MAE, model FLOPs per step (torch's FLOP
counter, with the CPU attention kernels counted too — load-independent), memory held for the
backward (bytes of tensors autograd saves, deduplicated by storage — load-independent), parameter
+ gradient + AdamW state bytes, and the measured peak memory of training: the growth from a freshly
built model to the peak of its first two steps (so activations, gradients and AdamW state) — on a
GPU from ``torch.cuda.max_memory_allocated``, on CPU from the RSS sampled every millisecond in a
fresh process per model.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from geomed_mim.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain_throughput import mae_step_fn

TARGET = 1.3  # the project's target: a Hi-End-MAE step ≤ 1.3× an MAE step


def build(name: str, size: str, img: int) -> torch.nn.Module:
    common = {"in_chans": 1, "img_size": img, "spatial_dims": 3, "norm_pix_loss": True}
    if name == "mae":
        return create_model(f"mae_vit_{size}_patch16", **common)
    hi_end = create_model(f"hi_end_mae_vit_{size}_patch16", **common)
    if name == "hi_end":
        return hi_end
    dec = hi_end.decoder
    return create_model(  # mae_same_decoder
        f"mae_vit_{size}_patch16",
        **common,
        decoder_embed_dim=dec.embed_dim,
        decoder_depth=len(dec.decoder_blocks) + len(dec.level_blocks),
        decoder_num_heads=dec.level_blocks[0].cross_attn.num_heads,
    )


def step_fn(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One AdamW training step (bf16 autocast on a GPU), as the throughput benchmark times it."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return mae_step_fn(model, opt, x, amp=x.device.type == "cuda")


def _sdpa_cpu_fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


# torch's counter has formulas for the CUDA attention kernels only; add the CPU ones
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_fwd,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_bwd,
}


def count_flops(step: Callable[[], None]) -> float:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step()
    return float(counter.get_total_flops())


def saved_for_backward_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps between forward and backward (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(n for ptr, n in storages.items() if ptr not in params)


def state_bytes(model: torch.nn.Module) -> int:
    """fp32 parameters + gradients + AdamW's two moments (trainable ones)."""
    return sum(p.numel() * 4 * (4 if p.requires_grad else 1) for p in model.parameters())


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, device) -> dict:
    """Median seconds per step, the models taking turns (one warm-up step each)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in times.items()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_growth(step: Callable[[], None], steps: int = 2) -> int:
    """Highest RSS sampled (every ms, by a thread) during ``steps`` calls, minus the RSS before."""
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(steps):
        step()
    done.set()
    sampler.join()
    return max(peak[0], rss_bytes()) - base


def peak_rss_child(name: str, size: str, img: int, batch: int) -> float:
    """CPU: RSS growth over two training steps of a freshly built model, in a fresh process (so
    other models' freed memory cannot be reused)."""
    code = (
        "import torch, sys; sys.path.insert(0, 'benchmarks');"
        "from bench_hi_end_vs_mae import build, step_fn, peak_rss_growth;"
        f"torch.manual_seed(0); m = build({name!r}, {size!r}, {img});"
        f"x = torch.rand({batch}, 1, {img}, {img}, {img});"
        "print(peak_rss_growth(step_fn(m, x)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_cuda(name: str, size: str, img: int, batch: int, device: torch.device) -> float:
    """GPU: peak allocated growth (bytes) over two training steps of a freshly built model."""
    torch.manual_seed(0)
    model = build(name, size, img).to(device)
    x = torch.rand(batch, 1, img, img, img, device=device)
    step = step_fn(model, x)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    step()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated(device) - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--img", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = ["mae", "hi_end", "mae_same_decoder"]
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.img, args.img, args.img, device=device)
    models = {n: build(n, args.size, args.img).to(device) for n in names}
    steps = {n: step_fn(m, x) for n, m in models.items()}
    flops = {n: count_flops(steps[n]) for n in names}
    saved = {n: saved_for_backward_bytes(models[n], x) for n in names}
    timed = time_interleaved(steps, args.steps, device)
    del models, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
        peak = {n: peak_cuda(n, args.size, args.img, args.batch, device) for n in names}
    else:
        peak = {n: peak_rss_child(n, args.size, args.img, args.batch) for n in names}

    print(
        f"# {platform.node()} {device} torch {torch.__version__}; ViT-{args.size}/16, "
        f"{args.img}³ crops × 1 channel, batch {args.batch}, mask 0.75; median of {args.steps} "
        f"interleaved steps; load average {' '.join(f'{v:.1f}' for v in _loadavg())}"
    )
    peak_name = "peak GPU alloc growth" if device.type == "cuda" else "peak RSS growth"
    print(
        f"| model | step s | × MAE | GFLOP/step | × MAE | saved for backward MiB | × MAE | "
        f"params+grads+AdamW MiB | {peak_name} MiB | × MAE |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in names:
        row = {
            "model": n,
            "step_s": timed[n],
            "step_ratio": timed[n] / timed["mae"],
            "gflop": flops[n] / 1e9,
            "flop_ratio": flops[n] / flops["mae"],
            "saved_mib": saved[n] / 2**20,
            "saved_ratio": saved[n] / saved["mae"],
            "state_mib": state_bytes(build(n, args.size, args.img)) / 2**20,
            "peak_mib": peak[n] / 2**20,
            "peak_ratio": peak[n] / peak["mae"],
        }
        rows.append(row)
        print(
            f"| {n} | {row['step_s']:.3f} | {row['step_ratio']:.2f} | {row['gflop']:.1f} | "
            f"{row['flop_ratio']:.2f} | {row['saved_mib']:.0f} | {row['saved_ratio']:.2f} | "
            f"{row['state_mib']:.0f} | {row['peak_mib']:.0f} | {row['peak_ratio']:.2f} |"
        )
    hi = rows[1]
    verdict = "meets" if hi["step_ratio"] <= TARGET and hi["peak_ratio"] <= TARGET else "MISSES"
    print(
        f"\nHi-End-MAE / MAE: step {hi['step_ratio']:.2f}×, FLOPs {hi['flop_ratio']:.2f}×, "
        f"peak memory {hi['peak_ratio']:.2f}× → {verdict} the ≤ {TARGET}× target"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _loadavg() -> tuple[float, float, float]:
    try:
        return tuple(float(v) for v in open("/proc/loadavg").read().split()[:3])
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
