"""Q2: does multi-task training help? Per-task fine-tuning from multi-task checkpoints,
compared with single-task fine-tuning of the raw encoder under the same budget.

    python scripts/q2_grid.py run --start mt=runs/glue-mt-1epoch/best --tag ft-plain
    python scripts/q2_grid.py run --start mt-smart=runs/glue-mt-smart-1epoch/best --tag ft-plain -- --smart off
    python scripts/q2_grid.py summary

`run` fine-tunes each start checkpoint on each task with ``mtsmart finetune`` (the task
file's recipe: 3 epochs, batch 32, lr 1e-4) and appends one JSON line per run to
bench_results/q2.jsonl, skipping runs already there. Extra ``mtsmart finetune``
arguments go after ``--``. `summary` prints one table: the single-task baselines (plain
runs of the Q1 grid, bench_results/q1.jsonl, same recipe from the raw encoder), the
multi-task checkpoints before fine-tuning, and every fine-tuned start point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

from q1_grid import DEFAULT_RESULTS as Q1_RESULTS
from q1_grid import REPO, SHARED, fmt, load_results, run_and_read

DEFAULT_RESULTS = REPO / "bench_results" / "q2.jsonl"


def run_grid(args, extra: list[str]) -> None:
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["start"], r["task"], r["seed"], r["tag"]) for r in load_results(results_path)}
    for spec in args.start:
        label, _, checkpoint = spec.partition("=")
        if not checkpoint:
            raise SystemExit(f"--start {spec!r}: expected LABEL=CHECKPOINT")
        for task in args.tasks.split(","):
            for seed in (int(s) for s in (args.seeds or "1").split(",")):
                if (label, task, seed, args.tag) in done:
                    continue
                out = REPO / "runs" / "q2" / args.tag / f"{label}-{task}-s{seed}"
                cmd = [sys.executable, "-m", "mtsmart", "finetune", checkpoint, "--task", task,
                       "--data-dir", args.data_dir, "--output", str(out), "--overwrite", "--quiet",
                       "--seed", str(seed), "--epochs", str(args.epochs), "--eval-every", "0",
                       "--num-threads", str(args.threads), *extra]
                summary, wall = run_and_read(cmd, out)
                record = {"start": label, "checkpoint": checkpoint, "task": task, "seed": seed,
                          "tag": args.tag, "final": summary["last"]["results"][task],
                          "best": summary["best"]["results"][task],
                          "train_seconds": summary["train_seconds"], "wall_seconds": wall,
                          "updates": summary["total_updates"], "command": " ".join(cmd[1:]),
                          "date": time.strftime("%Y-%m-%d")}
                with open(results_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"{label} {task} seed {seed}: {record['final']}  ({wall:.0f} s)", flush=True)


def summarize(args) -> None:
    # Filtering by seed keeps a one-seed comparison like with like (same data orders).
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    finetuned = [r for r in load_results(Path(args.results)) if seeds is None or r["seed"] in seeds]
    baselines = [r for r in load_results(Path(args.q1_results))
                 if r["variant"] == "plain" and r["tag"] == args.baseline_tag
                 and (seeds is None or r["seed"] in seeds)]
    tasks = args.tasks.split(",")
    rows: list[tuple[str, dict[str, dict[str, list[float]]]]] = []

    def collect(name: str, records: list[dict]) -> None:
        by_task: dict[str, dict[str, list[float]]] = {}
        for r in sorted(records, key=lambda r: r["seed"]):
            for metric, value in r["final"].items():
                by_task.setdefault(r["task"], {}).setdefault(metric, []).append(value)
        rows.append((name, by_task))

    collect(f"single task, raw encoder (Q1 plain, tag {args.baseline_tag})", baselines)
    for spec in args.checkpoint_results:
        label, _, path = spec.partition("=")
        results = json.loads(Path(path).read_text())["last"]["results"]
        rows.append((f"{label}, no fine-tuning", {t: {m: [v] for m, v in results[t].items()}
                                                   for t in results}))
    for start, tag in dict.fromkeys((r["start"], r["tag"]) for r in finetuned):
        collect(f"{start} → fine-tune ({tag})",
                [r for r in finetuned if r["start"] == start and r["tag"] == tag])

    # The task file's first metric is the one model selection averages; it leads each task.
    task_defs = yaml.safe_load((REPO / "task_defs" / "glue.yaml").read_text())["tasks"]
    metrics = {task: list(task_defs[task]["metrics"][:1]) for task in tasks}
    for _, by_task in rows:
        for task in tasks:
            metrics[task] += [m for m in by_task.get(task, {}) if m not in metrics[task]]
    print("final dev metric after the last epoch (percent), mean ± std over seeds where several\n")
    columns = [f"{t} {m}" for t in tasks for m in metrics[t]]
    print("| start | " + " | ".join(columns) + " | avg (first metrics) |")
    print("|" + "---|" * (len(columns) + 2))
    for name, by_task in rows:
        cells, firsts = [], []
        for task in tasks:
            for i, metric in enumerate(metrics[task]):
                values = by_task.get(task, {}).get(metric, [])
                cells.append(fmt(values) if values else "–")
                if i == 0 and values:
                    firsts.append(statistics.mean(values))
        avg = f"{100 * statistics.mean(firsts):.2f}" if len(firsts) == len(tasks) else "–"
        print(f"| {name} | " + " | ".join(cells) + f" | {avg} |")


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "summary"])
    parser.add_argument("--start", action="append", default=[],
                        help="LABEL=CHECKPOINT to fine-tune from (repeatable)")
    parser.add_argument("--tasks", default="rte,mrpc,stsb,cola")
    parser.add_argument("--seeds", default=None,
                        help="run: seeds to fine-tune (default 1); summary: only these seeds (default all)")
    parser.add_argument("--tag", default="default", help="names this recipe in the results file")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS))
    parser.add_argument("--q1-results", default=str(Q1_RESULTS))
    parser.add_argument("--baseline-tag", default="pool-mean",
                        help="Q1 tag of the single-task plain runs with the same recipe")
    parser.add_argument("--checkpoint-results", action="append", default=[],
                        help="LABEL=results.json of a multi-task run, shown before fine-tuning")
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.action == "run":
        if not args.start:
            parser.error("run needs at least one --start LABEL=CHECKPOINT")
        run_grid(args, extra)
    else:
        summarize(args)


if __name__ == "__main__":
    main()
