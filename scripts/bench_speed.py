"""S1: what does SMART cost? Time a full training step (objective, backward, clip,
optimizer, teacher update) of plain, adversarial-only, Bregman-only and full SMART, and
of a naive reference, alternating between variants in one process on the same batches.

    python scripts/bench_speed.py            # 16x128 and 32x64, 12 timed steps, ~10 min on 2 cores
    python scripts/bench_speed.py --quick    # 1-layer encoder, 16x128 only, < 1 minute

Prints a table (median seconds per step, ratio to plain, peak extra memory of a step) and
as its LAST line ``full_smart/plain = X.XX`` for the 16x128 case.

It also times the passes a step is made of (forward, backward, input-only backward,
teacher forward, update) and prints the arithmetic floor they imply on this machine next
to the measured ratios: how a backward compares with a forward differs between machines.

Peak memory: on CPU, the resident set size sampled every millisecond during a step, minus
its value just before the step, measured in a second process started with a fixed glibc
mmap threshold, so that large tensors return to the OS when freed and each step is
measured on its own (the fixed threshold slows allocation, so timing runs without it).
On CUDA: torch.cuda.max_memory_allocated.

Timing on CPU keeps freed memory in the process, as training does
(mtsmart/cpu_allocator.py); ``--glibc-defaults`` times with glibc's own thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mtsmart import smart  # noqa: E402
from mtsmart.config import SmartConfig  # noqa: E402
from mtsmart.cpu_allocator import keep_freed_memory  # noqa: E402
from mtsmart.ema import MeanTeacher  # noqa: E402
from mtsmart.losses import symmetric_kl  # noqa: E402
from mtsmart.model import MultiTaskModel, quiet_transformers  # noqa: E402
from mtsmart.objective import batch_objective  # noqa: E402
from mtsmart.task_types import get_task_type  # noqa: E402
from mtsmart.optim import build_optimizer  # noqa: E402
from mtsmart.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENCODER = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
TASK = "bench"
CLASSIFICATION = get_task_type("classification")

# variant → (adversarial weight, Bregman weight, implementation)
VARIANTS = {
    "plain": (0.0, 0.0, "mtsmart"),
    "adversarial": (1.0, 0.0, "mtsmart"),
    "bregman": (0.0, 1.0, "mtsmart"),
    "full_smart": (1.0, 1.0, "mtsmart"),
    "adversarial_memory_efficient": (1.0, 0.0, "memory_efficient"),
    "full_smart_memory_efficient": (1.0, 1.0, "memory_efficient"),
    "naive_adversarial": (1.0, 0.0, "naive"),
    "naive_full": (1.0, 1.0, "naive"),
}


def naive_objective(model, teacher_model, batch, cfg: SmartConfig, adv_weight, prox_weight):
    """The reference a straightforward loop builds: the ascent gradient through a full
    .backward() (parameter gradients computed and thrown away) and the teacher run with
    an autograd graph."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    embeds = model.embed(ids)
    logits = model(TASK, inputs_embeds=embeds, attention_mask=mask)
    total = CLASSIFICATION.loss(logits, batch["labels"])
    if adv_weight > 0:
        noise = (torch.randn_like(embeds) * cfg.noise_std).requires_grad_()
        div = symmetric_kl(model(TASK, inputs_embeds=embeds.detach() + noise, attention_mask=mask),
                           logits.detach())
        div.backward()
        grad = noise.grad
        model.zero_grad(set_to_none=True)
        noise = smart.project_per_token(
            noise.detach() + cfg.step_size * smart.normalize_per_token(grad, cfg.norm), cfg.epsilon, cfg.norm)
        adv = symmetric_kl(model(TASK, inputs_embeds=embeds + noise, attention_mask=mask), logits)
        total = total + adv_weight * adv
    if prox_weight > 0:
        teacher_logits = teacher_model(TASK, inputs_embeds=teacher_model.embed(ids), attention_mask=mask)
        total = total + prox_weight * symmetric_kl(logits, teacher_logits.detach())
    return total


