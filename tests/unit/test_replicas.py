"""distributed.Replicas' collectives on two real gloo processes (no model, a few seconds):
a rank that skips a batch makes every rank drop the update, and a failure of a check that
only the main replica runs reaches every replica as one line."""

from __future__ import annotations

import traceback
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtsmart.distributed import Replicas, _buckets
from mtsmart.errors import ConfigError


def _worker(rank: int, init_file: str, results, scenario: str) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        replicas = Replicas(rank=rank, world_size=2)
        if scenario == "drop":
            params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
            params[0].grad = torch.full((3,), float(rank + 1))
            kept = replicas.sum_gradients(params)  # no rank drops: summed
            summed = params[0].grad.tolist()
            params[0].grad = torch.ones(3)
            dropped = replicas.sum_gradients(params, drop=rank == 1)  # rank 1 skipped its slice
            results[rank] = (kept, summed, params[1].grad, dropped, params[0].grad)
        else:
            def check():
                if scenario == "oserror":
                    raise NotADirectoryError(20, "Not a directory", "afile/run")
                if scenario == "silent":
                    raise OSError()  # no text at all: the others must stop all the same
                if scenario == "bug":
                    raise KeyError("trainer_state")  # not a user error: still stops the others
                raise ConfigError("run/: not empty")
            try:
                replicas.on_main(check)
                results[rank] = "no error"
            except (ConfigError, OSError, KeyError) as err:
                results[rank] = (type(err).__name__, err.filename if isinstance(err, OSError) else str(err))
        dist.destroy_process_group()
    except Exception:  # the parent reports it: a worker's traceback is otherwise lost
        results[rank] = traceback.format_exc()


def _run(tmp_path, scenario: str, worker=None) -> dict:
    """Each of two gloo replicas' result of ``scenario`` in ``worker`` (default ``_worker``)."""
    results = mp.Manager().dict()
    mp.spawn(worker or _worker, args=(str(tmp_path / "init"), results, scenario), nprocs=2, join=True)
    return dict(results)


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_a_batch_one_replica_skipped_is_dropped_by_every_replica(tmp_path):
    results = _run(tmp_path, "drop")
    for rank in (0, 1):
        kept, summed, idle_grad, dropped, grad = results[rank]
        assert kept is False and summed == [3.0, 3.0, 3.0] and idle_grad is None
        # before: rank 0 applied its own half of the batch alone
        assert dropped is True and grad is None, results[rank]


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("scenario, main_error, other_error", [
    # RelayedError on the others: the main replica prints the line, they need not
    ("oserror", ("NotADirectoryError", "afile/run"), ("RelayedError", "afile/run: Not a directory")),
    ("config", ("ConfigError", "run/: not empty"), ("RelayedError", "run/: not empty")),
    ("silent", ("OSError", None), ("RelayedError", "the main process failed; see its error")),
    ("bug", ("KeyError", "'trainer_state'"),
     ("RelayedError", "the main process failed (KeyError: 'trainer_state'); see its error")),
])
def test_a_check_only_the_main_replica_runs_fails_on_every_replica(tmp_path, scenario, main_error, other_error):
    """Rank 0's OSError used to skip the broadcast: rank 1 waited in its next collective."""
    results = _run(tmp_path, scenario)
    assert results[0] == main_error, results[0]
    assert results[1] == other_error, results[1]


def test_a_batch_smaller_than_the_replicas_is_named(caplog):
    with caplog.at_level("WARNING"):
        Replicas(rank=0, world_size=4).note_idle(batch_size=2)
        Replicas(rank=1, world_size=4).note_idle(batch_size=2)  # said once, by the main replica
        Replicas(rank=0, world_size=4).note_idle(batch_size=4)
    assert caplog.text.count("training.batch_size 2 is below the 4 processes: 2 of them get no examples") == 1
    assert caplog.text.count("WARNING") == 1


def test_one_process_resuming_a_run_of_two_says_so(caplog):
    """2 -> 1 processes said nothing (1 -> 2 did): the noise draws do not continue."""
    from mtsmart.train import Trainer

    trainer = Trainer.__new__(Trainer)  # only what _restore_replica_rng reads
    trainer.replicas = Replicas()
    with caplog.at_level("WARNING"):
        trainer._restore_replica_rng("run/last", [object(), object()], None)
    assert "run/last was saved by 2 process(es), this run has 1" in caplog.text


def _padded_batch(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    ids = torch.arange(1, len(lengths) * width + 1).view(len(lengths), width) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": mask.clone(),
            "labels": torch.arange(len(lengths))}


