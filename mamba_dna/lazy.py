"""Package attributes imported on first use (PEP 562), so `mamba-dna --help` and the CLI's
defaults (read from light config modules) do not import torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package`: `names[attr]` is the submodule defining attr."""

    def __getattr__(attr: str):
        if attr in names:
            return getattr(importlib.import_module(f".{names[attr]}", package), attr)
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")

    return __getattr__
