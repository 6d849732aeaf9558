"""Data parallelism over the processes that ``torchrun`` launches (one per GPU, or several
CPU processes with the gloo backend).

The run's semantics do not depend on the number of processes: ``training.batch_size`` is
the GLOBAL batch. Every rank draws the same task and the same global batch at every
micro-step (the sampler and the data order are pure functions of the seed) and processes
its own slice of it; gradients are then summed over ranks once per optimizer step, each
rank's share weighted by its fraction of the global batch, so the update equals the
single-process update on the whole batch up to floating-point summation order.

Why an explicit all-reduce instead of wrapping the model in ``DistributedDataParallel``:
a SMART step runs the shared encoder several times before one backward (clean forward,
K ascent passes that differentiate w.r.t. the noise only, the perturbed forward; the
memory-efficient path back-propagates twice), and only the sampled task's head is used.
DDP's reducer assumes one forward per backward with a fixed set of used parameters; it
would need ``find_unused_parameters`` (a graph traversal per forward) and ``no_sync``
around every backward but the last, or it reduces the memory-efficient path twice. One flat,
bucketed all-reduce after the last micro-step has none of these failure modes, reduces
every gradient exactly once, and skips parameters no rank touched (idle heads) so they
stay ``None`` as in a single-process run.

Must not import train or cli.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Optional, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mtsmart.errors import MtsmartError, RelayedError, ReplicaError, os_error_line

T = TypeVar("T")
logger = logging.getLogger(__name__)

BUCKET_ELEMENTS = 16 * 1024 * 1024  # 64 MB of fp32 per all-reduce call
GLOO_RELEASE_SECONDS = 0.1


@dataclass(frozen=True)
class Replicas:
    """This process's place among the data-parallel replicas (1 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_environment(cls, timeout_minutes: float = 30.0) -> "Replicas":
        """Join the process group that torchrun describes in the environment (RANK,
        WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a single replica without it."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise ReplicaError(f"LOCAL_RANK {local_rank}: this node has only "
                                   f"{torch.cuda.device_count()} GPUs (lower --nproc_per_node)")
            torch.cuda.set_device(local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def note_idle(self, batch_size: int) -> None:
        """A global batch smaller than the replicas leaves some with nothing at every step."""
        if self.is_main and batch_size < self.world_size:
            logger.warning("training.batch_size %d is below the %d processes: %d of them get no "
                           "examples at any step", batch_size, self.world_size, self.world_size - batch_size)

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
            # A gloo worker thread frees a finished collective's buffers only after the
            # caller has been told it is done, and freeing a tensor Python has seen needs
            # the GIL. If the interpreter is already shutting down by then, the thread is
            # killed inside a C++ destructor and the process aborts ("terminate called
            # without an active exception") after a successful run. Releasing the GIL for
            # a moment lets every such thread finish first.
            time.sleep(GLOO_RELEASE_SECONDS)

    # ------------------------------------------------------------------ data
    def shard(self, batch: dict[str, torch.Tensor]) -> tuple[Optional[dict[str, torch.Tensor]], float]:
        """This rank's contiguous slice of a global batch, re-trimmed to its own longest
        example, and the slice's fraction of the batch. ``(None, 0.0)`` when the batch has
        fewer examples than there are ranks and none is left for this one."""
        size = len(batch["labels"])
        if not self.enabled:
            return batch, 1.0
        bounds = np.linspace(0, size, self.world_size + 1).round().astype(int)
        start, stop = int(bounds[self.rank]), int(bounds[self.rank + 1])
        if stop <= start:
            return None, 0.0
        part = {k: v[start:stop] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(dim=1).max())
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in part:
                part[key] = part[key][:, :width]
        return part, (stop - start) / size

    # ------------------------------------------------------------------ collectives
    def broadcast_parameters(self, module: nn.Module) -> None:
        """Make every replica start from rank 0's weights and buffers."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, parameters: Iterable[nn.Parameter], drop: bool = False) -> bool:
        """Sum ``.grad`` over ranks in place (each rank has already weighted its share).

        A parameter with no gradient on any rank (the head of a task not sampled in this
        update) is left ``None``; one with a gradient on some ranks only (a rank whose
        slice was empty) counts as zero there.

        ``drop``: this rank skipped a slice of the update (a non-finite loss). Then every
        rank drops the update's gradients, so the batch is skipped as in one process
        instead of the other ranks' part being applied alone; returns whether that
        happened (always False for a single replica, which skips the batch itself)."""
        if not self.enabled:
            return False
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return False
        device = params[0].device
        # one collective for both: which parameters have gradients, and whether any rank drops
        present = torch.tensor([p.grad is not None for p in params] + [drop], dtype=torch.float32,
                               device=device)
        dist.all_reduce(present)
        flags = present.tolist()
        if flags.pop() > 0:
            for p in params:
                p.grad = None
            return True
        used = [p for p, flag in zip(params, flags) if flag > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(used, BUCKET_ELEMENTS):
            grads = [p.grad for p in bucket]
            flat = torch.cat([g.reshape(-1).float() for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        return False

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, check: Callable[[], T]) -> Optional[T]:
        """``check()`` on the main replica only (None elsewhere), and its failure raised on
        every replica: a user error or OSError on rank 0 alone would leave the others
        waiting in their next collective until the job is torn down.

        Raises:
            Exception: ``check``'s own, on the main replica.
            RelayedError: the main replica's problem, as one line, on the others.
        """
        result, error = None, None
        if self.is_main:
            try:
                result = check()
            except Exception as err:  # any failure: the others must not wait for rank 0
                error = err
        # (failed, text): a failure whose text is empty must stop the other replicas too
        failed, problem = self.broadcast((error is not None, _one_line(error)))
        if error is not None:
            raise error
        if failed:
            raise RelayedError(problem or "the main process failed; see its error")
        return result

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_in_sync(self, modules: dict[str, nn.Module]) -> None:
        """Raise if any replica's weights differ from rank 0's (a silent divergence would
        otherwise only show as a checkpoint that no rank actually trained)."""
        if not self.enabled:
            return
        fingerprints = {}
        for name, module in modules.items():
            with torch.no_grad():
                fingerprints[name] = [float(t.double().sum()) for t in module.state_dict().values()
                                      if t.is_floating_point()]
        everyone = self.all_gather(fingerprints)
        for rank, theirs in enumerate(everyone):
            for name in modules:
                if theirs[name] != everyone[0][name]:
                    raise RuntimeError(f"replica {rank}'s {name} weights differ from rank 0's: "
                                       "the data-parallel replicas have diverged")


def _buckets(params: list[nn.Parameter], max_elements: int) -> Iterable[list[nn.Parameter]]:
    bucket: list[nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and size + p.numel() > max_elements:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def _one_line(error: Optional[BaseException]) -> str:
    if error is None:
        return ""
    if isinstance(error, OSError):
        return os_error_line(error)
    if isinstance(error, MtsmartError):
        return str(error)
    return f"the main process failed ({type(error).__name__}: {error}); see its error"
