"""The run directory: config.json, metrics.jsonl, checkpoints/ (last K step files + best.pt).

A new run directory gets config.json; an existing one is resumed with its own config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mamba_dna import log
from mamba_dna import training as tr
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import guard_output, sha256_file

from .config import PretrainConfig

CKPT_DIR = "checkpoints"
CKPT_FORMAT = 1
START_FILES = {"config.json", "baseline.json", "metrics.jsonl", CKPT_DIR}  # before a checkpoint


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Step checkpoints, oldest first (best.pt excluded)."""
    d = Path(run_dir) / CKPT_DIR
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def load_checkpoint(path: Path) -> dict:
    return tr.load_checkpoint(path, CKPT_FORMAT, "mamba-dna pretrain checkpoint")


def write_checkpoint(run_dir: Path, step: int, state: dict, best: bool, keep_last: int) -> Path:
    """step_XXXXXXXX.pt (and best.pt), then drop all but the last `keep_last` step files."""
    ck_dir = Path(run_dir) / CKPT_DIR
    path = ck_dir / f"step_{step:08d}.pt"
    tr.save_checkpoint(path, state)
    if best:
        tr.save_checkpoint(ck_dir / "best.pt", state)
    for old in checkpoint_paths(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def fingerprints(inputs: list[str]) -> list[dict]:
    """Per input, what tells a changed input apart cheaply: a file's size and the sha256 of
    its first and last MiB; a `tokenize` directory's manifest.json sha256."""
    out = []
    for p in map(Path, inputs):
        fp: dict = {"path": str(p)}
        if p.is_dir() and (p / "manifest.json").is_file():
            fp["manifest_sha256"] = sha256_file(p / "manifest.json")
        elif p.is_file():
            size = p.stat().st_size
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(size - (1 << 20), 0))
                h.update(fh.read(1 << 20))
            fp.update(size=size, head_tail_sha256=h.hexdigest())
        out.append(fp)
    return out


def check_inputs(run: Path, saved: PretrainConfig, given: PretrainConfig) -> None:
    """An existing run continues only on the inputs it started with, unchanged."""
    def same(a: str, b: str) -> bool:
        return a == b or Path(a).resolve() == Path(b).resolve()

    if len(given.inputs) != len(saved.inputs) or not all(map(same, given.inputs, saved.inputs)):
        raise ConfigError(f"{run}: this run was started on {', '.join(saved.inputs)}; the inputs "
                          f"given ({', '.join(given.inputs)}) differ",
                          hint="choose a new --out for new inputs, or omit them to resume the run")
    for old, new in zip(saved.inputs_fingerprint, fingerprints(saved.inputs), strict=False):
        changed = [k for k in old if k != "path" and old.get(k) != new.get(k)]
        if changed:
            raise InputError(f"{old['path']}: changed since the run in {run} started "
                             f"({', '.join(changed)} differ); resuming would train on other data",
                             hint="put the original input back, or start a new --out")


def prepare_run(cfg: PretrainConfig, resume: bool) -> tuple[PretrainConfig, bool]:
    """(the config to run, whether a checkpoint is resumed)."""
    run = Path(cfg.out)
    guard_output(run, cfg.inputs, directory=True)
    cfg_path = run / "config.json"
    existing = cfg_path.exists() and checkpoint_paths(run)
    if resume and not cfg_path.exists():
        raise InputError(f"{run}: --resume given but there is no run here (no config.json)")
    if cfg_path.exists() and (resume or existing):
        saved = PretrainConfig.load(cfg_path)
        saved.out = str(run)
        check_inputs(run, saved, cfg)
        given, kept, default = cfg.to_dict(), saved.to_dict(), PretrainConfig.defaults()
        # arch / objective: config_from_cli lends the run's own when not given, so any
        # difference was asked for (even `--arch mamba`, the default)
        differ = [k for k in given if k not in ("out", "inputs", "inputs_fingerprint") and given[k] != kept[k]
                  and (given[k] != default.get(k) or k == "arch")]
        if differ:
            log.info(f"resuming {run}: its config.json wins; ignoring changed option(s) "
                     f"{', '.join(differ)} (start a new --out to change them)")
        return saved, bool(existing)
    if cfg_path.exists() and run.is_dir() and {p.name for p in run.iterdir()} <= START_FILES:
        # a run that died before its first checkpoint: start it over (baseline.json depends
        # on the config; metrics rows would be written twice)
        log.info(f"{run}: no checkpoint yet (stopped before its first one); starting over")
        for name in ("baseline.json", "metrics.jsonl"):
            (run / name).unlink(missing_ok=True)
    elif run.exists() and any(p for p in run.iterdir() if p.name != "config.json"):
        raise ConfigError(f"{run}: directory exists and is not a pretrain run",
                          hint="choose a new --out or remove the directory")
    cfg.inputs_fingerprint = fingerprints(cfg.inputs)  # saved in config.json; checked on resume
    cfg.objective = cfg.resolved_objective  # config.json says which objective ran
    return cfg, False


# --------------------------------------------------------------------------- metrics.jsonl


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def trim_metrics(run_dir: Path, step: int) -> None:
    """On resume: drop rows logged after the checkpoint (they will be recomputed)."""
    from mamba_dna.fsutil import atomic_path

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep))
