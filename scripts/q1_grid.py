"""Q1: does SMART beat plain fine-tuning? Single-task runs of plain, adversarial-only,
Bregman-only and full SMART on GLUE dev sets, several seeds, one shared recipe.

    python scripts/q1_grid.py run --tasks rte,mrpc,cola,stsb --seeds 1,2,3
    python scripts/q1_grid.py run --quick                 # 2-layer encoder, RTE, 1 seed, minutes
    python scripts/q1_grid.py summary                     # Markdown tables from the results file

Each finished run appends one JSON line to the results file (default
bench_results/q1.jsonl); ``run`` skips combinations already there, so a long grid can be
completed across several sittings. Extra ``mtsmart train`` arguments go after ``--``:

    python scripts/q1_grid.py run --tasks rte --variants full --tag eps0.1 -- --epsilon 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTSMART_SHARED", REPO.parent / "shared"))
DEFAULT_RESULTS = REPO / "bench_results" / "q1.jsonl"
VARIANTS = ("plain", "adversarial", "bregman", "full")
SMART_MODE = {"plain": "off", "adversarial": "adversarial", "bregman": "bregman", "full": "full"}


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_and_read(cmd: list[str], out: Path) -> tuple[dict, float]:
    """Run one mtsmart command; return its results.json and wall seconds, or stop the grid."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"run failed: {' '.join(cmd)}")
    return json.loads((out / "results.json").read_text()), wall


def run_grid(args, extra: list[str]) -> None:
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["task"], r["variant"], r["seed"], r["tag"]) for r in load_results(results_path)}
    tasks = args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    for task in tasks:
        for seed in seeds:
            for variant in variants:
                key = (task, variant, seed, args.tag)
                if key in done:
                    continue
                out = REPO / "runs" / "q1" / args.tag / f"{task}-{variant}-s{seed}"
                cmd = [sys.executable, "-m", "mtsmart", "train", str(REPO / "task_defs" / "glue.yaml"),
                       "--tasks", task, "--encoder", args.encoder, "--data-dir", args.data_dir,
                       "--output", str(out), "--overwrite", "--quiet", "--seed", str(seed),
                       "--smart", SMART_MODE[variant], "--epochs", str(args.epochs),
                       "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                       "--num-threads", str(args.threads), *extra]
                if args.num_hidden_layers:
                    cmd += ["--num-hidden-layers", str(args.num_hidden_layers)]
                if args.max_steps:
                    cmd += ["--max-steps", str(args.max_steps)]
                summary, wall = run_and_read(cmd, out)
                record = {"task": task, "variant": variant, "seed": seed, "tag": args.tag,
                          "final": summary["last"]["results"][task],
                          "best": summary["best"]["results"][task],
                          "teacher_final": summary["last"].get("teacher_results", {}).get(task),
                          "train_seconds": summary["train_seconds"], "wall_seconds": wall,
                          "updates": summary["total_updates"], "command": " ".join(cmd[1:]),
                          "date": time.strftime("%Y-%m-%d")}
                with open(results_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"{task} {variant} seed {seed}: {record['final']}  ({wall:.0f} s)", flush=True)


def fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f} (1 seed)"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def summary_columns(records: list[dict], tags: list[str]) -> list[tuple[str, str, str]]:
    """(variant, tag, label) per table column: one column per variant, or per variant and
    recipe where several of the given tags ran the same variant (e.g. full SMART at two ε)."""
    columns = []
    for variant in VARIANTS:
        variant_tags = [t for t in tags if any(r["variant"] == variant and r["tag"] == t for r in records)]
        for tag in variant_tags:
            columns.append((variant, tag, variant if len(variant_tags) == 1 else f"{variant} [{tag}]"))
    return columns


def headline_metrics(task_file: Path) -> dict[str, str]:
    """Each task's first listed metric (CoLA: MCC; results files sort metric names)."""
    import yaml

    tasks = yaml.safe_load(task_file.read_text())["tasks"]
    return {name: spec["metrics"][0] for name, spec in tasks.items()}


