"""Command line: ``mtsmart train | evaluate | predict | finetune | adapt | export | compare |
summarize``. The only reader of sys.argv.

Every user error ends as one line on stderr and exit code 2; an operating-system error
(a full disk) as one line and 1; Ctrl-C 130, SIGTERM 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
from typing import IO, Optional, Sequence

from mtsmart.arguments import (EXIT_USAGE, build_parser, collect_overrides, parse_args, repeated_flags,
                               settings_as_overrides)
from mtsmart.config import ADAPT_SETS_PER_RUN, TrainConfig, load_yaml
from mtsmart.errors import ConfigError, DataError, MtsmartError, os_error_line, report_error, torchrun_ranks
from mtsmart.setting_notes import note_unused_settings


def check_writable(path: str) -> None:
    """Refuse an output path that cannot be written, before any work: a file where a folder
    would have to be, or a folder this process may not write in."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"--out {path}: cannot write there ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK):
        raise ConfigError(f"--out {path}: cannot write there (no permission in {ancestor})")


def command_train(args: argparse.Namespace) -> int:
    from mtsmart.distributed import Replicas
    from mtsmart.tasks import load_task_file, resolve_data_dir, select_tasks
    from mtsmart.run_folder import (check_not_in_use, check_output_dir, check_resume_settings, claim_output_dir,
                                    lock_run, prepare_resume)
    from mtsmart.train import Trainer

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --output, --overwrite replaces it: give one")
    overrides = collect_overrides(args)
    task_file = load_task_file(args.task_file, overrides)
    tasks = select_tasks(task_file.tasks, args.tasks, "--tasks")
    note_unused_settings(tasks, task_file.training, overrides)
    data_dir = resolve_data_dir(args.data_dir, task_file)
    if args.dry_run:
        return dry_run(args, task_file.training, tasks, data_dir)
    replicas = Replicas.from_environment()
    lock = None  # the run folder's, held by the main replica while it trains there

    def check_output() -> Optional[IO[str]]:
        check_not_in_use(args.output)
        if not args.resume:
            check_output_dir(args.output, overwrite=args.overwrite, resume=False)
            return None
        held = lock_run(args.output) if os.path.isdir(args.output) else None
        try:  # finishes an interrupted save, then compares the settings
            prepare_resume(args.output)
            check_resume_settings(args.output, task_file.training, tasks)
        except BaseException:
            if held is not None:
                held.close()
            raise
        return held

    try:
        # Only the main replica touches the output directory; the others learn its verdict.
        lock = replicas.on_main(check_output)
        trainer = Trainer(tasks, task_file.training, data_dir, args.output, resume=args.resume,
                          cache_dir=args.cache_dir, show_progress=not args.quiet, replicas=replicas,
                          command=args.command_line)
        try:
            # every setting, the encoder and every split checked before an old run is cleared
            trainer.prepare()
            if not args.resume:  # the other replicas must not wait in setup()
                lock = replicas.on_main(lambda: claim_output_dir(args.output, overwrite=args.overwrite))
            trainer.setup()
            summary = trainer.train()
        finally:
            trainer.cleanup()
    finally:
        replicas.close()
        if lock is not None:
            lock.close()
    if summary is None:
        return 0  # not the main replica: it prints nothing
    from mtsmart.evaluation import format_table

    print(f"\nbest checkpoint (step {summary['best']['global_step']}, "
          f"{summary['select_metric']}={100 * summary['best']['selection_score']:.2f}):")
    print(format_table(summary["best"]["results"], tasks, {n: t.eval_split for n, t in tasks.items()}))
    if summary["stopped_early"]:
        print(f"\nstopped early at step {summary['stopped_at']} of {summary['total_updates']}: "
              f"no better {summary['select_metric']} in the last {summary['patience']} evaluations")
    print(f"\n{steps_trained(summary['first_step'], summary['stopped_at'])} in "
          f"{summary['session_seconds']:.0f} s; checkpoints in {args.output}/best and {args.output}/last")
    print(f"watch it in TensorBoard:  tensorboard --logdir {args.output}")
    return 0


