"""SelectiveMAE vs MAE: training-step time, FLOPs, memory and the score's share.

    PYTHONPATH=. python benchmarks/bench_selective_mae.py [--device cuda] [--steps 5]
    PYTHONPATH=. python benchmarks/bench_selective_mae.py --quick     # does it run? (no figures)

For each encoder size (default ViT-S and ViT-B) at 224×224 with 14 bands (modis_toa14), same
encoder, image size and batch, measured in one run with the steps interleaved (MAE,
SelectiveMAE, SelectiveMAE + pruning, score, MAE, ...) so load from other processes hits every
column alike, wall seconds and process CPU seconds side by side.

A busy machine makes step times (and their ratio) meaningless, so the script records the load
average before and after and **refuses to report** — one line, exit status 3 — when the 1-min
load average is above ``--max-load`` (default 0.5 × the cores) before the start, or at the end
once the benchmark's own threads are taken off.
``--quick`` (ViT-tiny, 64×64, batch 2, one round) only checks that everything runs and prints
no table.

Columns:

* ``MAE``: the reference MAE step (mask 0.75, reference decoder 512×8 over all 197 tokens);
* ``SelectiveMAE``: mask 0.85 (29 of 196 tokens encoded), reconstruction 0.25 (49 targets),
  CrossMAE decoder 512×8 over the targets only; score + seeds + PSTS inside the step;
* ``+ pruning``: the same with InfoBatch-style easy-sample pruning (prune ratio 0.5) in its steady
  state — a loss table over 4096 samples is filled first, then each step drops below-mean samples
  with probability 0.5 before the forward pass (about a quarter of the batch);
* ``score``: the semantic-richness score alone on the batch, and the whole selection
  (score + Gumbel-top-k seeds + PSTS + targets); their share of the SelectiveMAE step.

Every step is forward + backward + AdamW. FLOPs come from torch's FLOP counter (matmuls,
convolutions, attention; the score's elementwise work is not counted there — its time is).
Memory: on a GPU the peak allocated during a step; on CPU the bytes of the tensors autograd saves
for backward during the step, parameters excluded (the activation memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain_throughput import (
    GPU_PEAK_BF16,
    count_flops,
    default_batches,
    machine_line,
    mae_step_fn,
    sync,
)

from geomed_mim.models import create_model
from geomed_mim.models.masking import EasySamplePruner

BANDS = 14
IMG = 224
QUICK_IMG = 64  # 16 tokens: 2 encoded, 4 targets; enough to run every code path
EXIT_BUSY = 3


def pruned_step_fn(model, opt, x, amp: bool, pruner: EasySamplePruner, n_samples: int):
    gen = torch.Generator().manual_seed(0)
    kept: list[float] = []

    def step():
        idx = torch.randint(0, n_samples, (x.shape[0],), generator=gen)
        keep, weight = pruner.keep(idx, 0.5, gen)
        kept.append(float(keep.float().mean()))
        keep = keep.to(x.device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x[keep])
        loss = (out.per_sample_loss * weight.to(x.device)).mean()
        loss.backward()
        pruner.update(idx[keep.cpu()], out.per_sample_loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, kept


def fwd_bwd_fn(model, x, amp: bool):
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def memory_of(step, device: torch.device, model: torch.nn.Module) -> float:
    """MiB: peak allocated (GPU) or autograd-saved activation bytes (CPU; parameters, which
    autograd also saves, left out) during one step."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2**20


def time_interleaved(steps_by_name: dict, rounds: int, device: torch.device) -> dict:
    """Per function, median wall seconds and median process CPU seconds per call, called in
    alternation (one warm-up each). CPU seconds (all threads of this process) count the work
    done rather than the time waited for a core, so on a shared, oversubscribed CPU they are
    the steadier measure; on a GPU only wall time means anything."""
    for step in steps_by_name.values():
        step()
    sync(device)
    wall: dict[str, list[float]] = {name: [] for name in steps_by_name}
    cpu: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        **{name: float(np.median(v)) for name, v in wall.items()},
        **{f"cpu_{name}": float(np.median(v)) for name, v in cpu.items()},
    }


