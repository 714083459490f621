"""Pretraining throughput: MAE training steps (images/s, tokens/s) and the loader beside them.

    PYTHONPATH=. python benchmarks/bench_pretrain_throughput.py [--device cuda] [--steps 5]

For each encoder size (tiny, base) at 224×224 with 14 bands (the modis_toa14 profile), measured in
one run on the same machine:

* ``MAE step``: forward + backward + AdamW step of the MAE model (mask 0.75, decoder 512×8);
* ``baseline``: the same encoder as a plain timm ViT (``vit_<size>_patch16_224``) doing forward +
  backward + AdamW over all 196 tokens — what a step costs without masking. ``ratio`` = baseline
  step time / MAE step time (MAE's reference reports ~3× for ViT-L on GPU);
* model FLOPs per step (torch's FLOP counter on the MAE step) and the achieved FLOP/s; on a GPU,
  model-FLOPs utilization against the card's dense bf16 peak.

The loader is the real ``RSTileDataset`` through the data module's sharded loader (workers decode
compact uint16 batches) followed by the batched transform the data module runs after transfer
(normalize, random resized crop, flips; on ``--device``), over a synthetic store of 224×224
14-band uint16 tiles written with the project's store writer, with 0 and 2 DataLoader workers;
its images/s stands beside the step rate.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stores import write_train_manifest
from torch.utils.flop_counter import FlopCounterMode

from data_pipelines.store.write import PartWriter, open_root
from geomed_mim.data.buffers import release
from geomed_mim.data.rs import RSTileDataset
from geomed_mim.data.sharding import sharded_loader
from geomed_mim.models import create_model

BANDS = 14
IMG = 224
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core FLOP/s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def default_batches(sizes: list[str], device: torch.device) -> list[int]:
    """Per-size batch: 256 on a GPU; on the CPU 8 for tiny, 2 for larger encoders."""
    return [(256 if device.type == "cuda" else (8 if s == "tiny" else 2)) for s in sizes]


def machine_line(device: torch.device) -> str:
    """The table's first line: processor, torch version, threads, device (and GPU name)."""
    return (
        f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )


def mae_step_fn(model, opt, x, amp: bool):
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def baseline_step_fn(model, opt, x, amp: bool):
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            feats = model.forward_features(x)
        feats.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_interleaved(steps_by_name: dict, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each function, measured in alternation (one warm-up each), so
    load from other processes on a shared machine hits both sides of a ratio alike."""
    for step in steps_by_name.values():
        step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in times.items()}


def bench_models(sizes, batch_sizes, steps: int, device: torch.device) -> list[dict]:
    import timm

    amp = device.type == "cuda"
    rows = []
    for size, batch in zip(sizes, batch_sizes, strict=True):
        torch.manual_seed(0)
        x = torch.randn(batch, BANDS, IMG, IMG, device=device)
        mae = create_model(
            f"mae_vit_{size}_patch16", in_chans=BANDS, img_size=IMG, norm_pix_loss=True
        ).to(device)
        opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-4)
        mae_step = mae_step_fn(mae, opt, x, amp)
        flops = count_flops(mae_step)
        vit = timm.create_model(f"vit_{size}_patch16_224", in_chans=BANDS, num_classes=0).to(device)
        vit_opt = torch.optim.AdamW(vit.parameters(), lr=1e-4)
        base_step = baseline_step_fn(vit, vit_opt, x, amp)
        base_flops = count_flops(base_step)
        timed = time_interleaved({"mae": mae_step, "baseline": base_step}, steps, device)
        t_mae, t_base = timed["mae"], timed["baseline"]
        del mae, opt, vit, vit_opt
        L = (IMG // 16) ** 2
        row = {
            "model": f"mae_vit_{size}_patch16",
            "batch": batch,
            "step_s": t_mae,
            "images_s": batch / t_mae,
            "tokens_s": batch * L / t_mae,
            "baseline_step_s": t_base,
            "ratio": t_base / t_mae,
            "gflop_per_image": flops / batch / 1e9,
            "baseline_gflop_per_image": base_flops / batch / 1e9,
            "tflop_s": flops / t_mae / 1e12,
        }
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
            row["mfu"] = flops / t_mae / peak if peak else float("nan")
        rows.append(row)
    return rows


def write_synthetic_store(out: Path, n_tiles: int) -> Path:
    """``n_tiles`` 14-band 224×224 uint16 tiles in the store layout build_dataset writes."""
    rng = np.random.default_rng(0)
    writer = PartWriter(out, "tiles", "synthetic", (BANDS, IMG, IMG), "uint16")
    base = rng.integers(500, 4000, size=(BANDS, 1, 1), dtype=np.uint16)
    for _ in range(n_tiles):  # smooth-ish fields compress like imagery, not like white noise
        field = rng.integers(0, 64, size=(BANDS, IMG // 8, IMG // 8), dtype=np.uint16)
        writer.append(np.kron(field, np.ones((8, 8), np.uint16)) + base)
    count = writer.close()
    root = open_root(out)
    root.attrs.update({"bands": [f"B{i}" for i in range(BANDS)], "tile_size": IMG})
    write_train_manifest(out, ["tiles/synthetic"] * count, list(range(count)))
    return out


def bench_loader(store: Path, batch: int, workers: int, batches: int, device: str = "cpu") -> float:
    ds = RSTileDataset(store, [2000.0] * BANDS, [1000.0] * BANDS, crop_size=IMG)
    loader = sharded_loader(ds, batch, shuffle=True, drop_last=True, num_workers=workers,
                            pin_memory=device.startswith("cuda"))  # fmt: skip
    it = iter(loader)
    release(next(it))  # worker start-up is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        compact = next(it)
        moved = {k: v.to(device, non_blocking=True) for k, v in compact.items()}
        n += ds.transform(moved)["image"].shape[0]  # what on_after_batch_transfer runs
        release(compact)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument(
        "--batch",
        nargs="+",
        type=int,
        default=None,
        help="per-size batch (default: 8 tiny / 2 base on CPU, 256 on GPU)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = args.batch or default_batches(args.sizes, device)
    print(machine_line(device))
    rows = bench_models(args.sizes, batches, args.steps, device)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_synthetic_store(Path(tmp) / "store", 96)
        loader = {w: bench_loader(store, 8, w, 8, str(device)) for w in (0, 2)}
    print(
        f"\n{IMG}x{IMG}, {BANDS} bands, patch 16 (196 tokens), mask 0.75, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, median of {args.steps} steps\n"
    )
    head = (
        "| model | batch | step s | images/s | tokens/s | baseline step s (timm ViT, all "
        "tokens) | baseline/MAE time | GFLOP/image MAE / baseline | MAE TFLOP/s |"
    )
    if device.type == "cuda":
        head += " MFU |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['model']} | {r['batch']} | {r['step_s']:.3f} | {r['images_s']:.1f} | "
            f"{r['tokens_s']:.0f} | {r['baseline_step_s']:.3f} | {r['ratio']:.2f}× | "
            f"{r['gflop_per_image']:.1f} / {r['baseline_gflop_per_image']:.1f} | "
            f"{r['tflop_s']:.3f} |"
        )
        if device.type == "cuda":
            line += f" {r['mfu']:.1%} |"
        print(line)
    print("\n| loader (RSTileDataset, 224² crops from zarr) | images/s |")
    print("|---|---|")
    for w, v in loader.items():
        print(f"| {w} workers | {v:.1f} |")
    for r in rows:
        need = r["images_s"]
        print(
            f"- {r['model']}: steps consume {need:.1f} images/s; loader with 2 workers gives "
            f"{loader[2]:.1f} ({loader[2] / need:.1f}× what the step needs)"
        )


if __name__ == "__main__":
    main()