MIN_RESAMPLES = 40  # a 95% interval leaves 2.5% of the resamples out at each end: one of 40


def check_resamples(resamples: int, usual: str) -> None:
    """Fewer resamples print an 'interval' that need not hold the estimate itself."""
    if resamples < MIN_RESAMPLES:
        raise ConfigError(f"--bootstrap: a 95% interval needs at least {MIN_RESAMPLES} resamples, got "
                          f"{resamples} ({usual})")


def p_value(share: float, resamples: int) -> str:
    """A bootstrap share as a p-value: none of N resamples says < 1/N, not 0 (nor all, 1)."""
    if share == 0:
        return f"< {1 / resamples:.3g}"
    if share == 1:
        return f"> {1 - 1 / resamples:.3g}"
    return f"= {share:.3f}"


def steps_trained(first_step: int, stopped_at: int) -> str:
    """What this session trained: a resumed run counts only its own updates."""
    if first_step == 0:
        return f"trained {stopped_at} steps"
    if stopped_at > first_step:
        return f"trained steps {first_step + 1}-{stopped_at} ({stopped_at - first_step} this session)"
    return f"trained nothing: the run had finished at step {stopped_at}"


def dry_run(args: argparse.Namespace, training, tasks, data_dir: str) -> int:
    """Everything ``mtsmart train`` would check and build before its first step, then the
    plan; the output folder is only inspected."""
    from mtsmart.data import read_split
    from mtsmart.dry_run import describe
    from mtsmart.run_folder import check_not_in_use, check_output_dir, check_resume_settings, resume_checkpoint
    from mtsmart.train import Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--dry-run runs as a single process: run it without torchrun")
    check_not_in_use(args.output)
    check_output_dir(args.output, overwrite=args.overwrite, resume=args.resume)
    if args.resume:
        check_resume_settings(args.output, training, tasks)
    trainer = Trainer(tasks, training, data_dir, args.output, resume=args.resume,
                      cache_dir=args.cache_dir, show_progress=False)
    try:
        trainer.prepare()
        for task in tasks.values():  # a split the run never reads (test): said, as train would not fail
            for split in sorted(set(task.splits) - {task.train_split, task.eval_split}):
                try:
                    read_split(task, split, data_dir, labeled=False)
                except DataError as err:
                    logging.warning("%s (this run does not read split %r)", err, split)
        print(describe(trainer, resume_checkpoint(args.output) if args.resume else training.encoder))
    finally:
        trainer.cleanup()
    print(f"\ndry run: every setting, the encoder and the splits checked (a split the run does not "
          f"read and could not be read is named above); nothing trained, {args.output} untouched")
    return 0


def _checkpoint_tasks(loaded, args: argparse.Namespace, names: Optional[str],
                      where: str) -> tuple[dict, dict[str, str]]:
    """The tasks to run, and the folder each one's data paths are relative to. With
    --task-defs the file's definitions (data sources, fields, lengths) replace the
    checkpoint's own for the tasks both have, provided the heads' outputs mean the same;
    the other tasks keep the checkpoint's data folder."""
    from mtsmart.tasks import DATA_DIR_ENV, check_same_head, load_task_file, resolve_data_dir, select_tasks

    tasks = dict(loaded.tasks)
    recorded = loaded.data_dir if loaded.data_dir and os.path.isdir(loaded.data_dir) else None  # moved: cwd
    data_dirs = dict.fromkeys(tasks, args.data_dir or os.environ.get(DATA_DIR_ENV) or recorded or os.getcwd())
    if args.task_defs:
        task_file = load_task_file(args.task_defs)
        for name, task in task_file.tasks.items():
            if name in tasks:
                check_same_head(task, tasks[name], loaded.path)
                tasks[name] = task
                data_dirs[name] = resolve_data_dir(args.data_dir, task_file, checkpoint_data=recorded)
    selected = select_tasks(tasks, None if names == "all" else names, where)
    return selected, {name: data_dirs[name] for name in selected}


