"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def hf_offline_cache(tmp_path, monkeypatch):
    """`put(model_dir, "org/name")` -> "hf:org/name": the directory's config, weights and
    tokenizer files laid out as a Hugging Face hub cache (plus a modeling `*.py` that must
    never run), with HF_HUB_OFFLINE=1, so pipelines load the id without a network."""
    from huggingface_hub import constants as hf_constants

    root = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(root.parent))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))

    def put(model_dir: Path, repo: str) -> str:
        org, name = repo.split("/")
        base = root / f"models--{org}--{name}"
        snap = base / "snapshots" / ("ab" * 20)
        snap.mkdir(parents=True)
        for f in ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json"):
            if (Path(model_dir) / f).exists():
                shutil.copy(Path(model_dir) / f, snap / f)
        (snap / "modeling_caduceus.py").write_text("raise SystemExit('never imported')\n")
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text("ab" * 20)
        return f"hf:{repo}"

    return put
