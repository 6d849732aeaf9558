"""distributed.Replicas' collectives on two real gloo processes (no model, a few seconds):
a rank that skips a batch makes every rank drop the update, and a failure of a check that
only the main replica runs reaches every replica as one line."""

from __future__ import annotations

import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtsmart.distributed import Replicas
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


def _run(tmp_path, scenario: str) -> dict:
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results, scenario), nprocs=2, join=True)
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
    ("oserror", ("NotADirectoryError", "afile/run"), ("ConfigError", "afile/run: Not a directory")),
    ("config", ("ConfigError", "run/: not empty"), ("ConfigError", "run/: not empty")),
    ("silent", ("OSError", None), ("ConfigError", "the main process failed; see its error")),
    ("bug", ("KeyError", "'trainer_state'"),
     ("ConfigError", "the main process failed (KeyError: 'trainer_state'); see its error")),
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