def _check_split_declared(tasks: dict, split: Optional[str], flag: str) -> None:
    """--split for every task: where some lack it, the tasks that have it are named (GLUE's
    test files are declared for a few tasks only), before any is scored."""
    lacking = [name for name, task in tasks.items() if split is not None and split not in task.splits]
    if lacking:
        having = [name for name in tasks if name not in lacking]
        raise ConfigError(f"--split {split}: {', '.join(lacking)} declare{'s' if len(lacking) == 1 else ''} no such "
                          "split" + (f"; {flag} {','.join(having)} takes the tasks that do" if having else
                                     " (see each task's splits in the checkpoint's tasks.yaml, or --task-defs)"))


def _predict(loaded, task, split_name: str, data_dir: str, batch_size: int, device, labeled: bool = True):
    """A loaded checkpoint's predictions on one task's split (file order), and the split."""
    from mtsmart.data import default_cache_dir, load_tokenized
    from mtsmart.evaluation import predict_split

    split = load_tokenized(task, split_name, loaded.tokenizer, data_dir, default_cache_dir(), labeled=labeled)
    return predict_split(loaded.model, task, split, batch_size, loaded.tokenizer.pad_token_id or 0, device), split


def command_evaluate(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.evaluation import bootstrap_intervals, format_table, score_split
    from mtsmart.metric_logging import write_json
    from mtsmart.train import pick_device

    if args.bootstrap:
        check_resamples(args.bootstrap, "0 is off; 1000 is usual")
    if args.out:
        check_writable(args.out)
    device = pick_device()
    loaded = load_checkpoint(args.checkpoint, device, weights=args.weights)
    tasks, data_dirs = _checkpoint_tasks(loaded, args, args.tasks, "--tasks")
    _check_split_declared(tasks, args.split, "--tasks")
    results, split_names, intervals = {}, {}, {}
    for name, task in tasks.items():
        split_name = args.split or task.eval_split
        preds, split = _predict(loaded, task, split_name, data_dirs[name], args.batch_size, device)
        results[name] = score_split(task, preds, split)
        split_names[name] = split_name
        if args.bootstrap:
            intervals[name] = bootstrap_intervals(task, preds, split.targets, args.bootstrap)
    # the file is named after the split: each task's own, when they all share one name
    label = args.split or "+".join(sorted(set(split_names.values())))
    teacher = args.weights == "teacher"
    if teacher:
        print(f"{args.checkpoint}: the SMART mean teacher's weights")
    print(format_table(results, tasks, split_names, intervals))
    if intervals:
        print(f"\n[95% interval: percentile bootstrap over {args.bootstrap} resamples of each split's examples]")
    record = {"checkpoint": args.checkpoint, "weights": args.weights, "splits": split_names, "results": results,
              **({"intervals_95": intervals, "bootstrap_resamples": args.bootstrap} if intervals else {})}
    out, kept = args.out, []
    if out is None:  # the checkpoint's own file: a --tasks subset updates its tasks, keeps the rest
        out = os.path.join(args.checkpoint, f"eval_{label}{'_teacher' if teacher else ''}.json")
        kept = _keep_earlier_tasks(out, record)
    write_json(out, record)
    print(f"\nwrote {out}" + (f" (with the earlier results of {', '.join(kept)})" if kept else ""))
    return 0


def _keep_earlier_tasks(path: str, record: dict) -> list[str]:
    """Copy into ``record`` the tasks an earlier evaluation wrote to ``path`` that this one
    did not score, with their intervals where both drew as many resamples; the kept names."""
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = json.load(handle)
        kept = {name: (earlier["results"][name], earlier["splits"][name])
                for name in earlier["results"] if name not in record["results"]}
        intervals, resamples = earlier.get("intervals_95") or {}, earlier.get("bootstrap_resamples")
        intervals = {name: intervals[name] for name in kept if name in intervals}
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return []  # none, or not a file this command wrote: replaced
    for name, (results, split) in kept.items():
        record["results"][name], record["splits"][name] = results, split
    # intervals from another number of resamples would read as comparable: left out
    if intervals and record.get("bootstrap_resamples", resamples) == resamples:
        record["bootstrap_resamples"] = resamples
        record.setdefault("intervals_95", {}).update(intervals)
    return list(kept)


def command_predict(args: argparse.Namespace) -> int:
    from mtsmart.atomic_files import replacing
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.train import pick_device

    if args.input is not None and args.split is not None:
        raise ConfigError("--input and --split: predict either a file of your own or a split, not both")
    if args.input is not None and not os.path.isfile(args.input):
        raise ConfigError(f"--input {args.input}: " + ("a directory, expected a file" if os.path.isdir(args.input)
                                                       else "no such file"))
    check_writable(args.out)
    device = pick_device()
    loaded = load_checkpoint(args.checkpoint, device, weights=args.weights)
    tasks, data_dirs = _checkpoint_tasks(loaded, args, args.task, "--task")
    if args.input is not None:
        tasks = _with_input_split(tasks, args.input, args.quoting)
    elif args.quoting is not None:
        raise ConfigError("--quoting applies to --input: a split is read as its task definition says")
    else:
        _check_split_declared(tasks, args.split, "--task")
    # A trailing slash asks for a folder whatever its name (preds.v1/), as the shell's own tools read it.
    folder = os.path.isdir(args.out) or args.out.endswith(os.sep)
    extension = "" if folder else os.path.splitext(args.out)[1].lower()
    single_file = extension in (".tsv", ".txt")
    if not folder and not single_file and (extension or os.path.exists(args.out)):
        raise ConfigError(f"--out {args.out}: " + ("a file that is not .tsv or .txt" if os.path.exists(args.out)
                                                   else "predictions are written as tsv")
                          + "; give a .tsv file (one task) or a directory")
    if single_file and len(tasks) > 1:
        raise ConfigError(f"--out {args.out}: one file, for {len(tasks)} tasks ({', '.join(tasks)}); "
                          "give a directory, which gets one TASK.tsv per task")
    if not single_file:
        os.makedirs(args.out, exist_ok=True)
    for name, task in tasks.items():
        # Labels are not needed to predict: a test split without them reads too.
        split_name = INPUT_SPLIT if args.input is not None else args.split or task.eval_split
        preds, _ = _predict(loaded, task, split_name, data_dirs[name], args.batch_size, device, labeled=False)
        path = args.out if single_file else os.path.join(args.out, f"{name}.tsv")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        replaced = os.path.isfile(path)
        with replacing(path) as handle:
            handle.write("index\tprediction\n")
            for index, value in enumerate(preds):
                handle.write(f"{index}\t{task.task_type.format_prediction(value, task.labels)}\n")
        print(f"{name}: {len(preds)} predictions → {path}" + (" (replacing the file there)" if replaced else ""))
    return 0


INPUT_SPLIT = "--input"  # named after the flag, so it does not shadow a split a task file declares


def _with_input_split(tasks: dict, path: str, quoting: Optional[str]) -> dict:
    """The one task, with ``path`` as an extra split read by its header's column names and,
    unless ``quoting`` says otherwise, with the quoting of the task's own eval split."""
    from dataclasses import replace

    from mtsmart.tasks import FileSource

    if len(tasks) != 1:
        raise ConfigError(f"--input predicts one task; --task names {len(tasks)} ({', '.join(tasks)})")
    (name, task), = tasks.items()
    own = task.splits.get(task.eval_split)
    quoting = quoting or (own.quoting if isinstance(own, FileSource) else FileSource.quoting)
    source = FileSource(path=os.path.abspath(path), quoting=quoting)
    return {name: replace(task, splits={**task.splits, INPUT_SPLIT: source})}


def _load_finetune_tasks(args: argparse.Namespace):
    """Tasks and training settings for fine-tuning: the checkpoint's training settings,
    then the task-definition file's training block, then --config / KEY=VALUE / flags."""
    from mtsmart.checkpoint import TASKS_FILE, TRAINING_FILE, read_meta
    from mtsmart.tasks import build_task_file

    read_meta(args.checkpoint)
    inherited = load_yaml(os.path.join(args.checkpoint, TRAINING_FILE))["training"]
    source = args.task_defs or os.path.join(args.checkpoint, TASKS_FILE)
    raw = load_yaml(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'tasks:' at the top level")
    if not args.task_defs and not os.path.isdir(str(raw.get("data_dir", ""))):
        raw.pop("data_dir", None)  # a copied checkpoint's run folder data are elsewhere: --data-dir
    training = settings_as_overrides(["training"], inherited, f"{args.checkpoint}/{TRAINING_FILE}")
    own = raw.pop("training", None) or {}
    raw["training"] = {}
    training += settings_as_overrides(["training"], own, source) if own else []
    return build_task_file(raw, source, training + collect_overrides(args))


def command_finetune(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import check_apart, load_checkpoint_tasks
    from mtsmart.data import read_split
    from mtsmart.tasks import check_same_head, resolve_data_dir, select_tasks
    from mtsmart.run_folder import check_not_in_use, check_output_dir, claim_output_dir, lock_run
    from mtsmart.train import Trainer

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --output, --overwrite replaces it: give one")
    task_file = _load_finetune_tasks(args)
    checkpoint_tasks = load_checkpoint_tasks(args.checkpoint)
    names = ",".join(checkpoint_tasks) if args.task == "all" else args.task
    tasks = select_tasks(task_file.tasks, names, "--task", "" if args.task_defs else
                         "; a task the checkpoint was not trained on needs its definition: --task-defs FILE")
    for name, task in tasks.items():
        if name in checkpoint_tasks:  # the trained head is reused: its outputs must mean the same
            check_same_head(task, checkpoint_tasks[name], args.checkpoint)
    note_unused_settings(tasks, task_file.training, collect_overrides(args), from_checkpoint=True)
    data_dir = resolve_data_dir(args.data_dir, task_file)
    several = len(tasks) > 1
    outputs = {name: os.path.join(args.output, name) if several else args.output for name in tasks}
    check_apart(args.checkpoint, args.output, "--output")  # --overwrite would delete what it reads
    check_not_in_use(args.output)
    if not args.resume:
        check_output_dir(args.output, overwrite=args.overwrite, resume=False)
    for task in tasks.values():  # every task's data read before an earlier run is cleared
        for split in (task.train_split, task.eval_split):
            read_split(task, split, data_dir)
    summaries, lock, states, finished = {}, None, {}, {}
    try:
        if args.resume:
            lock = lock_run(args.output) if os.path.isdir(args.output) else None
            states = _finetune_resume_states(args, outputs, tasks, task_file.training)
            # read before any task trains: a damaged one stops the command at once
            finished = {name: _read_results(outputs[name]) for name, state in states.items() if state == "finished"}
        for number, (name, task) in enumerate(tasks.items(), 1):
            out, state = outputs[name], states.get(name, "new")
            if state == "finished":
                summaries[name] = finished[name]
                print(f"finetune {name}: finished earlier, kept ({out})")
                continue
            if several or args.resume:
                how = {"resumed": "continues from its last checkpoint",
                       "new": "starts again (nothing was saved)" if args.resume and os.path.isdir(out) else "starts"}
                print(f"finetune {name}" + (f" ({number} of {len(tasks)})" if several else "")
                      + f": {how[state]} → {out}", flush=True)
            trainer = Trainer({name: task}, task_file.training, data_dir, out, init_from=args.checkpoint,
                              init_weights=args.weights, cache_dir=args.cache_dir, show_progress=not args.quiet,
                              command=args.command_line, resume=state == "resumed")
            try:
                trainer.prepare()  # the checkpoint and the settings, before the folder is touched
                if lock is None:
                    lock = claim_output_dir(args.output, overwrite=args.overwrite)
                if state == "new" and args.resume and os.path.isdir(out):
                    shutil.rmtree(out)  # a task stopped before its first checkpoint starts again
                os.makedirs(out, exist_ok=True)
                trainer.setup()
                summaries[name] = trainer.train()
            finally:
                trainer.cleanup()
    finally:
        if lock is not None:
            lock.close()
    from mtsmart.evaluation import format_table

    print(format_table({n: s["best"]["results"][n] for n, s in summaries.items()}, tasks,
                       {n: t.eval_split for n, t in tasks.items()}))
    print(f"\nfine-tuned checkpoints in {args.output}" + ("/TASK/best" if several else "/best"))
    return 0


def _finetune_resume_states(args: argparse.Namespace, outputs: dict[str, str], tasks: dict,
                            training: TrainConfig) -> dict[str, str]:
    """For `finetune --resume`, each task's folder: "finished" (its results.json: kept),
    "resumed" (a checkpoint to continue from) or "new" (nothing saved: it starts again).
    Every folder with a checkpoint is checked against this command before any task trains."""
    from mtsmart.run_folder import (RESULTS_FILE, check_output_dir, check_resume_settings, check_resume_start,
                                    recover_run_folder, resume_checkpoint)

    states = {}
    for name, out in outputs.items():
        recover_run_folder(out)
        if resume_checkpoint(out) is None:
            states[name] = "new"
            continue
        check_resume_settings(out, training, {name: tasks[name]}, otherwise="start again with --overwrite")
        check_resume_start(out, args.checkpoint, args.weights)
        states[name] = "finished" if os.path.isfile(os.path.join(out, RESULTS_FILE)) else "resumed"
    if len(outputs) == 1:
        check_output_dir(args.output, overwrite=False, resume=True)  # its own "nothing to resume"
    elif set(states.values()) == {"new"}:
        raise ConfigError(f"{args.output}: nothing to resume (no task folder in it, "
                          f"{', '.join(outputs)}, has a checkpoint)")
    return states


def _read_results(run_dir: str) -> dict:
    from mtsmart.run_folder import RESULTS_FILE

    path = os.path.join(run_dir, RESULTS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except ValueError as err:
        raise ConfigError(f"{path}: damaged ({err}); remove {run_dir} to train that task again") from None


def _is_setting(text: str) -> bool:
    """Whether adapt's START ``text`` (LABEL=PATH) is a KEY=VALUE override instead: a dotted
    settings key, or a bare training setting whose value is no path."""
    key, _, value = text.partition("=")
    bare = key in {f.name for f in dataclasses.fields(TrainConfig)} and not os.path.exists(value)
    return key.startswith(("training.", "tasks.")) or bare


def command_adapt(args: argparse.Namespace) -> int:
    from mtsmart.adaptation import check_labels, check_size_specs, parse_start, run_adaptation
    from mtsmart.checkpoint import TASKS_FILE, encoder_source_problem
    from mtsmart.tasks import build_task_file, load_task_file, resolve_data_dir

    # argparse hands every positional before the first flag to START; one that sets a
    # dotted key (training.optim.lr=2e-5, tasks.NAME.KEY=...) is an override, as elsewhere.
    is_override = [_is_setting(text) for text in args.starts]
    args.overrides = [t for t, moved in zip(args.starts, is_override) if moved] + args.overrides
    args.starts = [t for t, moved in zip(args.starts, is_override) if not moved]
    if not args.starts:
        raise ConfigError("adapt: no START given (checkpoint directories or encoders, before the flags)")
    starts = [parse_start(text) for text in args.starts]
    check_labels(starts)
    for start in starts:
        problem = None if start.is_checkpoint else encoder_source_problem(start.path)
        if problem:
            raise ConfigError(f"START {start.label}: {problem}")
    size_specs = args.train_sizes.split(",")
    check_size_specs(size_specs)  # before any data loads
    overrides = collect_overrides(args)
    for path, value, text in overrides:
        if (len(path) == 2 and path[0] == "training" and path[1] in ADAPT_SETS_PER_RUN
                and not (text == "--epochs" and value is None)):  # --epochs clearing max_steps
            raise ConfigError(f"{text}: adapt sets training.{path[1]} for each run itself "
                              f"({ADAPT_SETS_PER_RUN[path[1]]})")
    if args.task_defs:
        task_file = load_task_file(args.task_defs, overrides)
    else:
        holder = next((s for s in starts if s.is_checkpoint), None)
        if holder is None:
            raise ConfigError("--task-defs is needed: no START is a checkpoint to take the task from")
        source = os.path.join(holder.path, TASKS_FILE)
        raw = load_yaml(source)
        raw.pop("training", None)
        task_file = build_task_file(raw, source, overrides)
    if args.task not in task_file.tasks:
        raise ConfigError(f"--task: no task {args.task!r} in {task_file.path} "
                          f"(tasks: {', '.join(task_file.tasks)})")
    note_unused_settings({args.task: task_file.tasks[args.task]}, task_file.training, overrides)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not seeds or not all(0 <= s < 2**32 for s in seeds):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers in [0, 2**32), "
                          f"got {args.seeds!r}") from None
    repeated = next((s for s in seeds if seeds.count(s) > 1), None)
    if repeated is not None:  # the same run twice would show as a spread of seeds
        raise ConfigError(f"--seeds: {repeated} is given twice")
    rows = run_adaptation(starts, task_file.tasks[args.task], task_file.training,
                          resolve_data_dir(args.data_dir, task_file), size_specs,
                          seeds, args.output, reference_size=args.reference_size,
                          min_steps=args.min_steps, show_progress=not args.quiet,
                          command=args.command_line, cache_dir=args.cache_dir)
    with open(os.path.join(args.output, "table.md"), encoding="utf-8") as handle:
        print("\n" + handle.read())
    print(f"{len(rows)} run{'' if len(rows) == 1 else 's'}: {args.output}/results.csv, table.md, plot.png")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from mtsmart.export import export_task

    check_writable(args.out)
    out = export_task(args.checkpoint, args.task, args.out, weights=args.weights, overwrite=args.overwrite)
    print(f"exported {args.task} to {out}: transformers.pipeline('text-classification', "
          f"model='{out}', truncation=True)")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.evaluation import paired_bootstrap
    from mtsmart.metric_logging import write_json
    from mtsmart.tasks import check_same_head
    from mtsmart.train import pick_device

    check_resamples(args.bootstrap, "1000 is the default")
    if args.out:
        check_writable(args.out)
    device = pick_device()
    loaded_a = load_checkpoint(args.checkpoint, device, weights=args.weights_a)
    loaded_b = load_checkpoint(args.other, device, weights=args.weights_b)
    tasks, data_dirs = _checkpoint_tasks(loaded_a, args, args.tasks, "--tasks")
    _check_split_declared(tasks, args.split, "--tasks")
    for name, task in tasks.items():
        if name not in loaded_b.tasks:
            raise ConfigError(f"{args.other}: has no head for task {name!r} (its tasks: "
                              f"{', '.join(loaded_b.tasks)}); pick shared tasks with --tasks")
        check_same_head(task, loaded_b.tasks[name], args.other)
    report = {}
    for name, task in tasks.items():
        split_name = args.split or task.eval_split
        # each with its own tokenizer: the encoders may differ
        (preds_a, split), (preds_b, _) = (_predict(loaded, task, split_name, data_dirs[name], args.batch_size,
                                                   device) for loaded in (loaded_a, loaded_b))
        report[name] = paired_bootstrap(task, preds_a, preds_b, split.targets, args.bootstrap)
        for metric, r in report[name].items():
            print(f"{name} {split_name} {metric}: A {100 * r['a']:.2f}, B {100 * r['b']:.2f}, "
                  f"B − A {100 * r['b_minus_a']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}], "
                  f"P(B − A ≤ 0) {p_value(r['p_b_not_better'], args.bootstrap)}")
    print(f"\nA = {args.checkpoint} ({args.weights_a}), B = {args.other} ({args.weights_b}); 95% "
          f"intervals and P from a paired bootstrap over {args.bootstrap} resamples of the examples")
    if args.out:
        write_json(args.out, {"a": args.checkpoint, "b": args.other, "weights_a": args.weights_a,
                              "weights_b": args.weights_b, "bootstrap_resamples": args.bootstrap,
                              "results": report})
        print(f"wrote {args.out}")
    return 0


def command_summarize(args: argparse.Namespace) -> int:
    from mtsmart.summary import find_runs, read_run, summarize

    paths = [run for path in args.runs for run in find_runs(path)]
    runs = [read_run(path, args.which, args.weights) for path in paths]
    print(summarize(runs))
    note = "last evaluation" if args.which == "last" else "best evaluation, selected on the same dev set"
    print(f"\n{len(runs)} run{'' if len(runs) == 1 else 's'}; "
          f"{args.weights}'s main metric per task (×100) at the {note}; "
          "mean ± sample std over seeds, every seed in brackets")
    return 0


COMMANDS = {"train": command_train, "evaluate": command_evaluate, "predict": command_predict,
            "finetune": command_finetune, "adapt": command_adapt, "export": command_export,
            "compare": command_compare, "summarize": command_summarize}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``docker stop``'s), handled as Ctrl-C is: what a save had
    half-written is removed on the way out, and one line says so."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def configure_logging() -> None:
    """Warnings print as ``mtsmart: note:`` lines; under torchrun every process finds the
    same notes, so the first one says them. huggingface_hub prints its own warnings (a
    hub that cannot be reached retries five times) through a handler of its own (or
    Python's last resort, without one): passed on to ours as well, each was printed
    twice, the copy posing as a note of mtsmart's."""
    is_first_process = torchrun_ranks()[0] == 0
    logging.basicConfig(format="mtsmart: note: %(message)s",
                        level=logging.WARNING if is_first_process else logging.ERROR)
    logging.getLogger("huggingface_hub").propagate = False


def _main(argv: Optional[Sequence[str]]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_logging()
    parser = build_parser()
    args = parse_args(parser, argv)
    args.command_line = ["mtsmart", *(sys.argv[1:] if argv is None else argv)]  # kept in run.json
    for note in repeated_flags(parser, args.command, args.command_line[1:]):
        logging.getLogger("mtsmart").warning(note)
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command != "train":
            raise ConfigError(f"only 'mtsmart train' runs under torchrun; run 'mtsmart {args.command}' "
                              "as a single process")
        return COMMANDS[args.command](args)
    except MtsmartError as err:
        report_error(str(err), err)
        return EXIT_USAGE
    except OSError as err:  # a disk that fills up, a folder that vanished: one line, not a traceback
        report_error(os_error_line(err), err)
        return 1
    except Terminated:
        if _first_on_its_node():  # torchrun signals every replica
            print(f"{_after_a_progress_bar()}mtsmart: terminated (SIGTERM){_how_to_go_on(args)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        if _first_on_its_node():
            print(f"{_after_a_progress_bar()}mtsmart: interrupted{_how_to_go_on(args)}", file=sys.stderr)
        return 130


def _first_on_its_node() -> bool:
    return torchrun_ranks()[1] == 0


def _after_a_progress_bar() -> str:
    """A new line where a progress bar may hold the terminal's current one."""
    return "\n" if sys.stderr.isatty() else ""


def _how_to_go_on(args: argparse.Namespace) -> str:
    """What continues an interrupted command from where its saved work ends."""
    if args.command in ("train", "finetune"):
        return "; the same command continues it" if args.resume else "; the same command with --resume continues it"
    if args.command == "adapt":
        return "; the same command continues the grid (finished runs are kept)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
