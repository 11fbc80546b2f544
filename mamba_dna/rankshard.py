"""Inference at scale under a launcher: `torchrun`/`srun` ranks become `--shard i/n`.

`score` and `embed` already split their work with `--shard i/n` (array jobs) and join the
parts with a merge step that reproduces a single run exactly. When they are started by
torchrun (RANK/WORLD_SIZE) or by `srun` with several tasks (SLURM_PROCID/SLURM_NTASKS) and
no `--shard` is given, each rank takes shard RANK/WORLD_SIZE, writes its own part, and rank
0 waits for every part and merges them into the requested output. No process group is
needed: the parts are files, written atomically, so rank 0 only waits for them to appear.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from mamba_dna import log
from mamba_dna.errors import ConfigError, MambaDNAError


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard i/n` (0-based) -> (i, n); None or "" -> (0, 1)."""
    if not text:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise ConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n (0-based, e.g. 0/8 "
                          "... 7/8; with SLURM use $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(m.group(1)), int(m.group(2))


def launcher_shard(explicit: str | None) -> tuple[int, int] | None:
    """(rank, world) when a launcher started several processes and no --shard was given."""
    if explicit:
        return None
    from mamba_dna.distributed import detect  # torch: imported only when a run starts

    env = detect()
    return (env.rank, env.world_size) if env.world_size > 1 else None


def run_token() -> str:
    """A short id shared by the ranks of one launch and different across launches, so rank 0
    never mistakes a stale part from an earlier run for a fresh one."""
    import hashlib

    keys = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_STEP_ID")
    raw = "|".join(os.environ.get(k, "") for k in keys)
    return hashlib.sha256(raw.encode()).hexdigest()[:8]


def with_token(out: str) -> Path:
    """`dir/name.ext` -> `dir/name.run<token>.ext` (the base name of this launch's parts)."""
    stem, suffixes = _split_suffix(Path(out))
    return Path(out).with_name(f"{stem}.run{run_token()}{suffixes}")


def rank_device(device: str) -> str:
    """This rank's `--device`: "auto"/"cuda" -> cuda:LOCAL_RANK when CUDA is available (one
    GPU per rank), else as `device.resolve_device` decides."""
    from mamba_dna.device import resolve_device
    from mamba_dna.distributed import detect

    return str(resolve_device(device, local_rank=detect().local_rank))


def part_path(out: str | os.PathLike, i: int, n: int, default_suffix: str = "") -> Path:
    """The one name of part i of n of `out` (score, embed, the sbatch templates, launcher
    ranks): `dir/name.ext` -> `dir/name.shard{i}-of-{n}.ext` (.vcf.gz/.tsv.gz kept whole; no
    extension: `default_suffix`); n == 1 -> `out` itself."""
    p = Path(out)
    if n == 1:
        return p
    stem, suffixes = _split_suffix(p)
    return p.with_name(f"{stem}.shard{i}-of-{n}{suffixes or default_suffix}")


def _split_suffix(p: Path) -> tuple[str, str]:
    """`name.vcf.gz` -> ("name", ".vcf.gz"); `name.h5` -> ("name", ".h5"); `name` -> ("name", "")."""
    suffixes = "".join(p.suffixes[-2:]) if p.name.endswith((".vcf.gz", ".tsv.gz")) else p.suffix
    return (p.name[: len(p.name) - len(suffixes)] if suffixes else p.name), suffixes


def run_ranks(
    out: str,
    rank: int,
    world: int,
    run_part: Callable[[str], Path | str],
    part_path: Callable[[int, int], Path],
    merge: Callable[[list[str], str], object],
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> str | None:
    """Run this rank's shard; on rank 0 wait for every part, merge into `out`, remove parts.

    Returns `out` on rank 0 and None elsewhere.
    """
    run_part(f"{rank}/{world}")
    if rank != 0:
        return None
    parts = [part_path(i, world) for i in range(world)]
    t0 = time.time()
    waiting = [p for p in parts if not p.exists()]
    if waiting:
        log.info(f"rank 0: waiting for {len(waiting)} of {world} parts")
    while waiting:
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise MambaDNAError(f"parts not written after {timeout_s:.0f}s: {', '.join(map(str, waiting))}")
        time.sleep(poll_s)
        waiting = [p for p in parts if not p.exists()]
    merge([str(p) for p in parts], out)
    for p in parts:
        os.unlink(p)
    log.info(f"merged {world} rank parts into {out}")
    return out
