"""Process-group set-up for torchrun and SLURM, collective helpers, and stop-signal flags.

Who am I? `detect()` reads, in this order:

* torchrun / torch.distributed.elastic: RANK, LOCAL_RANK, WORLD_SIZE (+ MASTER_ADDR/PORT);
* `srun python -m mamba_dna ...` with one task per device: SLURM_PROCID, SLURM_LOCALID,
  SLURM_NTASKS (MASTER_ADDR defaults to the first host of SLURM_JOB_NODELIST, MASTER_PORT to
  a port derived from SLURM_JOB_ID);
* otherwise a single process (rank 0 of 1), no process group at all.

`setup(device)` initialises the group (gloo for CPU tensors, NCCL for CUDA) and pins each
rank to cuda:LOCAL_RANK. Every helper below also works without a process group, so the
training loop is written once for 1 or N processes.

Signals: `StopFlag` installs handlers for SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 that only set
a flag (no I/O, no exceptions inside the handler). The loop asks `stop.should_stop()` at each
step boundary; it all-reduces the flag so every rank stops after the same step, and rank 0
then checkpoints. `slurm_requeue()` asks SLURM to put the job back in the queue.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mamba_dna.device import resolve_device
from mamba_dna.errors import ConfigError

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    source: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, env: dict) -> int:
    try:
        return int(env[name])
    except ValueError as e:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from e


def detect(env: dict | None = None) -> DistEnv:
    """Rank, local rank and world size from torchrun or SLURM variables (see module doc)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int_env("RANK", env), _int_env("WORLD_SIZE", env)
        local = _int_env("LOCAL_RANK", env) if "LOCAL_RANK" in env else rank
        source = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int_env("SLURM_NTASKS", env) > 1:
        rank, world = _int_env("SLURM_PROCID", env), _int_env("SLURM_NTASKS", env)
        local = _int_env("SLURM_LOCALID", env) if "SLURM_LOCALID" in env else 0
        source = "slurm"
    else:
        return DistEnv()
    if not (0 <= rank < world) or local < 0:
        raise ConfigError(
            f"inconsistent {source} environment: rank {rank}, local rank {local}, world size {world}",
            hint="expected 0 <= rank < world size",
        )
    return DistEnv(rank=rank, local_rank=local, world_size=world, source=source)


def _slurm_master(env: dict) -> tuple[str, str]:
    """MASTER_ADDR/PORT for a plain `srun` launch: first node of the job, port from the job id."""
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
        addr = nodelist
        if shutil.which("scontrol"):
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
            )
            if out.returncode == 0 and out.stdout.split():
                addr = out.stdout.split()[0]
    port = env.get("MASTER_PORT") or str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return addr, port


def setup(device: str = "auto", timeout_s: float = 1800.0) -> tuple[DistEnv, torch.device]:
    """Detect the job layout, pick this rank's device and start the process group if needed."""
    de = detect()
    dev = resolve_device(device, de.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if de.distributed and not dist.is_initialized():
        if de.source == "slurm":
            addr, port = _slurm_master(dict(os.environ))
            os.environ.setdefault("MASTER_ADDR", addr)
            os.environ.setdefault("MASTER_PORT", port)
            os.environ.setdefault("RANK", str(de.rank))
            os.environ.setdefault("WORLD_SIZE", str(de.world_size))
            os.environ.setdefault("LOCAL_RANK", str(de.local_rank))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        from datetime import timedelta

        dist.init_process_group(
            backend=backend, rank=de.rank, world_size=de.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return de, dev


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (identity for one process). Returns `t`."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on at least one (an all-reduce MAX)."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank (identity for one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] for one process)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class StopFlag:
    """Signal handlers that only record "please stop"; the loop decides when.

    Usable as a context manager: previous handlers are restored on exit. Only the main thread
    can install handlers; elsewhere the flag simply never fires from a signal.
    """

    def __init__(self, signals: tuple[str, ...] = STOP_SIGNALS):
        self.names = [s for s in signals if hasattr(signal, s)]
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        # Only a flag: no locks, no I/O, no exceptions (a checkpoint may be mid-write).
        if self.received is None:
            self.received = signal.Signals(signum).name

    def install(self) -> StopFlag:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.names:
            sig = getattr(signal, name)
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def local(self) -> bool:
        return self.received is not None

    def should_stop(self, device: torch.device | str = "cpu") -> bool:
        """All ranks agree: True everywhere when any rank received a signal (a collective)."""
        return any_rank(self.local, device)


def slurm_requeue(env: dict | None = None) -> str | None:
    """`scontrol requeue $SLURM_JOB_ID` when running under SLURM; returns a note for the log."""
    env = dict(os.environ if env is None else env)
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    if not shutil.which("scontrol"):
        return f"SLURM job {job}: scontrol not found, not requeued"
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if out.returncode == 0:
        return f"SLURM job {job} requeued (scontrol requeue {job})"
    return f"SLURM job {job}: scontrol requeue failed: {out.stderr.strip() or out.stdout.strip()}"
