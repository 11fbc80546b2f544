"""Package attributes imported on first use (PEP 562), so `mamba-dna --help` and the CLI's
defaults (read from light config modules) do not import torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, names: dict[str, str], namespace: dict | None = None
                 ) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package`: `names[attr]` is the submodule defining attr.

    With `namespace` (the package's `globals()`), a resolved attribute is stored there: later
    look-ups are plain attribute reads. A public name must not equal a submodule's name:
    importing the submodule binds that name on the package (hence `score.run_score` in
    `score/run.py`).
    """

    def __getattr__(attr: str):
        if attr not in names:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(f".{names[attr]}", package), attr)
        if namespace is not None:
            namespace[attr] = value
        return value

    return __getattr__
