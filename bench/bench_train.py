"""Training throughput (patients/s) and peak memory per model at the default ROI size.

Each model trains a few batches of random tensors (the speed does not depend on the values) in a
fresh subprocess, so the peak resident memory is that model's own. On CUDA the peak is
``torch.cuda.max_memory_allocated`` and bf16 autocast + channels-last are on, as in training.

    python bench/bench_train.py [--device cpu|cuda] [--steps 5] [--batch-size 4]

Writes bench/results/train.md (or train_<device>.md for a non-CPU device).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROI_SHAPE = (32, 64, 64)  # z, y, x: config roi.shape [64, 64, 32] (x, y, z)
HERE = Path(__file__).resolve().parent


def measure(name: str, *, device: str, steps: int, batch_size: int) -> dict:
    import torch

    from lungfusion.models import build_model, required_modalities
    from lungfusion.training.device import autocast, memory_format

    dev = torch.device(device)
    n_tab = 8 if "tab" in required_modalities(name) else 0
    model = build_model(name, n_classes=2, in_shape=ROI_SHAPE, n_tabular=n_tab)
    model = model.to(dev, memory_format=memory_format(dev))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {
        "ct": torch.rand(batch_size, 1, *ROI_SHAPE, device=dev),
        "pet": torch.rand(batch_size, 1, *ROI_SHAPE, device=dev),
        "has_pet": torch.ones(batch_size, dtype=torch.bool, device=dev),
    }
    if n_tab:
        batch["tab"] = torch.randn(batch_size, n_tab, device=dev)
    for key in ("ct", "pet"):
        batch[key] = batch[key].contiguous(memory_format=memory_format(dev))
    labels = torch.randint(0, 2, (batch_size,), device=dev)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(dev):
            logits = model(batch)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        optimiser.step()

    step()  # warm-up: allocator, cuDNN autotuning
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": name,
        "patients_per_s": steps * batch_size / seconds,
        "peak_mb": peak_mb,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        result = measure(args.one, device=args.device, steps=args.steps, batch_size=args.batch_size)
        print(json.dumps(result))
        return

    from lungfusion.models import MODEL_NAMES

    rows = []
    for name in args.models or MODEL_NAMES:
        command = [sys.executable, __file__, "--one", name, "--device", args.device]
        command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            rows.append({"model": name, "error": done.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write_table(rows, device=args.device, steps=args.steps, batch_size=args.batch_size)


def write_table(rows: list[dict], *, device: str, steps: int, batch_size: int) -> None:
    import platform

    import torch

    where = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    lines = [
        f"## Training throughput ({device}: {where}, torch {torch.__version__})",
        "",
        f"ROI {ROI_SHAPE[2]}x{ROI_SHAPE[1]}x{ROI_SHAPE[0]} (x, y, z), batch {batch_size}, "
        f"{steps} Adam steps after one warm-up, default widths; peak memory is "
        + ("CUDA max allocated" if device == "cuda" else "the process's peak resident set")
        + ".",
        "",
        "| model | patients/s | peak memory (MB) | parameters |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error']} | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['patients_per_s']:.2f} | {row['peak_mb']:.0f} "
            f"| {row['parameters']:,} |"
        )
    out = HERE / "results" / ("train.md" if device == "cpu" else f"train_{device}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
