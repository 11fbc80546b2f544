"""The one model loader of the pipelines: a model spec -> a model in eval mode.

Today a spec is a mamba-dna model directory (config.json + model.safetensors, written by
`pretrain`, `convert` or `save_pretrained`); weights are read with safetensors only, so a
directory from a stranger never runs code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mamba_dna.errors import InputError
from mamba_dna.fsutil import sha256_file
from mamba_dna.model import CONFIG_NAME, WEIGHTS_NAME, MambaLM


def _model_dir(spec: str | os.PathLike) -> Path:
    p = Path(spec)
    if not p.is_dir() or not (p / WEIGHTS_NAME).exists():
        raise InputError(f"{p}: not a model directory (no {WEIGHTS_NAME})"
                         if p.is_dir() else f"{p}: not a model directory "
                         f"(expected {CONFIG_NAME} + {WEIGHTS_NAME})",
                         hint="point --model at a directory written by `mamba-dna pretrain`")
    return p


def load_model(spec: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of `spec` on `map_location`, in eval mode (InputError for a bad directory)."""
    return MambaLM.from_pretrained(_model_dir(spec), map_location=map_location).eval()


def checkpoint_sha256(spec: str | os.PathLike) -> str:
    """sha256 of the weights file of `spec` (recorded in outputs for provenance)."""
    return sha256_file(_model_dir(spec) / WEIGHTS_NAME)