class RssSampler:
    """Peak resident memory above the level at start, sampled every millisecond."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra = self.peak - self.start


def make_batch(batch_size, seq_len, vocab_size, device, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, vocab_size, (batch_size, seq_len), generator=g).to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (batch_size,), generator=g).to(device),
    }


def step(variant, model, teacher, naive_teacher, optimizer, batch, cfg):
    adv_w, prox_w, implementation = VARIANTS[variant]
    if implementation == "naive":
        naive_objective(model, naive_teacher, batch, cfg, adv_w, prox_w).backward()
    else:
        losses = batch_objective(model, teacher, TASK, CLASSIFICATION, batch,
                                 replace(cfg, memory_efficient=implementation == "memory_efficient"),
                                 adv_weight=adv_w, prox_weight=prox_w,
                                 backward=lambda loss: loss.backward())
        if not losses.backward_done:
            losses.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if prox_w > 0:
        teacher.update(model, 0.999)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def pass_timers(model, teacher, optimizer, batch):
    """The passes a SMART step is made of, each timed on its own, so the step times can be
    set against the arithmetic floor of THIS machine (how a forward, a backward and an
    input-only backward compare differs between CPUs and GPUs: dropout's random masks,
    for one, make a CPU forward relatively dear)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def forward(embeds):
        return CLASSIFICATION.loss(model(TASK, inputs_embeds=embeds, attention_mask=mask), batch["labels"])

    def forward_only():
        forward(model.embed(ids))

    def forward_backward():
        forward(model.embed(ids)).backward()
        optimizer.zero_grad(set_to_none=True)

    def forward_input_backward():
        base = model.embed(ids).detach()
        noise = torch.zeros_like(base, requires_grad=True)
        torch.autograd.grad(forward(base + noise), [noise])

    def teacher_forward():
        teacher.forward(TASK, inputs_embeds=teacher.model.embed(ids), attention_mask=mask)

    def optimizer_update() -> float:  # clip + step, timed alone after an untimed backward
        forward(model.embed(ids)).backward()
        sync(ids.device)
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(ids.device)
        return time.perf_counter() - start

    def teacher_update():
        teacher.update(model, 0.999)

    return {"pass:forward": forward_only, "pass:forward+backward": forward_backward,
            "pass:forward+input_backward": forward_input_backward,
            "pass:teacher_forward": teacher_forward, "pass:update": optimizer_update,
            "pass:teacher_update": teacher_update}


def arithmetic_floor(medians: dict) -> dict:
    """Step cost in units of the plain step if SMART cost exactly its passes:
    clean forward, ascent forward + input-only backward, perturbed forward, one backward
    through both graphs, update (+ teacher forward and teacher update for full SMART)."""
    forward = medians["pass:forward"]
    backward = medians["pass:forward+backward"] - forward
    update = medians["pass:update"]
    ascent = medians["pass:forward+input_backward"]
    plain = forward + backward + update
    adversarial = 2 * forward + ascent + 2 * backward + update
    teacher = medians["pass:teacher_forward"] + medians["pass:teacher_update"]
    return {"adversarial": adversarial / plain, "full_smart": (adversarial + teacher) / plain,
            "bregman": (plain + teacher) / plain}


def time_shape(model, teacher, naive_teacher, optimizer, cfg, shape, args, device):
    batch = make_batch(*shape, model.encoder.config.vocab_size, device, seed=shape[0])
    work = {v: (lambda v=v: step(v, model, teacher, naive_teacher, optimizer, batch, cfg)) for v in VARIANTS}
    work.update(pass_timers(model, teacher, optimizer, batch))
    times = {name: [] for name in work}
    names = list(work)
    for round_index in range(args.warmup + args.steps):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:  # rotate so no variant always follows the same one
            sync(device)
            start = time.perf_counter()
            own_time = work[name]()  # a pass with untimed set-up reports its own time
            sync(device)
            if round_index >= args.warmup:
                times[name].append(own_time if own_time is not None else time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}, times


def memory_shape(model, teacher, naive_teacher, optimizer, cfg, shape, device, samples=2):
    batch = make_batch(*shape, model.encoder.config.vocab_size, device, seed=shape[0])
    step("full_smart", model, teacher, naive_teacher, optimizer, batch, cfg)  # allocate optimizer state
    memory = {}
    for variant in VARIANTS:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(variant, model, teacher, naive_teacher, optimizer, batch, cfg)
            memory[variant] = torch.cuda.max_memory_allocated() - base
        else:
            peaks = []
            for _ in range(samples):  # the least of them: a stray allocation inflates one
                with RssSampler() as sampler:
                    step(variant, model, teacher, naive_teacher, optimizer, batch, cfg)
                peaks.append(sampler.extra)
            memory[variant] = min(peaks)
    return memory


