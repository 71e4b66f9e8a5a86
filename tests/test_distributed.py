"""Tests for distributed training in fit (autoenc.training.distributed and batch sharding).

The fast tests run in this process. The slow ones start two real processes on 127.0.0.1 with
the environment ``torchrun`` gives its workers (Gloo on the CPU) and check what they report:
tests/_ddp_worker.py holds what each process runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _fit_models import tiny_ae, tiny_data

from autoenc.data.batching import make_batches
from autoenc.training import fit
from autoenc.training.distributed import setup

WORKER = Path(__file__).with_name("_ddp_worker.py")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launch(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------------------------
# sharding: the ranks' batches together are one process's global batches


def _epoch(data, *, rank, world_size, batch_size, drop_last=False, equal=True):
    batches = make_batches(
        data,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(5),
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        equal_batches=equal,
    )
    batches.set_epoch(2)
    return list(batches)


@pytest.mark.parametrize("n", [16, 21, 17, 9])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_batches_are_the_single_process_global_batches(n, world_size):
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    b = 3
    single = _epoch(x, rank=0, world_size=1, batch_size=b * world_size)
    ranks = [_epoch(x, rank=r, world_size=world_size, batch_size=b) for r in range(world_size)]
    assert len({len(r) for r in ranks}) == 1  # the same number of steps everywhere
    assert len(ranks[0]) == len(single)
    for k, whole in enumerate(single):
        parts = torch.cat([r[k] for r in ranks]).flatten()
        if len(whole) >= world_size:
            assert sorted(parts.tolist()) == sorted(whole.flatten().tolist())
        else:  # fewer examples than ranks: padded with the epoch's first examples
            assert set(whole.flatten().tolist()) <= set(parts.tolist())
            assert len(parts) == world_size


def test_drop_last_drops_the_last_global_batch_and_the_order_changes_per_epoch():
    x = torch.arange(21, dtype=torch.float32).unsqueeze(1)
    ranks = [_epoch(x, rank=r, world_size=2, batch_size=4, drop_last=True) for r in range(2)]
    assert [[len(b) for b in r] for r in ranks] == [[4, 4], [4, 4]]
    rows = torch.cat([b for r in ranks for b in r]).flatten().tolist()
    assert len(set(rows)) == 16
    batches = make_batches(
        x, batch_size=4, shuffle=True, generator=torch.Generator(), rank=1, world_size=2
    )
    assert not torch.equal(torch.cat(list(batches)), torch.cat(list(batches)))


def test_evaluation_shards_cover_the_data_once_and_may_differ_in_length():
    x = torch.arange(7, dtype=torch.float32).unsqueeze(1)
    shards = [_epoch(x, rank=r, world_size=2, batch_size=2, equal=False) for r in range(2)]
    rows = torch.cat([b for s in shards for b in s]).flatten().tolist()
    assert sorted(rows) == list(range(7))
    assert [sum(len(b) for b in s) for s in shards] == [4, 3]


def test_fewer_examples_than_processes_is_rejected():
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        make_batches(torch.rand(2, 4), batch_size=1, rank=0, world_size=3)


# ---------------------------------------------------------------------------------------------
# set-up in one process


def test_a_single_process_run_needs_no_process_group(no_launch):
    run = setup("auto", "cpu")
    assert not run.enabled and run.world_size == 1 and not run.owns_group
    assert not torch.distributed.is_initialized()


def test_distributed_true_without_a_launch_says_how_to_launch(no_launch):
    with pytest.raises(ValueError, match="torchrun"):
        fit(tiny_ae(), tiny_data(), epochs=1, distributed=True, verbose=False)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_distributed_takes_auto_true_or_false(no_launch, bad):
    with pytest.raises(ValueError, match="distributed must be"):
        fit(tiny_ae(), tiny_data(), epochs=1, distributed=bad, verbose=False)


def test_distributed_timeout_must_be_positive(no_launch):
    with pytest.raises(ValueError, match="distributed_timeout"):
        fit(tiny_ae(), tiny_data(), epochs=1, distributed_timeout=0, verbose=False)


def test_an_incomplete_launch_environment_is_named(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        fit(tiny_ae(), tiny_data(), epochs=1, verbose=False)


def test_distributed_false_ignores_the_launch(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = fit(tiny_ae(), tiny_data(), epochs=1, distributed=False, verbose=False)
    assert result.state.world_size == 1 and result.state.is_main_process


# ---------------------------------------------------------------------------------------------
# two real processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(mode: str, out: Path, *extra: str, world_size: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), mode, str(out), *extra],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    try:
        return [(p.wait(timeout=timeout), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Runs tests/_ddp_worker.py main on two processes once; the results of both ranks."""
    out = tmp_path_factory.mktemp("ddp")
    # A port found free can be taken (by gloo's own connections) before a worker listens on
    # it: try again with new ports when that is what failed.
    for _ in range(3):
        runs = _wait(_launch("main", out, str(_free_port())), timeout=240)
        if not any("EADDRINUSE" in stderr for _, _, stderr in runs):
            break
    for code, stdout, stderr in runs:
        assert code == 0, f"a worker failed:\n{stdout}\n{stderr}"
    return out, runs, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(two_ranks):
    import _ddp_worker as w

    _, _, results = two_ranks
    model, losses = w.autoencoder(), w.StepLosses()
    x, val = w.data()
    single = fit(
        model,
        x,
        epochs=w.EPOCHS,
        batch_size=w.BATCH,
        lr=w.LR,
        val_data=val,
        seed=0,
        callbacks=[losses],
        verbose=False,
    )
    ranks = [r["equivalence"] for r in results]
    # the same weights on both ranks, bit for bit: DDP gives both the same averaged gradient
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key])
    # and those of one process with the global batch, up to float rounding: averaging two
    # half-batch gradients (one of them weighted, for the 3 + 2 split of the last batch) sums in
    # another order; 9 Adam steps of lr 0.05 keep the difference near 1e-7
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][key], value, rtol=0, atol=1e-6)
    assert ranks[0]["steps"] == single.steps == 9
    assert ranks[0]["losses"] == pytest.approx(losses.losses, rel=1e-6)
    for key in ("train/loss", "val/loss"):
        assert ranks[0]["history"][key] == pytest.approx(single.history[key], rel=1e-6)
        assert ranks[0]["history"][key] == ranks[1]["history"][key]