def bench(size: str, batch: int, rounds: int, device: torch.device, img: int = IMG) -> dict:
    amp = device.type == "cuda"
    torch.manual_seed(0)
    # smooth fields + noise: structure for the score to rank, like imagery rather than noise
    x = torch.randn(batch, BANDS, img // 8, img // 8).repeat_interleave(8, -1)
    x = (x.repeat_interleave(8, -2) + 0.3 * torch.randn(batch, BANDS, img, img)).to(device)
    kw = {"in_chans": BANDS, "img_size": img, "norm_pix_loss": True}
    mae = create_model(f"mae_vit_{size}_patch16", **kw).to(device)
    sel = create_model(f"selective_mae_vit_{size}_patch16", **kw).to(device)
    sel.masking.set_progress(0.5)  # mid-training: near/far PSTS mix
    opt_mae = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-4)
    opt_sel = torch.optim.AdamW([p for p in sel.parameters() if p.requires_grad], lr=1e-4)
    n_samples = 4096
    pruner = EasySamplePruner(prune_ratio=0.5)
    pruner.update(torch.arange(n_samples), torch.rand(n_samples))  # steady state: table known
    steps = {
        "mae": mae_step_fn(mae, opt_mae, x, amp),
        "selective": mae_step_fn(sel, opt_sel, x, amp),
    }
    steps["pruned"], kept = pruned_step_fn(sel, opt_sel, x, amp, pruner, n_samples)
    # forward + backward only: the part that grows with the batch (the AdamW update is a fixed
    # cost per step, the same for both, that dominates small CPU batches but not GPU ones)
    steps["fb_mae"] = fwd_bwd_fn(mae, x, amp)
    steps["fb_selective"] = fwd_bwd_fn(sel, x, amp)
    patch = sel.encoder.patch_size
    steps["score"] = lambda: sel.masking.score(x, patch)
    steps["selection"] = lambda: sel.masking.select(x, patch, sel.encoder.patch_embed(x).detach())
    flops = {k: count_flops(steps[k]) for k in ("mae", "selective")}
    memory = {k: memory_of(steps[k], device, m) for k, m in (("mae", mae), ("selective", sel))}
    t = time_interleaved(steps, rounds, device)
    row = {
        "size": size,
        "batch": batch,
        **{f"t_{k}": v for k, v in t.items()},
        "speedup": t["mae"] / t["selective"],
        "speedup_pruned": t["mae"] / t["pruned"],
        "cpu_speedup": t["cpu_mae"] / t["cpu_selective"],
        "fb_speedup": t["fb_mae"] / t["fb_selective"],
        "cpu_fb_speedup": t["cpu_fb_mae"] / t["cpu_fb_selective"],
        "cpu_speedup_pruned": t["cpu_mae"] / t["cpu_pruned"],
        "cpu_score_share": t["cpu_score"] / t["cpu_selective"],
        "kept": float(np.mean(kept)),
        "gflop_mae": flops["mae"] / batch / 1e9,
        "gflop_sel": flops["selective"] / batch / 1e9,
        "mem_mae": memory["mae"],
        "mem_sel": memory["selective"],
        "score_share": t["score"] / t["selective"],
        "selection_share": t["selection"] / t["selective"],
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
        row["mfu_sel"] = flops["selective"] / t["selective"] / peak if peak else float("nan")
    return row


def load_check(when: str, max_load: float, own_threads: int = 0) -> float:
    """The 1-min load average; exits (one line, status 3) when the load of *other* work (the
    average less ``own_threads``, the threads this benchmark itself kept busy) is above
    ``max_load``."""
    load = os.getloadavg()[0]
    if load - own_threads > max_load:
        mine = f" less this benchmark's {own_threads} threads" if own_threads else ""
        print(
            f"error: 1-min load average {load:.2f}{mine} {when} is above --max-load "
            f"{max_load:.2f} ({os.cpu_count()} cores): other work would be measured too; rerun "
            "on a quiet machine (nothing else running)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_BUSY)
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--sizes", nargs="+", default=["small", "base"])
    parser.add_argument("--batch", nargs="+", type=int, default=None)
    parser.add_argument("--max-load", type=float, default=0.5 * (os.cpu_count() or 1),
                        help="refuse to report above this 1-min load average (default 0.5 x "
                        "cores)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="ViT-tiny, 64x64, batch 2, one round: it runs; no table")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        row = bench("tiny", 2, 1, device, img=QUICK_IMG)
        finite = all(np.isfinite(v) for v in row.values() if isinstance(v, float))
        print(f"quick check ran every step (ViT-tiny, {QUICK_IMG}x{QUICK_IMG}, batch 2): "
              f"{'all timings finite' if finite else 'NON-FINITE timings'}; load average "
              f"{os.getloadavg()[0]:.2f}; not a measurement")  # fmt: skip
        raise SystemExit(0 if finite else 1)
    if args.batch and len(args.batch) != len(args.sizes):
        parser.error(f"--batch: give one batch per --sizes entry ({len(args.sizes)})")
    load_before = load_check("before the start", args.max_load)
    # CPU: batch 8 for every size (the conditions the recorded ratios name); GPU: 256
    batches = args.batch or [
        b if device.type == "cuda" else 8 for b in default_batches(args.sizes, device)
    ]
    rows = [bench(s, b, args.steps, device) for s, b in zip(args.sizes, batches, strict=True)]
    # the run itself keeps torch's threads busy (CPU) or one thread feeding the GPU
    own = torch.get_num_threads() if device.type == "cpu" else 1
    load_after = load_check("at the end", args.max_load, own)
    print(machine_line(device))
    print(f"# 1-min load average: {load_before:.2f} before, {load_after:.2f} after, of which "
          f"{own} threads are this run's (limit for other work {args.max_load:.2f}, "
          f"{os.cpu_count()} cores)")  # fmt: skip
    print_tables(rows, args.steps, device)


def print_tables(rows: list[dict], rounds: int, device: torch.device) -> None:
    """The markdown tables (wall s, CPU s, forward + backward) for ``rows``."""
    mem = "peak MiB" if device.type == "cuda" else "saved-activation MiB"
    print(
        f"\n{IMG}x{IMG}, {BANDS} bands, patch 16 (196 tokens); MAE mask 0.75; SelectiveMAE mask "
        f"0.85 / reconstruction 0.25; decoders 512x8; "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; median of {rounds} "
        "interleaved rounds\n"
    )
    head = (
        "| encoder | batch | MAE step s | SelectiveMAE step s | MAE/Selective time | "
        "+ pruning step s (kept) | MAE/(Selective+pruning) | GFLOP/image MAE / Selective | "
        f"{mem} MAE / Selective | score s (share) | selection s (share) |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(
            f"| ViT-{r['size']}/16 | {r['batch']} | {r['t_mae']:.3f} | {r['t_selective']:.3f} | "
            f"**{r['speedup']:.2f}×** | {r['t_pruned']:.3f} ({r['kept']:.0%}) | "
            f"{r['speedup_pruned']:.2f}× | {r['gflop_mae']:.1f} / {r['gflop_sel']:.1f} "
            f"({r['gflop_mae'] / r['gflop_sel']:.2f}×) | {r['mem_mae']:.0f} / {r['mem_sel']:.0f} "
            f"({r['mem_mae'] / r['mem_sel']:.2f}×) | {r['t_score']:.4f} ({r['score_share']:.1%}) | "
            f"{r['t_selection']:.4f} ({r['selection_share']:.1%}) |"
        )
    if device.type == "cuda":
        for r in rows:
            print(f"- ViT-{r['size']}: SelectiveMAE MFU {r['mfu_sel']:.1%}")
    else:
        print(
            "\nProcess CPU seconds per step (work done, whatever the wait for a core):\n\n"
            "| encoder | MAE CPU s | SelectiveMAE CPU s | MAE/Selective | + pruning CPU s | "
            "MAE/(Selective+pruning) | score CPU s (share) | fwd+bwd CPU s MAE / Selective |"
            "\n|---|---|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| ViT-{r['size']}/16 | {r['t_cpu_mae']:.3f} | {r['t_cpu_selective']:.3f} | "
                f"**{r['cpu_speedup']:.2f}×** | {r['t_cpu_pruned']:.3f} | "
                f"{r['cpu_speedup_pruned']:.2f}× | {r['t_cpu_score']:.4f} "
                f"({r['cpu_score_share']:.1%}) | {r['t_cpu_fb_mae']:.3f} / "
                f"{r['t_cpu_fb_selective']:.3f} (**{r['cpu_fb_speedup']:.2f}×**) |"
            )
    print("\nForward + backward only (no optimizer update), wall s:\n")
    for r in rows:
        print(
            f"- ViT-{r['size']}/16, batch {r['batch']}: MAE {r['t_fb_mae']:.3f}, SelectiveMAE "
            f"{r['t_fb_selective']:.3f} → {r['fb_speedup']:.2f}×"
        )


if __name__ == "__main__":
    main()
