"""Pieces every training loop needs: the learning-rate schedule, the sequence-length ladder,
AdamW parameter groups, checkpoint files and the random-number state.

`pipelines.pretrain` and `pipelines.classify.finetune` both train with these, so a schedule
or a checkpoint means the same thing in both. Checkpoints are read with
`torch.load(weights_only=True)`: they hold tensors and plain Python values only, which is why
numpy arrays go through `to_weights_only` / `from_weights_only`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from mamba_dna.errors import InputError
from mamba_dna.fsutil import atomic_path

# --------------------------------------------------------------------------- schedules


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warmup over `warmup` steps,
    then cosine decay to `min_ratio` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def length_ladder(start: int, target: int) -> list[int]:
    """Sequence-length warmup stages: doubling from min(start, target), ending at `target`,
    e.g. (1024, 8192) -> [1024, 2048, 4096, 8192]; (1024, 3000) -> [1024, 2048, 3000]."""
    out = [min(start, target)]
    while out[-1] * 2 < target:
        out.append(out[-1] * 2)
    if out[-1] != target:
        out.append(target)
    return out


def steps_per_stage(total: int, n_stages: int) -> list[int]:
    """Equal shares of `total` steps; the remainder goes to the last (longest) stages."""
    base, rem = divmod(total, n_stages)
    return [base + (1 if i >= n_stages - rem else 0) for i in range(n_stages)]


# --------------------------------------------------------------------------- optimizer


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices; none on A_log, D (_no_weight_decay), norms, biases,
    embeddings. Tied weights appear once."""
    from mamba_dna.model import no_weight_decay_names

    skip = no_weight_decay_names(model)
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` (tensors and plain values) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, fmt: int, what: str = "mamba-dna checkpoint") -> dict:
    """A checkpoint dict whose "format" is `fmt`, read with weights_only=True."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, not a checkpoint
        raise InputError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise InputError(f"{path}: not a {what} (format {fmt})")
    return ck


def to_weights_only(obj):
    """numpy -> torch / Python so `torch.load(weights_only=True)` can read it back."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_weights_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_weights_only(v) for v in obj)
    return obj


def from_weights_only(obj):
    """Inverse of `to_weights_only`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: from_weights_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_weights_only(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- random state


def seed_all(seed: int) -> None:
    """Seed torch, Python's `random` and numpy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict:
    """This process's random streams (Python, numpy, torch CPU and CUDA) as checkpointable values."""
    py = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "kind": np_state[0],
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(st: dict) -> None:
    """Inverse of `rng_state` (CUDA streams only when the device count matches)."""
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
