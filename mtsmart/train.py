"""The trainer: setup → train → evaluate → cleanup, for multi-task training and for
fine-tuning from a checkpoint (the same loop; only where the weights come from differs).

One step: sample a task, take its next batch, compute the objective (task loss + SMART
terms, ``objective.py``), backward, and every ``grad_accum_steps`` micro-steps clip, step
the optimizer and scheduler, and update the shared EMA teacher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mtsmart import smart
from mtsmart.checkpoint import (ENCODER_DIR, META_FILE, encoder_source_problem, is_checkpoint, load_checkpoint,
                                load_trainer_state, load_trainer_state_json, save_checkpoint)
from mtsmart.config import TrainConfig, flatten_settings, to_plain
from mtsmart.cpu_allocator import keep_freed_memory
from mtsmart.data import TaskStream, collate, default_cache_dir, load_tokenized
from mtsmart.distributed import Replicas
from mtsmart.ema import MeanTeacher
from mtsmart.errors import CheckpointError, ConfigError
from mtsmart.evaluation import predict_split, score_split, selection_score
from mtsmart.losses import balanced_class_weights, task_loss_share
from mtsmart.metric_logging import MetricLogger, append_json_line, drop_records_after, write_json
from mtsmart.model import (MultiTaskModel, fit_tokenizer_to_positions, head_spec, load_tokenizer,
                           vocabulary_problem)
from mtsmart.objective import SideStream, batch_objective
from mtsmart.optim import build_optimizer, lr_multiplier, scheduled_lr
from mtsmart.provenance import check_same_data, encoder_fingerprint, read_sessions, record_session, session_record
from mtsmart.run_folder import (BEST_DIR, CHECKPOINTS_DIR, EVAL_LOG_FILE, EVAL_RECORDS_DIR, LAST_DIR, RESULTS_FILE,
                                TENSORBOARD_DIR, resume_checkpoint)
from mtsmart.sampling import TaskSampler
from mtsmart.tasks import TaskDef, task_to_plain

logger = logging.getLogger(__name__)

# SMART's own random stream is seeded apart from the global one (objective.SideStream).
SIDE_STREAM_SEED_OFFSET = 104_729


@dataclass(frozen=True)
class RunPlan:
    """Quantities derived once from the config and the data, never written back."""

    total_updates: int
    warmup_updates: int
    eval_every: int  # updates


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """Trains ``tasks`` with ``cfg``, writing checkpoints and logs under ``output_dir``.

    Args:
        init_from: a checkpoint directory whose encoder (and the heads of tasks it has)
            start the run; the others get fresh heads. None starts from ``cfg.encoder``.
        init_weights: ``init_from``'s student (default) or its SMART mean teacher.
        resume: continue the run in ``output_dir`` from its ``last`` checkpoint.
        train_indices: per task, the examples of its train split to use (data-fraction
            experiments); all of them when absent.
        replicas: this process's place among data-parallel replicas (``torchrun``); only
            the main replica writes logs and checkpoints.
    Raises:
        ConfigError: ``select_metric`` names an unknown task or metric.
    """

    def __init__(self, tasks: dict[str, TaskDef], cfg: TrainConfig, data_dir: str,
                 output_dir: str, init_from: Optional[str] = None, resume: bool = False,
                 cache_dir: Optional[str] = None, show_progress: bool = True,
                 train_indices: Optional[dict[str, np.ndarray]] = None,
                 replicas: Optional[Replicas] = None, command: Optional[Sequence[str]] = None,
                 init_weights: str = "student"):
        """``command``: the command line that started the run, kept in run.json."""
        self.tasks = tasks
        self.command = command
        self.replicas = replicas or Replicas()
        self.train_indices = train_indices or {}
        self.cfg = cfg
        self.data_dir = data_dir
        self.output_dir = output_dir
        self.init_from = init_from
        self.init_weights = init_weights
        self.resume = resume
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.show_progress = show_progress and self.replicas.is_main
        self.prepared = False
        self._check_select_metric()
        if all(task.sampling_weight == 0 for task in tasks.values()):
            first = next(iter(tasks.values()))
            raise ConfigError(f"{first.defined_in}: every task trained here ({', '.join(tasks)}) has "
                              "sampling_weight 0, so none would be trained; give one a positive weight")

    def _check_select_metric(self) -> None:
        metric = self.cfg.select_metric
        if metric == "average":
            return
        task, _, name = metric.partition("/")
        if task not in self.tasks or name not in self.tasks[task].metrics:
            valid = ["average"] + [f"{t}/{m}" for t, d in self.tasks.items() for m in d.metrics]
            raise ConfigError(f"training.select_metric: {metric!r} is not valid "
                              f"(valid: {', '.join(valid)})")

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build everything in dependency order: seed, tokenizer, data, model, teacher,
        optimizer, schedule, sampler, logger; then restore state when resuming. ``prepare``
        runs first unless the caller ran it (to check everything before clearing a folder)."""
        if not self.prepared:
            self.prepare()
        cfg = self.cfg
        # Fine-tuning from a checkpoint: the teacher starts as a copy of the loaded weights
        # (the proximal anchor is the starting point); a resumed run restores its own.
        self.teacher = MeanTeacher(self.model) if self.uses_teacher else None
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda update: lr_multiplier(update, self.plan.warmup_updates, self.plan.total_updates,
                                         cfg.optim.schedule))
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        names = [n for n in self.tasks]
        self.sampler = TaskSampler(
            names, [len(self.streams[n]) for n in names],
            [self.tasks[n].sampling_weight for n in names], cfg.sampler, cfg.seed,
            total_draws=self.plan.total_updates * cfg.grad_accum_steps)
        self.global_step = 0
        self.micro_step = 0
        self.batch_share = 1.0  # this replica's fraction of the current global batch
        self.best_score = -math.inf
        self.best_step = None
        self.evals_since_best = 0  # for patience: evaluations in a row without a better score
        self.seconds_before = 0.0  # training time of the sessions before this one (resumed runs)
        self.session_start = time.perf_counter()
        self.counters = defaultdict(int)
        # every replica stops on the main one's refusal; a refused resume leaves run.json as it was
        session = self.replicas.on_main(self._this_session)
        if self.resume:
            self._restore()
        self.replicas.on_main(lambda: record_session(self.output_dir, session, resumed=self.resume))
        if self.resume and self.replicas.is_main:
            self._discard_logs_after(self.global_step)
        self.logger = MetricLogger(os.path.join(self.output_dir, TENSORBOARD_DIR)
                                   if self.replicas.is_main else None,
                                   purge_step=self.global_step + 1 if self.resume else None)
        # the run's settings, its length in updates, and each task's own SMART overrides:
        # runs that differ only there must not look alike in the HParams table
        overrides = {name: {"smart": dict(task.smart)} for name, task in self.tasks.items() if task.smart}
        self.logger.log_hparams(flatten_settings({**to_plain(cfg), "tasks": ",".join(self.tasks),
                                                  "updates": self.plan.total_updates,
                                                  **({"task": overrides} if overrides else {})}),
                                self._metric_tags())

    def _metric_tags(self) -> list[str]:
        """The dev scalars every evaluation logs, student's and (with a teacher) teacher's."""
        tags = ["dev/selection_score"] + [f"dev/{n}/{m}" for n, t in self.tasks.items() for m in t.metrics]
        if self.teacher is not None and self.cfg.eval_teacher:
            tags += [f"teacher/{n}/{m}" for n, t in self.tasks.items() for m in t.metrics]
        return tags

    def prepare(self) -> None:
        """What a dry run checks, reading only: threads, seed, device and precision; the
        encoder (or checkpoint) and tokenizer; every split read and tokenized (the cache is
        all it writes); the plan and ε's unit. Nothing is trained."""
        cfg = self.cfg
        if cfg.num_threads:
            self._threads_before = torch.get_num_threads()  # given back in cleanup()
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.device = self.replicas.device()
        if self.device.type == "cpu":
            keep_freed_memory()  # before the first step allocates its activations
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("training.precision: fp16 needs a CUDA device; use bf16 on CPU")
        self._setup_model_and_tokenizer()
        self.replicas.broadcast_parameters(self.model)
        self.replicas.note_idle(cfg.batch_size)
        if self.replicas.enabled:
            # Each replica sees other examples: give each its own dropout and noise draws.
            torch.manual_seed(self._replica_seed())
        self.side_stream = SideStream(self._replica_seed() + SIDE_STREAM_SEED_OFFSET, self.device)
        self._setup_data()
        self._check_forward()
        self._setup_plan()
        self.task_smart = {n: t.smart_config(cfg.smart) for n, t in self.tasks.items()}
        if self.autocast_dtype is not None and self.uses_adversarial_term:
            trained = [n for n, t in self.tasks.items() if t.sampling_weight > 0]
            if all(self.task_smart[n].use_adversarial for n in trained):
                logger.warning("precision %s changes nothing here: every task runs SMART's adversarial term, "
                               "whose batches run in float32 (its perturbation is below %s's resolution)",
                               cfg.precision, cfg.precision)
            else:
                logger.warning("precision %s: batches with SMART's adversarial term run in float32 (its "
                               "perturbation is below %s's resolution); the others in %s",
                               cfg.precision, cfg.precision, cfg.precision)
        self.perturbation_scales = self._perturbation_scales()
        if self.resume:
            # ε's unit is measured on the weights the run STARTED from, not re-measured on
            # trained ones (a dry run of a resume shows the unit the run will use)
            saved = load_trainer_state_json(resume_checkpoint(self.output_dir)).get("perturbation_scales", {})
            self.perturbation_scales.update({k: v for k, v in saved.items() if k in self.perturbation_scales})
        self.prepared = True

    def _check_forward(self) -> None:
        """One forward of two training examples, before anything trains or is written. An
        encoder that fails only under the run's autocast (transformers' DeBERTa v1 under
        bf16 overflows its attention-mask fill) stopped the run with a traceback at its first
        batch or, where SMART's batches run in float32, at its first evaluation; a family
        whose forward takes no batch padded to its longest input (Nystromformer needs one
        fixed length) stopped it at the first step."""
        name = next(iter(self.tasks))
        split = self.train_splits[name]
        batch = collate(split, list(range(min(2, len(split)))), self.pad_token_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        was_training = self.model.training
        self.model.eval()  # no dropout draws: the run's random stream is untouched
        try:
            failure = self._forward_failure(name, batch, self.autocast_dtype)
            if failure and self.autocast_dtype is not None and self._forward_failure(name, batch, None) is None:
                raise ConfigError(f"training.precision: {self.cfg.precision} fails in the encoder's forward "
                                  f"({failure}); use fp32")
            if failure:
                encoder = (f"the encoder of {self.init_from}" if self.init_from
                           else f"training.encoder {self.cfg.encoder}")
                raise ConfigError(f"{encoder}: its forward fails on a batch of two "
                                  f"training examples padded to the longer one ({failure}), as every batch is; "
                                  "its family does not train with mtsmart")
        finally:
            self.model.train(was_training)

    def _forward_failure(self, task: str, batch: dict, autocast_dtype) -> Optional[str]:
        """The encoder's error on ``batch`` (class and first line), or None if it runs."""
        try:
            autocast = (torch.autocast(self.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                        else contextlib.nullcontext())
            with torch.no_grad(), autocast:
                self.model.forward_batch(task, batch)
        except (RuntimeError, IndexError) as err:
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            return f"{type(self.model.encoder).__name__}: {first}"
        return None

    def _setup_model_and_tokenizer(self) -> None:
        cfg = self.cfg
        self._init_teacher_state = None
        source = self.init_from
        if self.resume:
            source = resume_checkpoint(self.output_dir)
        if source is not None:
            # A resumed run continues its own student; the teacher returns in _restore.
            weights = "student" if self.resume else self.init_weights
            loaded = load_checkpoint(source, trust_remote_code=cfg.trust_remote_code, weights=weights)
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
            if loaded.model.pooling != cfg.pooling:
                # The checkpoint owns the architecture: its heads were trained on its pooling.
                logger.warning("the checkpoint's pooling %r wins over training.pooling %r",
                               loaded.model.pooling, cfg.pooling)
            layers = loaded.model.encoder.config.num_hidden_layers
            if cfg.num_hidden_layers is not None and cfg.num_hidden_layers != layers:
                logger.warning("the checkpoint's encoder keeps its %d layers: training.num_hidden_layers "
                               "(%d) truncates raw encoders only", layers, cfg.num_hidden_layers)
            for name, task in self.tasks.items():
                if name not in self.model.heads:
                    self.model.add_head(name, *head_spec(task))
                elif self.model.heads[name].output_size != head_spec(task)[0]:
                    raise ConfigError(
                        f"{task.where('labels')}: the checkpoint's head {name!r} has "
                        f"{self.model.heads[name].output_size} outputs, the task needs "
                        f"{head_spec(task)[0]}")
                else:  # a rate, not a weight: the task definition's applies to this training
                    self.model.heads[name].dropout.p = task.head_dropout
            self._init_teacher_state = loaded.teacher_state
        else:
            problem = encoder_source_problem(cfg.encoder)
            if problem:
                raise ConfigError(f"training.encoder: {problem}")
            self.tokenizer = load_tokenizer(cfg.encoder, trust_remote_code=cfg.trust_remote_code)
            self.model = MultiTaskModel.from_pretrained(
                cfg.encoder, self.tasks.values(), num_hidden_layers=cfg.num_hidden_layers,
                trust_remote_code=cfg.trust_remote_code, pooling=cfg.pooling)
            problem = vocabulary_problem(self.tokenizer, self.model.encoder)
            if problem:
                raise ConfigError(f"training.encoder {cfg.encoder}: {problem}")
        fit_tokenizer_to_positions(self.tokenizer, self.model.encoder)
        if cfg.encoder_dropout is not None:
            self.model.set_encoder_dropout(cfg.encoder_dropout)
        if cfg.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.model.to(self.device)
        self.model.train()
        self.pad_token_id = self.tokenizer.pad_token_id or 0

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.train_splits, self.eval_splits, self.streams = {}, {}, {}
        self.class_weights: dict[str, Optional[torch.Tensor]] = {}
        for stream_id, (name, task) in enumerate(self.tasks.items()):
            train = load_tokenized(task, task.train_split, self.tokenizer, self.data_dir,
                                   self.cache_dir)
            if name in self.train_indices:
                train = train.subset(self.train_indices[name])
            self.train_splits[name] = train
            self.class_weights[name] = self._class_weights(task, train)
            self.eval_splits[name] = load_tokenized(task, task.eval_split, self.tokenizer,
                                                    self.data_dir, self.cache_dir)
            self.streams[name] = TaskStream(self.train_splits[name], cfg.batch_size, cfg.seed,
                                            self.pad_token_id, cfg.length_grouped, stream_id)

    def _class_weights(self, task: TaskDef, train) -> Optional[torch.Tensor]:
        """The task's cross-entropy class weights, "balanced" resolved on the training
        examples this run uses (a subset's own counts, not the full file's); results.json
        records them."""
        if task.class_weights is None:
            return None
        if task.class_weights == "balanced":
            weights = balanced_class_weights(train.targets, len(task.labels))
        else:
            weights = task.class_weights
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _setup_plan(self) -> None:
        cfg = self.cfg
        per_epoch = sum(len(self.streams[n]) for n in self.tasks
                        if self.tasks[n].sampling_weight > 0)
        if cfg.max_steps is not None:
            total = cfg.max_steps
        else:
            total = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum_steps))
        updates_per_epoch = max(1, per_epoch // cfg.grad_accum_steps)
        self.plan = RunPlan(
            total_updates=total,
            warmup_updates=int(cfg.optim.warmup_fraction * total),
            eval_every=cfg.eval_every or updates_per_epoch,
        )
        evaluations = (total - 1) // self.plan.eval_every + 1  # the last one at the run's end
        if cfg.patience is not None and evaluations < cfg.patience + 2 and self.replicas.is_main:
            # stopping takes a best evaluation, `patience` worse ones, and the end still ahead
            cadence = (f"once, at the end of its {total} updates (eval_every {self.plan.eval_every})"
                       if evaluations == 1 else
                       f"{evaluations} times (every {self.plan.eval_every} of its {total} updates)")
            logger.warning("training.patience %d can never stop this run early: it evaluates %s; a smaller "
                           "--eval-every or --patience lets it", cfg.patience, cadence)

    @property
    def uses_adversarial_term(self) -> bool:
        """Whether some task's batches compute the adversarial term (which mixed precision
        cannot resolve: those batches run in float32)."""
        return any(smart_cfg.use_adversarial for smart_cfg in self.task_smart.values())

    @property
    def uses_teacher(self) -> bool:
        """Whether any task's Bregman term is on, the global setting or a task's own
        ``smart:`` override: one teacher serves them all, and none is built for nobody."""
        return any(smart_cfg.use_bregman for smart_cfg in self.task_smart.values())

    def _perturbation_scales(self) -> dict[str, float]:
        scales = {}
        weight = self.model.encoder.get_input_embeddings().weight
        for name, smart_cfg in self.task_smart.items():
            scales[name] = (smart.embedding_scale(weight, smart_cfg.norm)
                            if smart_cfg.relative_to_embedding_norm else 1.0)
        return scales

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> dict:
        """Everything a resumed run needs besides the weights. A collective call under
        torchrun: every replica's generator states are gathered."""
        replica_rngs = self.replicas.all_gather(
            [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if torch.cuda.is_available() else []))
        replica_side_streams = self.replicas.all_gather(self.side_stream.state_dict())
        return {
            # Dropout masks draw from torch's generators, SMART's perturbed passes from its
            # side stream; the data and task orders are pure functions of (seed, position),
            # so these states are all it takes.
            "tensors": {"optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}),
                        **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
                        "smart_rng": self.side_stream.state_dict(),
                        **({"replica_rngs": replica_rngs,
                            "replica_smart_rngs": replica_side_streams} if self.replicas.enabled else {})},
            "json": {"global_step": self.global_step, "micro_step": self.micro_step,
                     "best_score": self.best_score if self.best_score > -math.inf else None,
                     "best_step": self.best_step,
                     "evals_since_best": self.evals_since_best,
                     "sampler": self.sampler.state_dict(),
                     "streams": {n: s.state_dict() for n, s in self.streams.items()},
                     "seed": self.cfg.seed,
                     # ε's unit is measured on the weights the run STARTED from; a resumed
                     # run must not re-measure it on trained weights.
                     "perturbation_scales": self.perturbation_scales,
                     "counters": self._global_counters(),
                     # the optimizer state is matched to parameters by position: these names
                     # let a resume check the positions still mean the same parameters
                     "optimizer_parameters": self._optimizer_parameter_names(),
                     # training time up to this checkpoint, over every session, so a resumed
                     # run's results report the run's time (work redone after a kill excluded)
                     "train_seconds": self.seconds_before + time.perf_counter() - self.session_start},
        }

    def _restore(self) -> None:
        path = resume_checkpoint(self.output_dir)
        state = load_trainer_state(path)
        tensors, info = state["tensors"], state["json"]
        saved, current = info.get("optimizer_parameters"), self._optimizer_parameter_names()
        if saved is not None and saved != current:  # older checkpoints have no names to check
            at = next((i for i, (a, b) in enumerate(zip(saved, current)) if a != b), min(len(saved), len(current)))
            was, now = (names[at] if at < len(names) else "nothing" for names in (saved, current))
            raise CheckpointError(f"{path}: its optimizer state does not fit this model (parameter {at} was "
                                  f"{was}, is now {now}); it cannot be resumed")
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        if info["seed"] != self.cfg.seed:
            raise ConfigError(f"{path}: the run was started with seed {info['seed']}, not "
                              f"{self.cfg.seed}: resume with the same --seed")
        torch.set_rng_state(tensors["torch_rng"])
        if "cuda_rng" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["cuda_rng"])
        if self.scaler is not None and "scaler" in tensors:
            self.scaler.load_state_dict(tensors["scaler"])
        self.global_step = info["global_step"]
        self.micro_step = info["micro_step"]
        if "smart_rng" in tensors:  # older checkpoints: the stream restarts from its seed
            self.side_stream.load_state_dict(tensors["smart_rng"])
        self._restore_replica_rng(path, tensors.get("replica_rngs"), tensors.get("replica_smart_rngs"))
        self.best_score = info["best_score"] if info["best_score"] is not None else -math.inf
        self.best_step = info["best_step"]
        self.evals_since_best = info.get("evals_since_best", 0)  # older checkpoints: count afresh
        self.seconds_before = info.get("train_seconds", 0.0)  # older checkpoints: this session's only
        self.sampler.load_state_dict(info["sampler"])
        for name, stream_state in info["streams"].items():
            self.streams[name].load_state_dict(stream_state)
        self.counters.update(restored_counters(info["counters"], self.replicas.is_main))
        if self.teacher is not None and self._init_teacher_state is not None:
            self.teacher.load_state_dict(self._init_teacher_state)
            self.teacher.num_updates = self.global_step

    def _this_session(self) -> dict:
        """This session's record for run.json (command, versions, device, data and encoder
        fingerprints); a resumed run must see the examples its run started with."""
        data = {name: {role: {"split": split, "examples": len(tokenized),
                              "fingerprint": tokenized.fingerprint()}
                       for role, split, tokenized in (
                           ("train", task.train_split, self.train_splits[name]),
                           ("eval", task.eval_split, self.eval_splits[name]))}
                for name, task in self.tasks.items()}
        if self.resume:
            check_same_data(self.output_dir, data)
        source = self.init_from or self.cfg.encoder
        weights = os.path.join(source, ENCODER_DIR) if is_checkpoint(source) else source
        encoder = {"source": source, "fingerprint": encoder_fingerprint(weights),
                   **({"weights": self.init_weights} if self.init_from else {})}
        return session_record(self.command, self.device, self.replicas.world_size, data, encoder)

    def _discard_logs_after(self, step: int) -> None:
        """A run killed after an evaluation but before its checkpoint was complete logged
        steps that the resumed run computes again: they go, rather than appear twice."""
        drop_records_after(os.path.join(self.output_dir, EVAL_LOG_FILE), step)
        records = os.path.join(self.output_dir, EVAL_RECORDS_DIR)
        for name in os.listdir(records) if os.path.isdir(records) else []:
            match = re.fullmatch(r"step-(\d+)\.json", name)
            if match and int(match.group(1)) > step:
                os.remove(os.path.join(records, name))

    def _replica_seed(self) -> int:
        return self.cfg.seed + 7919 * self.replicas.rank

    def _optimizer_parameter_names(self) -> list[str]:
        """The model's parameter names in the optimizer's order (its groups, concatenated)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def _restore_replica_rng(self, path: str, replica_rngs: Optional[list],
                             replica_side_streams: Optional[list]) -> None:
        saved_by = len(replica_rngs) if replica_rngs else 1
        if saved_by != self.replicas.world_size and self.replicas.is_main:
            logger.warning("%s was saved by %d process(es), this run has %d: the data and "
                           "updates continue exactly, dropout and noise draws do not",
                           path, saved_by, self.replicas.world_size)
        if not self.replicas.enabled:
            return  # one process continues with the main replica's generators
        if saved_by != self.replicas.world_size:
            torch.manual_seed(self._replica_seed() + self.global_step)
            self.side_stream = SideStream(self._replica_seed() + SIDE_STREAM_SEED_OFFSET + self.global_step,
                                          self.device)
            return
        states = replica_rngs[self.replicas.rank]
        torch.set_rng_state(states[0])
        if len(states) > 1 and torch.cuda.is_available():
            torch.cuda.set_rng_state(states[1])
        if replica_side_streams is not None:
            self.side_stream.load_state_dict(replica_side_streams[self.replicas.rank])

    # ------------------------------------------------------------------ training
    def _weights_at(self, task_name: str, update: int) -> tuple[float, float]:
        smart_cfg = self.task_smart[task_name]
        adv = smart_cfg.adv_weight if smart_cfg.use_adversarial else 0.0
        prox = 0.0
        if smart_cfg.use_bregman:
            prox = smart.ramp_weight(update, self.plan.total_updates, smart_cfg.prox_weight,
                                     smart_cfg.prox_warmup_fraction)
        return adv, prox

    def train(self) -> Optional[dict]:
        cfg = self.cfg
        # Skip counters start at zero, so TensorBoard draws a flat line from the first
        # log: "nothing skipped" is visible, not inferred from a missing curve.
        for name, smart_cfg in self.task_smart.items():
            if smart_cfg.use_adversarial or smart_cfg.use_bregman:
                self.counters.setdefault(f"regularizer_skipped/{name}", 0)
        for key in ("nonfinite_loss_skipped", "nonfinite_grad_skipped"):
            self.counters.setdefault(key, 0)
        # tag -> [(micro-step, value, this replica's share of the batch)]
        window: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        progress = tqdm(total=self.plan.total_updates, initial=self.global_step, unit="step",
                        desc="train", disable=not self.show_progress, dynamic_ncols=True)
        self.session_start, first_step = time.perf_counter(), self.global_step
        while self.global_step < self.plan.total_updates and not self.out_of_patience():
            skipped = [self._micro_step(window) for _ in range(cfg.grad_accum_steps)]
            lr = scheduled_lr(self.optimizer)  # the rate this update uses (the step moves the schedule on)
            grad_norm = self._optimizer_step(skipped_a_batch=any(skipped))
            self.global_step += 1
            progress.update(1)
            if self.global_step % cfg.log_every == 0 or self.global_step == self.plan.total_updates:
                scalars = self._window_means(window)
                scalars["train/lr"] = lr
                if grad_norm is not None and math.isfinite(grad_norm):
                    # a skipped update has no norm to show; the skip counters say what happened
                    scalars["train/grad_norm"] = grad_norm
                scalars.update({f"train/{k}": v for k, v in self._global_counters().items()})
                self.logger.log_dict(scalars, self.global_step)
                losses_now = [v for k, v in scalars.items() if k.endswith("/loss")]
                if losses_now:
                    progress.set_postfix(loss=f"{np.mean(losses_now):.4f}")
                window.clear()
            if (self.global_step % self.plan.eval_every == 0
                    or self.global_step == self.plan.total_updates):
                self.evaluate_and_checkpoint()
        progress.close()
        return self._finish(time.perf_counter() - self.session_start, first_step)

    def out_of_patience(self) -> bool:
        """True once ``patience`` evaluations in a row have not bettered the selection score.
        The score is computed from every replica's gathered predictions, so under torchrun
        all replicas stop at the same update."""
        return self.cfg.patience is not None and self.evals_since_best >= self.cfg.patience

    def _micro_step(self, window: dict[str, list[tuple[int, float, float]]]) -> bool:
        """Sample a task, take its next batch (this replica's slice of it), compute the
        objective and back-propagate; losses go to ``window`` for logging. Returns whether
        a non-finite loss skipped the batch."""
        task_name = self.sampler.next_task()
        whole = self.streams[task_name].next_batch()
        batch, self.batch_share = self.replicas.shard(whole)
        self.counters[f"batches/{task_name}"] += 1
        self.micro_step += 1
        if batch is None:
            return False  # fewer examples than replicas: nothing left for this one
        task = self.tasks[task_name]
        loss_weight = task.loss_weight
        class_weights = self.class_weights[task_name]
        if self.replicas.enabled and class_weights is not None:
            # a slice's part of a weighted cross-entropy is its share of the class weights, not
            # of the examples (÷ batch_share undoes the example share _backward applies)
            loss_weight *= task_loss_share(class_weights, batch["labels"], whole["labels"]) / self.batch_share
        batch = {k: v.to(self.device) for k, v in batch.items()}
        adv_w, prox_w = self._weights_at(task_name, self.global_step)
        # SMART's perturbation is below bf16's and fp16's resolution: under autocast the
        # adversarial term is rounding noise or zero (scripts/smart_precision.py), so the
        # batches that compute it run in float32.
        mixed = self.autocast_dtype is not None and adv_w == 0
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=mixed):
            losses = batch_objective(
                self.model, self.teacher, task_name, task.task_type, batch,
                self.task_smart[task_name], adv_weight=adv_w, prox_weight=prox_w,
                loss_weight=loss_weight, class_weights=class_weights,
                perturbation_scale=self.perturbation_scales[task_name],
                backward=self._backward, side_stream=self.side_stream)
        if losses.regularizer_skipped:
            self.counters[f"regularizer_skipped/{task_name}"] += 1
        if not torch.isfinite(losses.total):
            # Documented rule: a non-finite loss skips its batch (counted), so it
            # can never reach the weights or a checkpoint.
            self.counters["nonfinite_loss_skipped"] += 1
            return True
        if not losses.backward_done:
            self._backward(losses.total)
        # the two terms as added to the loss (λ_s·R_s, μ·D), and the divergences themselves
        for key, value in (("loss", losses.task_loss), ("adv_loss", losses.adv_loss),
                           ("adv_divergence", losses.adv_divergence), ("bregman_loss", losses.prox_loss),
                           ("teacher_divergence", losses.teacher_divergence),
                           ("perturbation_norm", losses.perturbation_norm)):
            if value is not None:
                window[f"train/{task_name}/{key}"].append(
                    (self.micro_step, value, self.batch_share))
        return False

    def _window_means(self, window: dict[str, list[tuple[int, float, float]]]) -> dict[str, float]:
        """Per tag, the mean over micro-steps of the whole-batch value (each replica's
        value weighted by its share of the batch); a collective call under torchrun."""
        merged: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
        for replica_window in self.replicas.all_gather(dict(window)):
            for tag, entries in replica_window.items():
                for step, value, share in entries:
                    merged[tag][step].append((value, share))
        return {tag: float(np.mean([sum(v * w for v, w in parts) / sum(w for _, w in parts)
                                    for parts in steps.values()]))
                for tag, steps in merged.items()}

    def _global_counters(self) -> dict[str, int]:
        """Counters of the whole run: what each replica skips on its own slice is summed
        over replicas; the rest (batches drawn, updates skipped) is the same on all."""
        counters = dict(self.counters)
        if self.replicas.enabled:
            for replica_counters in self.replicas.all_gather(dict(self.counters))[1:]:
                for key, value in replica_counters.items():
                    if _per_replica_counter(key):
                        counters[key] = counters.get(key, 0) + value
        return counters

    def _backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.cfg.grad_accum_steps
        if self.replicas.enabled:
            loss = loss * self.batch_share  # the replicas' gradients are summed
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def _optimizer_step(self, skipped_a_batch: bool = False) -> Optional[float]:
        """Step on the accumulated gradients; the gradient norm before clipping, or None
        when no batch of the update left a gradient."""
        cfg = self.cfg
        # under torchrun a batch one replica skipped is skipped by all: the update is dropped
        self.replicas.sum_gradients(self.model.parameters(), drop=skipped_a_batch)
        if not any(p.grad is not None for p in self.model.parameters()):
            # every batch of this update skipped (non-finite losses): nothing to step on, the
            # teacher stays where it is, and the fp16 scaler has no gradients to check. The
            # optimizer's step moves nothing here; taken, the schedule keeps its order.
            self.optimizer.step()
            self.scheduler.step()
            return None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            # skipped either way: here, or inside the fp16 scaler's step (which also lowers its scale)
            self.counters["nonfinite_grad_skipped"] += 1
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif math.isfinite(grad_norm):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None and math.isfinite(grad_norm):
            # after every optimizer step (SMART.md): a skipped update leaves the anchor where it was
            smart_cfg = self.cfg.smart
            beta = smart.teacher_momentum(self.global_step, self.plan.total_updates,
                                          smart_cfg.teacher_beta, smart_cfg.teacher_beta_early,
                                          smart_cfg.teacher_early_fraction,
                                          smart_cfg.teacher_horizon_fraction)
            self.teacher.update(self.model, beta)
        return grad_norm

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: Optional[MultiTaskModel] = None) -> dict[str, dict[str, float]]:
        """Dev metrics of every task; under torchrun each replica predicts every W-th
        example and the predictions are gathered, so all replicas score the whole split."""
        model = model or self.model
        results = {}
        for name, task in self.tasks.items():
            split = self.eval_splits[name]
            mine = np.arange(self.replicas.rank, len(split), self.replicas.world_size)
            part = split if not self.replicas.enabled else split.subset(mine)
            preds = predict_split(model, task, part, self.cfg.eval_batch_size,
                                  self.pad_token_id, self.device, self.autocast_dtype)
            if self.replicas.enabled:
                gathered = self.replicas.all_gather((mine, preds))
                preds = np.empty(len(split), dtype=preds.dtype)
                for indices, values in gathered:
                    preds[indices] = values
            results[name] = score_split(task, preds, split)
        return results

    def evaluate_and_checkpoint(self) -> dict:
        """A collective call under torchrun; only the main replica writes."""
        results = self.evaluate()
        score = selection_score(results, self.tasks, self.cfg.select_metric)
        record = {"global_step": self.global_step, "split": "dev", "results": results,
                  "selection_score": score, "select_metric": self.cfg.select_metric}
        if self.teacher is not None and self.cfg.eval_teacher:
            teacher_results = self.evaluate(self.teacher.model)
            record["teacher_results"] = teacher_results
            self.logger.log_dict({f"teacher/{t}/{m}": v for t, r in teacher_results.items()
                                  for m, v in r.items()}, self.global_step)
        scalars = {f"dev/{t}/{m}": v for t, r in results.items() for m, v in r.items()}
        scalars["dev/selection_score"] = score
        self.logger.log_dict(scalars, self.global_step)
        self.logger.flush()
        self.replicas.check_in_sync({"model": self.model,
                                     **({"teacher": self.teacher.model} if self.teacher else {})})
        if self.replicas.is_main:
            metrics_dir = os.path.join(self.output_dir, EVAL_RECORDS_DIR)
            os.makedirs(metrics_dir, exist_ok=True)
            write_json(os.path.join(metrics_dir, f"step-{self.global_step:07d}.json"), record)
            append_json_line(os.path.join(self.output_dir, EVAL_LOG_FILE), record)
        if score > self.best_score:
            self.best_score, self.best_step = score, self.global_step
            self.evals_since_best = 0
            if self.cfg.save_checkpoints:
                self._save(os.path.join(self.output_dir, BEST_DIR), record)
        else:
            self.evals_since_best += 1
        if self.cfg.save_checkpoints:
            self._save_last(record)
        self.replicas.barrier()  # no replica runs ahead of a checkpoint being written
        if self.show_progress:
            tqdm.write(f"step {self.global_step}: {self.cfg.select_metric}={100 * score:.2f}  "
                       + "  ".join(f"{t}/{m}={100 * v:.2f}" for t, r in results.items()
                                   for m, v in r.items()))
        return record

    def _save_last(self, record: dict) -> None:
        """``last/`` is the newest resumable checkpoint; with ``keep_last`` N > 1 the N − 1
        before it move (a rename, no copy) to ``checkpoints/step-K/``."""
        state = self.trainer_state()  # collective: gathers every replica's RNG state
        if not self.replicas.is_main:
            return
        last = os.path.join(self.output_dir, LAST_DIR)
        if self.cfg.keep_last > 1 and os.path.isdir(last):
            with open(os.path.join(last, META_FILE), encoding="utf-8") as handle:
                step = json.load(handle)["global_step"]
            history = os.path.join(self.output_dir, CHECKPOINTS_DIR)
            os.makedirs(history, exist_ok=True)
            os.replace(last, os.path.join(history, f"step-{step:07d}"))
            for old in sorted(os.listdir(history))[:-(self.cfg.keep_last - 1)]:
                shutil.rmtree(os.path.join(history, old), ignore_errors=True)
        self._save(last, record, trainer_state=state)

    def _save(self, path: str, record: dict, trainer_state: Optional[dict] = None) -> None:
        if not self.replicas.is_main:
            return
        meta = {"global_step": self.global_step, "dev": record["results"],
                "selection_score": record["selection_score"],
                "select_metric": record["select_metric"]}
        save_checkpoint(path, self.model, self.tokenizer, self.tasks, self.cfg, meta,
                        teacher_state=self.teacher.state_dict() if self.teacher else None,
                        trainer_state=trainer_state, data_dir=self.data_dir)

    def _finish(self, elapsed: float, first_step: int) -> Optional[dict]:
        """The run's summary (written to results.json); None on replicas other than the
        main one. ``first_step``: where this session began (0 unless resumed)."""
        counters = self._global_counters()
        if not self.replicas.is_main:
            return None
        last = os.path.join(self.output_dir, EVAL_LOG_FILE)
        with open(last, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        best = max(records, key=lambda r: r["selection_score"])
        summary = {
            "best": {"global_step": best["global_step"], "results": best["results"],
                     "selection_score": best["selection_score"]},
            "last": {"global_step": records[-1]["global_step"], "results": records[-1]["results"]},
            "select_metric": self.cfg.select_metric,
            "train_seconds": self.seconds_before + elapsed,  # every session's
            "session_seconds": elapsed,  # this session's, from update first_step on
            "first_step": first_step,
            "total_updates": self.plan.total_updates,
            # the update training stopped at: total_updates unless patience ran out
            "stopped_at": records[-1]["global_step"],
            "stopped_early": self.out_of_patience() and records[-1]["global_step"] < self.plan.total_updates,
            "patience": self.cfg.patience,
            "counters": counters,
            "replicas": self.replicas.world_size,
            # what produced these numbers, so a results file is read without its checkpoints
            "training": to_plain(self.cfg),
            # a fine-tuned run started from a checkpoint, not from training.encoder's weights
            **({"start": {"checkpoint": self._start_checkpoint(), "weights": self.init_weights}}
               if self.init_from else {}),
            "main_metrics": {n: t.selection_metric for n, t in self.tasks.items()},
            "tasks": {n: task_to_plain(t) for n, t in self.tasks.items()},
        }
        for which, record in (("last", records[-1]), ("best", best)):
            if "teacher_results" in record:
                summary[which]["teacher_results"] = record["teacher_results"]
        weighted = {n: w.tolist() for n, w in self.class_weights.items() if w is not None}
        if weighted:
            summary["class_weights"] = weighted
        write_json(os.path.join(self.output_dir, RESULTS_FILE), summary)
        self.logger.log_hparams_end()
        return summary

    def _start_checkpoint(self) -> str:
        """The checkpoint the run started from, as its first session named it: a resume may
        name the same weights by another path (check_resume_start compared them)."""
        first = (read_sessions(self.output_dir) or [{}])[0]
        source = (first.get("encoder") or {}).get("source")
        if self.resume and source:
            return os.path.abspath(os.path.join(first.get("working_directory", ""), source))
        return os.path.abspath(self.init_from)

    def cleanup(self) -> None:
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        # a run's thread count is its own: the next run in this process starts from torch's
        if getattr(self, "_threads_before", None):
            torch.set_num_threads(self._threads_before)


def _per_replica_counter(key: str) -> bool:
    return key.startswith("regularizer_skipped/") or key == "nonfinite_loss_skipped"


def restored_counters(saved: dict[str, int], is_main: bool) -> dict[str, int]:
    """The saved counters a replica takes back on resume. The per-replica ones were saved
    summed over every replica: the main replica keeps the sum and the others start from 0,
    or the next sum would count their share twice."""
    return {key: value for key, value in saved.items() if is_main or not _per_replica_counter(key)}