@pytest.mark.parametrize("size, world_size", [(5, 2), (7, 3), (2, 4), (4, 4)])
def test_the_replicas_slices_cover_the_global_batch_once(size, world_size):
    """Every example of the global batch goes to exactly one replica, in order, each share
    is the slice's fraction of the batch (the weight its gradient is summed with), and a
    replica left without examples says so instead of computing on an empty slice."""
    lengths = [3, 6, 2, 5, 4, 1, 6][:size]
    batch = _padded_batch(lengths, width=8)
    labels, shares, idle = [], [], 0
    for rank in range(world_size):
        part, share = Replicas(rank=rank, world_size=world_size).shard(batch)
        if part is None:
            assert share == 0.0
            idle += 1
            continue
        labels += part["labels"].tolist()
        assert share == pytest.approx(len(part["labels"]) / size)
        shares.append(share)
        # re-trimmed to its own longest example, every sequence tensor alike
        width = max(lengths[i] for i in part["labels"].tolist())
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert part[key].shape == (len(part["labels"]), width), key
            assert (part[key] == batch[key][part["labels"], :width]).all(), key
    assert labels == list(range(size))
    assert sum(shares) == pytest.approx(1.0)
    assert idle == max(0, world_size - size)


def test_a_replicas_slice_follows_its_global_rank_not_its_rank_on_the_node():
    """On two nodes of two processes, the second node's processes have local ranks 0 and
    1 but global ranks 2 and 3: slicing by local rank would give two replicas the same
    examples and none of them the other half."""
    batch = _padded_batch([3, 6, 2, 5], width=8)
    parts = [Replicas(rank=rank, world_size=4, local_rank=rank % 2).shard(batch)[0]["labels"].tolist()
             for rank in range(4)]
    assert parts == [[0], [1], [2], [3]]


def test_gradients_are_reduced_in_buckets_that_hold_every_parameter_once():
    """One all-reduce per bucket: each bucket is filled up to the limit, a parameter larger
    than the limit travels alone, and no bucket is empty (an empty one cannot be
    concatenated) or lost."""
    # first, as BERT-base's word embeddings (23M elements) are first and above the 16M limit
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (10, 3, 3, 2, 2, 1)]
    buckets = list(_buckets(params, max_elements=6))
    assert [[p.numel() for p in b] for b in buckets] == [[10], [3, 3], [2, 2, 1]]
    assert [id(p) for b in buckets for p in b] == [id(p) for p in params]


def _collective_worker(rank: int, init_file: str, results, scenario: str) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        replicas = Replicas(rank=rank, world_size=2)
        if scenario == "partial":
            import mtsmart.distributed as distributed

            distributed.BUCKET_ELEMENTS = 4  # several buckets, and one parameter larger than a bucket
            params = [torch.nn.Parameter(torch.zeros(n)) for n in (6, 2, 2, 1)]
            params[1].grad = torch.full((2,), 1.0 + rank)  # on both replicas
            if rank == 0:  # a replica whose slice was empty has no gradient for these
                params[0].grad = torch.arange(6.0)
                params[2].grad = torch.tensor([5.0, 6.0])
            # params[3]: no gradient anywhere (an idle head)
            kept = replicas.sum_gradients(params)
            results[rank] = (kept, [None if p.grad is None else p.grad.tolist() for p in params])
        else:  # "sync"
            torch.manual_seed(rank)  # each replica builds other weights
            module = torch.nn.Linear(3, 2)
            module.register_buffer("running", torch.full((2,), float(rank)))
            replicas.broadcast_parameters(module)
            state = {k: v.tolist() for k, v in module.state_dict().items()}
            replicas.check_in_sync({"model": module})  # the same weights: no complaint
            with torch.no_grad():
                if rank == 1:
                    module.bias[0] += 1e-3  # a small vector drifts on one replica
            try:
                replicas.check_in_sync({"model": module})
                diverged = "not noticed"
            except RuntimeError as err:
                diverged = str(err)
            results[rank] = (state, diverged)
        dist.destroy_process_group()
    except Exception:  # the parent reports it: a worker's traceback is otherwise lost
        results[rank] = traceback.format_exc()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_a_gradient_some_replicas_lack_counts_as_zero_there(tmp_path):
    """A replica with an empty slice has no gradient for the sampled head: the others' sum
    must still reach every replica (each parameter in its own place, across buckets), and a
    parameter no replica touched stays None as in one process."""
    results = _run(tmp_path, "partial", _collective_worker)
    for rank in (0, 1):
        kept, grads = results[rank]
        assert kept is False, results[rank]
        assert grads == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 3.0], [5.0, 6.0], None], rank


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_replicas_start_from_the_main_replicas_weights_and_a_drift_is_named(tmp_path):
    """Every replica starts from rank 0's weights and buffers, whatever it built itself; a
    replica whose weights later differ, even in one bias, is named on every replica rather
    than training on silently."""
    results = _run(tmp_path, "sync", _collective_worker)
    assert isinstance(results[0], tuple) and isinstance(results[1], tuple), results
    assert results[0][0] == results[1][0]
    assert results[1][0]["running"] == [0.0, 0.0]
    for rank in (0, 1):
        assert "replica 1's model weights differ from rank 0's" in results[rank][1], results[rank]


