"""mamba_dna.distributed: job layout from torchrun/SLURM variables, gloo collectives, stop flags."""

from __future__ import annotations

import os
import signal
import socket
import stat

import pytest
import torch
import torch.multiprocessing as mp

from mamba_dna import distributed as mdist
from mamba_dna.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_detect_single_process():
    assert mdist.detect({}) == mdist.DistEnv(0, 0, 1, "single")
    # one SLURM task is a single process, not a job to join
    assert mdist.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1


def test_detect_torchrun_wins_over_slurm():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}
    d = mdist.detect(env)
    assert (d.rank, d.local_rank, d.world_size, d.source) == (3, 1, 4, "torchrun")
    assert not d.is_main and d.distributed


def test_detect_slurm_tasks():
    d = mdist.detect({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"})
    assert (d.rank, d.local_rank, d.world_size, d.source) == (5, 1, 8, "slurm")


@pytest.mark.parametrize("env", [
    {"RANK": "4", "WORLD_SIZE": "4"},
    {"RANK": "x", "WORLD_SIZE": "4"},
    {"SLURM_PROCID": "2", "SLURM_NTASKS": "2"},
])
def test_detect_inconsistent_env_is_a_config_error(env):
    with pytest.raises(ConfigError):
        mdist.detect(env)


def test_cuda_request_without_cuda_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        mdist.resolve_device("cuda")
    assert mdist.resolve_device("auto").type == "cpu"


def test_helpers_without_a_process_group():
    t = torch.tensor([2.0])
    assert mdist.all_reduce_sum(t).item() == 2.0
    assert mdist.any_rank(True) and not mdist.any_rank(False)
    assert mdist.gather_objects({"a": 1}) == [{"a": 1}]
    assert mdist.broadcast_object("x") == "x"


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_flag_only_records_the_signal_and_restores_handlers(sig):
    before = signal.getsignal(sig)
    with mdist.StopFlag() as stop:
        assert not stop.local and not stop.should_stop()
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
        assert stop.received == sig.name
        assert stop.should_stop()
        os.kill(os.getpid(), signal.SIGUSR2)  # a second signal keeps the first name
        assert stop.received == sig.name
    assert signal.getsignal(sig) == before


def test_slurm_requeue(tmp_path, monkeypatch):
    assert mdist.slurm_requeue({}) is None
    log = tmp_path / "calls.txt"
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    note = mdist.slurm_requeue({"SLURM_JOB_ID": "4242"})
    assert "requeued" in note
    assert log.read_text().split() == ["requeue", "4242"]


def _collective_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    denv, dev = mdist.setup("cpu")
    try:
        assert torch.distributed.get_backend() == "gloo"
        s = mdist.all_reduce_sum(torch.tensor([float(rank + 1)]))
        flag = mdist.any_rank(rank == world - 1)  # only the last rank "received a signal"
        stop = mdist.StopFlag()
        if rank == 0:
            stop.received = "SIGTERM"
        agreed = stop.should_stop()
        objs = mdist.gather_objects({"rank": rank})
        b = mdist.broadcast_object(f"from {rank}")
        torch.save({"sum": s.item(), "flag": flag, "agreed": agreed, "objs": objs, "b": b,
                    "env": (denv.rank, denv.world_size, dev.type)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        mdist.teardown()


def test_two_gloo_processes_agree(tmp_path):
    world = 2
    mp.spawn(_collective_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for r in range(world):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert res["sum"] == 3.0
        assert res["flag"] is True and res["agreed"] is True
        assert res["objs"] == [{"rank": 0}, {"rank": 1}]
        assert res["b"] == "from 0"
        assert res["env"] == (r, world, "cpu")