def print_paired_gains(tasks, columns, headline, runs_of) -> None:
    """Each column minus plain on the seeds both ran: seed-to-seed spread cancels, and the
    averages do not mix different seed counts. A recipe that ran its own plain arm (a tag
    that changes the shared recipe, e.g. the encoder's dropout) is paired with it; the
    others with the first plain column."""
    plain_tags = [t for v, t, _ in columns if v == "plain"]
    others = [c for c in columns if c[0] != "plain"]
    if not plain_tags or not others:
        return
    print("\npaired by seed: headline metric minus plain's on the same seed (plain of the same "
          f"tag where it ran, else [{plain_tags[0]}]), mean over the shared seeds (each seed's "
          "difference in brackets); points\n")
    print("| task | " + " | ".join(label for _, _, label in others) + " |")
    print("|" + "---|" * (1 + len(others)))
    gains: dict[str, list[float]] = {label: [] for _, _, label in others}
    for task in tasks:
        metric = headline[task]
        cells = []
        for variant, tag, label in others:
            plain_tag = tag if runs_of(task, "plain", tag) else plain_tags[0]
            baseline = {r["seed"]: r["final"][metric] for r in runs_of(task, "plain", plain_tag)}
            diffs = [100 * (r["final"][metric] - baseline[r["seed"]])
                     for r in runs_of(task, variant, tag) if r["seed"] in baseline]
            if not diffs:
                cells.append("–")
                continue
            gains[label].append(statistics.mean(diffs))
            cells.append(f"{statistics.mean(diffs):+.2f} [" + ", ".join(f"{d:+.1f}" for d in diffs) + "]")
        print(f"| {task} ({metric}) | " + " | ".join(cells) + " |")
    complete = {label: g for label, g in gains.items() if len(g) == len(tasks)}
    if complete:
        print("\naverage over tasks of the paired gain: " + ", ".join(
            f"{label} {statistics.mean(g):+.2f}" for label, g in complete.items()))


def summarize(args) -> None:
    tags = args.tag.split(",")  # several tags: e.g. a plain baseline and a SMART recipe
    wanted = args.tasks.split(",")
    records = [r for r in load_results(Path(args.results)) if r["tag"] in tags and r["task"] in wanted]
    if not records:
        raise SystemExit(f"no results with tag {args.tag!r} in {args.results}")
    tasks = list(dict.fromkeys(r["task"] for r in records))
    columns = summary_columns(records, tags)
    headline = headline_metrics(REPO / "task_defs" / "glue.yaml")

    def runs_of(task: str, variant: str, tag: str) -> list[dict]:
        return sorted((r for r in records if (r["task"], r["variant"], r["tag"]) == (task, variant, tag)),
                      key=lambda r: r["seed"])

    print(f"results: {args.results}, tags {args.tag!r}; final dev metric after the last epoch, "
          "mean ± std over seeds (every seed in brackets); percent\n")
    print("| task | metric | " + " | ".join(label for _, _, label in columns) + " |")
    print("|" + "---|" * (2 + len(columns)))
    main_means: dict[str, list[float]] = {label: [] for _, _, label in columns}
    for task in tasks:
        metrics = sorted(next(r for r in records if r["task"] == task)["final"],
                         key=lambda m: m != headline[task])
        for metric in metrics:
            cells = []
            for variant, tag, label in columns:
                values = [r["final"][metric] for r in runs_of(task, variant, tag)]
                if not values:
                    cells.append("–")
                    continue
                seeds = ", ".join(f"{100 * v:.1f}" for v in values)
                cells.append(f"{fmt(values)} [{seeds}]")
                if metric == metrics[0]:
                    main_means[label].append(statistics.mean(values))
            print(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    print("\nbest of seeds (as the paper reports), headline metric of each task:\n")
    print("| task | " + " | ".join(label for _, _, label in columns) + " |")
    print("|" + "---|" * (1 + len(columns)))
    for task in tasks:
        metric = headline[task]
        cells = []
        for variant, tag, _ in columns:
            values = [r["final"][metric] for r in runs_of(task, variant, tag)]
            cells.append(f"{100 * max(values):.2f}" if values else "–")
        print(f"| {task} ({metric}) | " + " | ".join(cells) + " |")
    print_paired_gains(tasks, columns, headline, runs_of)
    complete = {label: m for label, m in main_means.items() if len(m) == len(tasks)}
    if "plain" in complete:
        print("\naverage over tasks of the headline metric's mean, and gain over plain:\n")
        for label, means in complete.items():
            gain = statistics.mean(means) - statistics.mean(complete["plain"])
            print(f"- {label}: {100 * statistics.mean(means):.2f} ({100 * gain:+.2f})")
    seconds = {label: statistics.median([r["train_seconds"] for task in tasks for r in runs_of(task, variant, tag)])
               for variant, tag, label in columns}
    print("\nmedian training seconds per run: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "summary"])
    parser.add_argument("--tasks", default="rte,mrpc,cola,stsb")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--tag", default="default",
                        help="names a recipe; results group by it (summary: comma-separated tags)")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS))
    parser.add_argument("--encoder", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-hidden-layers", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="2 layers, RTE, seed 1, 60 steps")
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if args.quick:
        args.num_hidden_layers, args.tasks, args.seeds, args.max_steps = 2, "rte", "1", 60
        if args.tag == "default":
            args.tag = "quick"
    if args.action == "run":
        run_grid(args, extra)
    else:
        summarize(args)


if __name__ == "__main__":
    main()