class _OtherReplicaFine(Replicas):
    """Two replicas, the other of which computed its slice without trouble: the collectives
    as the real ones behave, without a process group."""

    def sum_gradients(self, parameters, drop=False):
        parameters = list(parameters)
        if drop:  # any replica dropping drops the update on all
            for p in parameters:
                p.grad = None
        return drop

    def all_gather(self, value):
        other = {"batches/pairs": 5, "batches/score": 3, "nonfinite_loss_skipped": 2,
                 "regularizer_skipped/pairs": 0, "nonfinite_grad_skipped": 1}
        return [value, other]


def _bare_trainer():
    from mtsmart.train import Trainer

    trainer = Trainer.__new__(Trainer)  # only what _optimizer_step and _global_counters read
    trainer.replicas = _OtherReplicaFine(rank=0, world_size=2)
    trainer.cfg = SimpleNamespace(optim=SimpleNamespace(max_grad_norm=1.0))
    trainer.model = torch.nn.Linear(2, 1)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda update: 1.0)
    trainer.scaler, trainer.teacher = None, None
    trainer.counters = defaultdict(int)
    return trainer


def test_a_batch_this_replica_skipped_drops_the_whole_update():
    """A non-finite loss on one replica's slice skips the batch as one process would: the
    other replicas' part of it must not be applied alone. The schedule still moves on."""
    trainer = _bare_trainer()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for p in trainer.model.parameters():
        p.grad = torch.ones_like(p)  # the other micro-batches of the update
    assert trainer._optimizer_step(skipped_a_batch=True) is None
    assert all((p == b).all() for p, b in zip(trainer.model.parameters(), before))
    assert trainer.scheduler.last_epoch == 1


def test_skips_each_replica_counts_on_its_slice_are_summed_once():
    """What each replica skips on its own slice is added up over replicas (the main one's
    included once); what every replica counts alike (batches drawn, updates skipped) is
    the main replica's count."""
    trainer = _bare_trainer()
    trainer.counters.update({"batches/pairs": 5, "batches/score": 3, "nonfinite_loss_skipped": 1,
                             "regularizer_skipped/pairs": 4, "nonfinite_grad_skipped": 1})
    assert trainer._global_counters() == {"batches/pairs": 5, "batches/score": 3, "nonfinite_loss_skipped": 3,
                                          "regularizer_skipped/pairs": 4, "nonfinite_grad_skipped": 1}


def test_each_replica_draws_its_own_dropout_and_noise():
    """Replicas see different examples; drawing the same dropout masks and SMART noise on
    each would correlate what one process draws independently for every example. The
    seed stays a function of the run's seed, so a run can be repeated."""
    from mtsmart.train import Trainer

    seeds = []
    for rank in range(3):
        trainer = Trainer.__new__(Trainer)  # only what _replica_seed reads
        trainer.cfg, trainer.replicas = SimpleNamespace(seed=4), Replicas(rank=rank, world_size=3)
        seeds.append(trainer._replica_seed())
    assert len(set(seeds)) == 3 and seeds[0] == 4


def test_a_replica_resuming_a_run_saved_by_another_count_draws_anew_from_the_step():
    """Resumed with another number of processes, each replica's dropout and noise draws
    start from its seed plus the step, not from its seed: that would replay the draws of the
    run's first steps."""
    from mtsmart.objective import SideStream
    from mtsmart.train import SIDE_STREAM_SEED_OFFSET, Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.replicas = Replicas(rank=1, world_size=2)
    trainer.cfg = SimpleNamespace(seed=4)
    trainer.global_step = 30
    trainer.device = torch.device("cpu")
    before = torch.get_rng_state()
    try:
        trainer._restore_replica_rng("run/last", [object(), object(), object()], None)
        restored = torch.get_rng_state()
        torch.manual_seed(4 + 7919 + 30)
        assert torch.equal(restored, torch.get_rng_state())
        expected = SideStream(4 + 7919 + SIDE_STREAM_SEED_OFFSET + 30, torch.device("cpu"))
        assert torch.equal(trainer.side_stream.state_dict()["cpu"], expected.state_dict()["cpu"])
    finally:
        torch.set_rng_state(before)


def test_a_resumed_replica_takes_back_only_the_counters_not_summed_over_replicas():
    """The saved skip counts are every replica's sum: restored on every replica, the next
    sum would count them once per replica."""
    from mtsmart.train import restored_counters

    saved = {"nonfinite_loss_skipped": 3, "regularizer_skipped/pairs": 2, "nonfinite_grad_skipped": 1}
    assert restored_counters(saved, is_main=True) == saved
    assert restored_counters(saved, is_main=False) == {"nonfinite_grad_skipped": 1}  # the same on all