@pytest.mark.slow
def test_only_rank_0_prints_and_writes_and_fits_group_is_destroyed(two_ranks):
    out, runs, results = two_ranks
    (_, stdout0, _), (_, stdout1, _) = runs
    assert "epoch 3/3" in stdout0 and "epoch" not in stdout1
    assert (out / "files0" / "log.csv").exists() and (out / "files0" / "ckpt" / "last.pt").exists()
    assert not (out / "files1").exists()
    assert not any(r["equivalence"]["group_left"] for r in results)
    assert all(r["user_group_kept"] for r in results)


@pytest.mark.slow
def test_resume_under_ddp_equals_the_uninterrupted_run(two_ranks):
    _, _, results = two_ranks
    for r in results:
        assert r["resume"] == {"first_epochs": 2, "resumed_equal": True}


@pytest.mark.slow
def test_a_stop_or_a_nan_on_one_rank_stops_every_rank(two_ranks):
    _, _, results = two_ranks
    for r in results:
        assert r["stops"]["stopped_steps"] == 3
        assert r["stops"]["nan"] == ("kl", 3)


@pytest.mark.slow
def test_bad_set_ups_fail_on_every_rank_with_a_clear_error(two_ranks):
    _, _, results = two_ranks
    for r in results:
        errors = r["rejected"]
        assert "divisible by the number of processes" in errors["indivisible"]
        assert "use 6 or 8" in errors["indivisible"]
        assert "DistributedSampler" in errors["unsharded_loader"]
        assert errors["sharded_loader_steps"] == 2 * 3  # 21 examples: 11 per rank, batches of 4


@pytest.mark.slow
def test_a_killed_rank_makes_the_other_fail_at_once(tmp_path):
    # the survivor must exit with an error well before the 120 s wait (the group's timeout is
    # 30 s; Gloo notices the closed connection at once): a hang fails the test
    (code0, out0, err0), (code1, out1, _) = _wait(_launch("die", tmp_path), timeout=120)
    assert "DIE 1" in out1 and code1 == -9
    assert code0 != 0 and "FINISHED" not in out0
    assert "DistributedError" in err0 and "another process crashed" in err0, err0[-2000:]


@pytest.mark.slow
def test_a_hung_rank_makes_the_other_fail_after_the_timeout(tmp_path):
    procs = _launch("hang", tmp_path)
    try:
        code0 = procs[0].wait(timeout=120)  # distributed_timeout=5 s bounds the wait
        _, err0 = procs[0].communicate()
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert code0 != 0
    assert "DistributedError" in err0 or "imed out" in err0, err0[-2000:]
