"""What --gradient-checkpointing costs and saves: a plain and a full-SMART training step
with the encoder's activations kept and recomputed, alternating in one process on the
same batch (median seconds), and the peak memory of each step (measured as in
bench_speed.py: resident memory above the level before the step, in a second process with
a fixed glibc mmap threshold; on CUDA, max_memory_allocated).

    python scripts/bench_checkpointing.py             # all-MiniLM-L6-v2, 16x128, 10 timed steps
    python scripts/bench_checkpointing.py --quick     # 1 layer, 3 steps: a smoke run

The LAST line reads ``recomputed/kept full_smart: time X.XX, memory Y.YY``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_speed import DEFAULT_ENCODER, TASK, RssSampler, make_batch, step, sync  # noqa: E402
from mtsmart.config import SmartConfig, TrainConfig  # noqa: E402
from mtsmart.cpu_allocator import keep_freed_memory  # noqa: E402
from mtsmart.ema import MeanTeacher  # noqa: E402
from mtsmart.model import MultiTaskModel  # noqa: E402
from mtsmart.optim import build_optimizer  # noqa: E402

VARIANTS = ("plain", "full_smart")


def build(args, device) -> dict[str, tuple]:
    """One model per setting, the same weights: (model, teacher, optimizer)."""
    torch.manual_seed(0)
    model = MultiTaskModel.from_pretrained(args.encoder, [], num_hidden_layers=args.num_hidden_layers)
    model.add_head(TASK, 2, 0.1)
    recomputed = copy.deepcopy(model)
    recomputed.enable_gradient_checkpointing()
    built = {}
    for name, m in (("kept", model), ("recomputed", recomputed)):
        m.to(device).train()
        optimizer = build_optimizer(m, TrainConfig().optim)
        for group in optimizer.param_groups:
            group["lr"] = 1e-9  # the same work every step
        built[name] = (m, MeanTeacher(m), optimizer)
    return built


def run_step(built, setting, variant, batch, cfg):
    model, teacher, optimizer = built[setting]
    step(variant, model, teacher, None, optimizer, batch, cfg)


def measure_memory(built, batch, cfg, device, samples=2) -> dict[str, int]:
    memory = {}
    for setting in built:
        run_step(built, setting, "full_smart", batch, cfg)  # allocate the optimizer state
        for variant in VARIANTS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                run_step(built, setting, variant, batch, cfg)
                memory[f"{setting}:{variant}"] = torch.cuda.max_memory_allocated() - base
                continue
            peaks = []
            for _ in range(samples):
                with RssSampler() as sampler:
                    run_step(built, setting, variant, batch, cfg)
                peaks.append(sampler.extra)
            memory[f"{setting}:{variant}"] = min(peaks)
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default=str(DEFAULT_ENCODER))
    parser.add_argument("--num-hidden-layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shape", default="16x128")
    parser.add_argument("--quick", action="store_true", help="1 layer, 1+3 steps")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.num_hidden_layers, args.steps, args.warmup = 1, 3, 1
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    built = build(args, device)
    batch = make_batch(*map(int, args.shape.split("x")), built["kept"][0].encoder.config.vocab_size, device, seed=0)
    cfg = SmartConfig(mode="full", epsilon=1e-3, noise_std=1e-3, step_size=1e-3)
    if args.memory_only:
        print(json.dumps(measure_memory(built, batch, cfg, device)))
        return
    if device.type == "cpu":
        keep_freed_memory()  # timing as training runs
    names = [(s, v) for s in built for v in VARIANTS]
    times = {name: [] for name in names}
    for round_index in range(args.warmup + args.steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # rotate: no variant always follows another
            sync(device)
            start = time.perf_counter()
            run_step(built, *name, batch, cfg)
            sync(device)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    if device.type == "cpu":
        cmd = [sys.executable, __file__, "--memory-only", "--encoder", args.encoder, "--shape", args.shape,
               "--threads", str(args.threads)] + (["--num-hidden-layers", str(args.num_hidden_layers)]
                                                   if args.num_hidden_layers else [])
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        memory = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                            .stdout.strip().splitlines()[-1])
    else:
        memory = measure_memory(built, batch, cfg, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"device: {device}  threads: {torch.get_num_threads()}  layers: "
          f"{built['kept'][0].encoder.config.num_hidden_layers}  batch x length: {args.shape}  "
          f"steps: {args.steps} (+{args.warmup} warm-up)")
    print(f"{'step':<12}{'activations':<13}{'median s':>10}{'x kept':>8}{'peak MiB':>10}{'x kept':>8}")
    for variant in VARIANTS:
        for setting in built:
            t, m = median[setting, variant], memory[f"{setting}:{variant}"]
            print(f"{variant:<12}{setting:<13}{t:>10.3f}{t / median['kept', variant]:>8.2f}"
                  f"{m / 2**20:>10.0f}{m / max(memory[f'kept:{variant}'], 1):>8.2f}")
    print(f"recomputed/kept full_smart: time {median['recomputed', 'full_smart'] / median['kept', 'full_smart']:.2f}, "
          f"memory {memory['recomputed:full_smart'] / max(memory['kept:full_smart'], 1):.2f}")


if __name__ == "__main__":
    main()