def measure_memory_in_subprocess(args) -> dict:
    """Rerun this script with --memory-only under a fixed mmap threshold; read its JSON."""
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, __file__, "--memory-only", "--encoder", args.encoder, "--shapes", args.shapes,
           "--threads", str(args.threads), "--memory-samples", str(args.memory_samples)]
    if args.num_hidden_layers:
        cmd += ["--num-hidden-layers", str(args.num_hidden_layers)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default=str(DEFAULT_ENCODER))
    parser.add_argument("--num-hidden-layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", default="16x128,32x64")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in under a minute: 1 layer, 16x128, 1+3 steps, one memory sample")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="time with glibc's own thresholds instead of keeping freed memory "
                             "as training does (mtsmart/cpu_allocator.py)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-samples", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.num_hidden_layers, args.steps, args.warmup, args.shapes = 1, 3, 1, "16x128"
        args.memory_samples = 1
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    if Path(args.encoder).exists() or not args.encoder.startswith("/"):
        model = MultiTaskModel.from_pretrained(args.encoder, [], num_hidden_layers=args.num_hidden_layers)
    else:  # no local copy: the same architecture, randomly initialised (timing is the same)
        from transformers import BertConfig

        with quiet_transformers():
            config = BertConfig(hidden_size=384, num_hidden_layers=args.num_hidden_layers or 6,
                                num_attention_heads=12, intermediate_size=1536)
        model = MultiTaskModel.from_config(config, [])
    model.add_head(TASK, 2, 0.1)
    model.to(device).train()
    teacher = MeanTeacher(model)
    naive_teacher = MeanTeacher(model).model
    naive_teacher.requires_grad_(True)  # a naive teacher is just another module with grads
    optimizer = build_optimizer(model, TrainConfig().optim)
    for group in optimizer.param_groups:
        group["lr"] = 1e-9  # keep the weights (and so the work per step) the same throughout
    cfg = SmartConfig(mode="full", epsilon=1e-3, noise_std=1e-3, step_size=1e-3)

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.memory_only:
        print(json.dumps({f"{b}x{s}": memory_shape(model, teacher, naive_teacher, optimizer, cfg, (b, s), device,
                                                   args.memory_samples)
                          for b, s in shapes}))
        return
    kept = device.type == "cpu" and not args.glibc_defaults and keep_freed_memory()
    print(f"device: {device}  threads: {torch.get_num_threads()}  torch {torch.__version__}  "
          f"layers: {model.encoder.config.num_hidden_layers}  steps: {args.steps} (+{args.warmup} warm-up)  "
          f"freed memory kept: {'yes' if kept else 'no'}")
    report = {}
    timings = {shape: time_shape(model, teacher, naive_teacher, optimizer, cfg, shape, args, device)
               for shape in shapes}
    memories = measure_memory_in_subprocess(args) if device.type == "cpu" else {
        f"{b}x{s}": memory_shape(model, teacher, naive_teacher, optimizer, cfg, (b, s), device) for b, s in shapes}
    for shape in shapes:
        (medians, times), memory = timings[shape], memories[f"{shape[0]}x{shape[1]}"]
        report[f"{shape[0]}x{shape[1]}"] = {"median_s": medians, "times_s": times, "peak_extra_bytes": memory}
        plain_t, plain_m = medians["plain"], max(memory["plain"], 1)
        print(f"\nbatch x length = {shape[0]} x {shape[1]}")
        width = max(map(len, VARIANTS)) + 2
        print(f"{'variant':<{width}}{'median s/step':>14}{'x plain':>9}{'peak MiB':>10}{'x plain':>9}")
        for variant in VARIANTS:
            print(f"{variant:<{width}}{medians[variant]:>14.3f}{medians[variant] / plain_t:>9.2f}"
                  f"{memory[variant] / 2**20:>10.0f}{memory[variant] / plain_m:>9.2f}")
        floor = arithmetic_floor(medians)
        report[f"{shape[0]}x{shape[1]}"]["floor_x_plain"] = floor
        print("passes (median s): " + ", ".join(f"{name[5:]} {t:.3f}" for name, t in medians.items()
                                                if name.startswith("pass:")))
        print("arithmetic floor on this machine (x plain, from those passes): "
              + ", ".join(f"{v} {f:.2f} (measured {medians[v] / plain_t:.2f})" for v, f in floor.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    first = report[f"{shapes[0][0]}x{shapes[0][1]}"]["median_s"]
    print(f"full_smart/plain = {first['full_smart'] / first['plain']:.2f}")


if __name__ == "__main__":
    main()
