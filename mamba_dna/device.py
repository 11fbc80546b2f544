"""The one device resolver: a user's `--device` string -> a usable `torch.device`.

Every pipeline and the distributed launcher call `resolve_device`; nothing else parses device
strings. A device this machine cannot use is a `ConfigError` (one line, exit 2) naming the
option and what is available, never a torch traceback later.
"""

from __future__ import annotations

import torch

from mamba_dna.errors import ConfigError

CHOICES = "auto | cpu | cuda | cuda:K"


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda (this rank's GPU) when CUDA is available, else cpu.

    Explicit "cuda" picks cuda:LOCAL_RANK under a launcher (one GPU per rank); "cuda:K" must
    name a GPU that exists.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r}: not a device name", hint=f"use {CHOICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"--device {device}: only CPU and CUDA devices are supported", hint=f"use {CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine",
                          hint="use --device cpu or auto")
    count = torch.cuda.device_count()
    if dev.index is None:
        return torch.device("cuda", local_rank % max(count, 1))
    if dev.index >= count:
        raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return dev
