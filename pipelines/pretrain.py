"""`mamba-dna pretrain`: next-nucleotide pretraining of a Mamba DNA language model.

The recipe reads top to bottom:

    setup     config -> run directory, process group (torchrun / SLURM / single), data
              (FASTA windows or a `tokenize` shard directory), model, AdamW, schedule,
              Markov baseline on the same validation split, resume from the last checkpoint
    train     sequence-length warmup stages (same tokens per step), reverse-complement
              augmentation, gradient accumulation, clipping, non-finite steps skipped,
              evaluation (loss, bits per base) beside the best k-mer Markov model
    save      atomic checkpoints (last K + best), metrics.jsonl, curves.png, model/

Determinism: the global batch of step s (which windows, which strand) is a function of
(seed, s) only, every rank takes its slice of it, and the loss is normalised by the global
count of scored bases. So 1 process or N processes with the same global batch follow the
same trajectory (to fp32 reduction order), and a checkpoint written with N ranks resumes
on M ranks.

Run directory:
    config.json          this PretrainConfig (what --resume reads back)
    metrics.jsonl        one JSON object per log/eval event
    curves.png           training and validation bits per base, Markov baseline
    checkpoints/         step_XXXXXXXX.pt (last K) and best.pt
    baseline.json        the Markov order chosen on validation and its bits per base
    model/               the final model (MambaLM.save_pretrained)
    summary.json         final figures
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mamba_dna import distributed as mdist
from mamba_dna import log
from mamba_dna.errors import ConfigError, InputError, MambaDNAError
from mamba_dna.fsutil import atomic_dir, atomic_path, read_json_object, write_json
from mamba_dna.tokenizer import BASES
from mamba_dna.tokenizer import N as N_ID

LN2 = math.log(2.0)
BASE_LO, BASE_HI = min(BASES), max(BASES)  # A..T are contiguous ids (4..7)
CKPT_DIR = "checkpoints"
CKPT_FORMAT = 1


# --------------------------------------------------------------------------- config


@dataclass
class PretrainConfig:
    """Everything a run needs; saved as run_dir/config.json and read back by --resume."""

    inputs: list[str] = field(default_factory=list)  # FASTA files, or one shard directory
    out: str = "runs/pretrain"
    model: dict = field(default_factory=lambda: {"d_model": 128, "n_layer": 2})  # MambaConfig fields
    # data
    seq_len: int = 1024  # target window length (bp)
    stride: int | None = None  # window stride on FASTA input (None = seq_len)
    split_by: str = "block"  # FASTA held-out split: "block" (regions) or "record"
    block_size: int | None = None  # split_by="block": bases per block (None = 8 * seq_len)
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # held out for downstream evaluation, never read here
    max_n_fraction: float = 0.1
    rc_augment: bool = True  # random strand per window
    softmask_weight: float = 1.0  # loss weight of lowercase (soft-masked) targets
    # sequence-length warmup: start at seq_len_start, double per stage up to seq_len
    seq_len_start: int | None = None  # None = no warmup
    seq_warmup_steps: int = 0  # steps spent below seq_len, split evenly over the stages
    # optimisation
    steps: int = 1000
    batch_size: int = 16  # global: windows of seq_len per optimizer step, over all ranks
    grad_accum: int = 1  # micro-batches per step on each rank
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_checkpointing: bool = False
    max_bad_steps: int = 10  # non-finite losses in a row before giving up
    # evaluation and baseline
    eval_every: int = 100
    eval_windows: int = 64
    eval_batch_size: int = 8
    markov_orders: list[int] = field(default_factory=lambda: list(range(0, 11)))
    markov_max_bases: int = 20_000_000
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 100
    keep_last: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    # -- validation, I/O

    def validate(self) -> PretrainConfig:
        def need(ok: bool, msg: str, hint: str | None = None):
            if not ok:
                raise ConfigError(f"pretrain: {msg}", hint=hint)

        need(bool(self.inputs), "no input given", "pass FASTA files or a `mamba-dna tokenize` directory")
        need(self.seq_len >= 8, f"--seq-len {self.seq_len}: expected >= 8")
        need(self.steps >= 1, f"--steps {self.steps}: expected >= 1")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch size and grad accumulation must be >= 1")
        need(self.split_by in ("block", "record"), f"--split-by {self.split_by!r}: expected block or record")
        need(0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1 - self.val_fraction,
             f"val/test fractions {self.val_fraction}/{self.test_fraction}: expected 0 < val, val + test < 1")
        need(self.precision in ("auto", "fp32", "bf16"), f"--precision {self.precision!r}: expected auto, fp32 or bf16")
        need(self.softmask_weight >= 0, f"--softmask-weight {self.softmask_weight}: expected >= 0")
        need(self.lr > 0 and 0 <= self.min_lr_ratio <= 1, "lr must be > 0 and min_lr_ratio in [0, 1]")
        need(self.max_bad_steps >= 1 and self.keep_last >= 1, "max_bad_steps and keep_last must be >= 1")
        for name in ("eval_every", "log_every", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)}: expected >= 1")
        lengths = self.stage_lengths()
        need(self.seq_warmup_steps == 0 or len(lengths) > 1,
             "seq_warmup_steps > 0 needs --seq-len-start below --seq-len")
        need(self.seq_warmup_steps < self.steps or len(lengths) == 1,
             f"seq_warmup_steps {self.seq_warmup_steps} must be below --steps {self.steps}")
        return self

    def stage_lengths(self) -> list[int]:
        """[start, 2*start, ..., seq_len]; [seq_len] without warmup."""
        if self.seq_len_start is None or self.seq_len_start >= self.seq_len:
            return [self.seq_len]
        s = self.seq_len_start
        ratio = self.seq_len // s
        if s < 8 or self.seq_len % s or ratio & (ratio - 1):
            raise ConfigError(
                f"pretrain: --seq-len-start {s} must be >= 8 and divide --seq-len {self.seq_len} "
                "by a power of two",
                hint="e.g. --seq-len-start 1024 --seq-len 131072",
            )
        out = [s]
        while out[-1] < self.seq_len:
            out.append(out[-1] * 2)
        return out

    def seq_len_at(self, step: int) -> int:
        """Training length at optimizer step `step` (0-based)."""
        lengths = self.stage_lengths()
        if len(lengths) == 1 or self.seq_warmup_steps <= 0 or step >= self.seq_warmup_steps:
            return self.seq_len
        per_stage = max(1, self.seq_warmup_steps // (len(lengths) - 1))
        return lengths[min(step // per_stage, len(lengths) - 2)]

    def lr_factor(self, step: int) -> float:
        """Linear warmup then cosine decay to min_lr_ratio (multiplier of lr)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"{where}: unknown PretrainConfig field(s) {', '.join(extra)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PretrainConfig:
        d = read_json_object(path, "a pretrain run directory holds config.json")
        return cls.from_dict(d, where=str(path))


# --------------------------------------------------------------------------- data


class WindowData:
    """Fixed-length windows with random access: tokens (n, L) uint8 and softmask (n, L) bool."""

    def __init__(self, tokens: np.ndarray, softmask: np.ndarray | None, source: str):
        self.tokens = tokens  # (n, L) uint8
        self.softmask = softmask  # (n, L) bool or None
        self.source = source

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    def get(self, idx: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        idx = np.asarray(idx, dtype=np.int64)
        sm = self.softmask[idx] if self.softmask is not None else None
        return self.tokens[idx], sm  # (b, L) uint8, (b, L) bool


class ShardWindows(WindowData):
    """A `tokenize` shard split, read lazily through ShardDataset."""

    def __init__(self, ds, source: str):
        self.ds, self.source = ds, source
        self._len = len(ds)

    def __len__(self) -> int:
        return self._len

    @property
    def length(self) -> int:
        return int(self.ds.window_length)

    def get(self, idx):
        toks, sms = [], []
        for i in idx:
            t, s = self.ds[int(i)]
            toks.append(np.asarray(t, dtype=np.uint8))
            sms.append(np.asarray(s, dtype=bool) if s is not None else np.zeros(len(t), bool))
        return np.stack(toks), np.stack(sms)


def _fasta_windows(cfg: PretrainConfig, split: str) -> WindowData:
    from mamba_dna.genome import GenomeWindows

    toks, sms = [], []
    for path in cfg.inputs:
        gw = GenomeWindows(
            path, cfg.seq_len, stride=cfg.stride, max_n_fraction=cfg.max_n_fraction,
            split=split, split_by=cfg.split_by, val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction, seed=cfg.seed, block_size=cfg.block_size,
        )
        for w in gw:
            if w.strand == "-":  # augmentation is ours; keep the forward strand
                continue
            toks.append(np.asarray(w.tokens, dtype=np.uint8))
            sms.append(np.asarray(w.softmask, dtype=bool))
    where = ", ".join(cfg.inputs)
    if not toks:
        raise InputError(
            f"{where}: no {split} windows of {cfg.seq_len} bp (sequences too short or too many N)",
            hint="lower --seq-len or --val-fraction, or raise --max-n-fraction",
        )
    return WindowData(np.stack(toks), np.stack(sms), f"{where} [{split}]")


def load_data(cfg: PretrainConfig) -> tuple[WindowData, WindowData]:
    """(train, val) windows of cfg.seq_len from FASTA files or a shard directory."""
    for p in cfg.inputs:
        if not Path(p).exists():
            raise InputError(f"{p}: no such file or directory", hint="pass FASTA files or a tokenize directory")
    first = Path(cfg.inputs[0])
    if first.is_dir():
        if len(cfg.inputs) > 1:
            raise ConfigError("pretrain: pass one shard directory, or FASTA files, not both")
        from mamba_dna.shards import ShardDataset

        train = ShardWindows(ShardDataset(first, split="train"), f"{first} [train]")
        val = ShardWindows(ShardDataset(first, split="val"), f"{first} [val]")
        if train.length != cfg.seq_len:
            raise ConfigError(
                f"{first}: shards hold {train.length} bp windows but --seq-len is {cfg.seq_len}",
                hint=f"pass --seq-len {train.length} or re-run tokenize",
            )
        if len(val) == 0:
            raise InputError(f"{first}: no validation windows", hint="tokenize with a validation fraction > 0")
    else:
        train, val = _fasta_windows(cfg, "train"), _fasta_windows(cfg, "val")
    return train, val


def global_batch(step: int, order: list[int], seed: int, rc: bool) -> tuple[list[int], np.ndarray]:
    """The global batch of `step`: window indices and a strand flag per window.

    The strand depends only on (seed, step, slot), never on the rank or world size.
    """
    if rc:
        flips = np.random.default_rng([seed, 0x5C, step]).integers(0, 2, size=len(order)).astype(bool)
    else:
        flips = np.zeros(len(order), bool)
    return list(order), flips


def make_batch(
    data: WindowData, idx: list[int], flips: np.ndarray, length: int, device: torch.device,
    softmask_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows -> (inputs (rows, length-1) int64, targets (rows, length-1) int64, weights fp32).

    Each window of seq_len is cut into seq_len / length rows (sequence-length warmup keeps
    tokens per step constant). Targets that are not A/C/G/T (N, padding) get weight 0;
    soft-masked targets get `softmask_weight`.
    """
    tok, sm = data.get(idx)  # (b, L) uint8, (b, L) bool
    tok = torch.from_numpy(np.ascontiguousarray(tok)).long()  # (b, L)
    sm = torch.from_numpy(np.ascontiguousarray(sm)) if sm is not None else torch.zeros_like(tok, dtype=torch.bool)
    if flips.any():
        from mamba_dna.tokenizer import reverse_complement

        f = torch.from_numpy(flips)
        tok[f] = reverse_complement(tok[f])
        sm[f] = sm[f].flip(-1)
    b, L = tok.shape
    tok = tok.reshape(b * (L // length), length)  # (rows, length)
    sm = sm.reshape(b * (L // length), length)
    inp, tgt, tsm = tok[:, :-1], tok[:, 1:], sm[:, 1:]  # (rows, length-1)
    w = ((tgt >= BASE_LO) & (tgt <= BASE_HI)).float()  # (rows, length-1)
    if softmask_weight != 1.0:
        w = torch.where(tsm, w * softmask_weight, w)
    return inp.to(device), tgt.to(device), w.to(device)


# --------------------------------------------------------------------------- model, optimizer


def build_model(cfg: PretrainConfig):
    from mamba_dna.model import MambaConfig, MambaLM

    mdict = dict(cfg.model)
    mdict["gradient_checkpointing"] = bool(cfg.grad_checkpointing)
    return MambaLM(MambaConfig.from_dict(mdict, where="pretrain model config"))


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


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
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


def _set_rng_state(st: dict) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def _safe(obj):
    """numpy -> torch / Python so `torch.load(weights_only=True)` can read it back."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_safe(v) for v in obj)
    return obj


def _unsafe(obj):
    """Inverse of `_safe`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: _unsafe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unsafe(v) for v in obj)
    return obj


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Step checkpoints, oldest first (best.pt excluded)."""
    d = run_dir / CKPT_DIR
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, not a checkpoint
        raise InputError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise InputError(f"{path}: not a mamba-dna pretrain checkpoint (format {CKPT_FORMAT})")
    return ck


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, data: WindowData, idx: list[int], batch: int, device, autocast) -> tuple[float, float]:
    """(sum of -log P in nats, number of scored bases) over windows `idx` on this rank.

    Scorer protocol: row t of log-probs over A, C, G, T predicts base t+1.
    """
    was = model.training
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(idx), batch):
        tok, _ = data.get(idx[i : i + batch])
        ids = torch.from_numpy(np.ascontiguousarray(tok)).long().to(device)  # (b, L)
        with autocast():
            lp, _ = model.log_probs(ids)  # (b, L, 4)
        nll, n = _nll_bases(lp.float(), ids)
        total += nll
        count += n
    model.train(was)
    return total, count


def _nll_bases(lp: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """lp (b, L, 4) row t -> base t+1; targets outside A/C/G/T are skipped."""
    tgt = ids[:, 1:]  # (b, L-1)
    ok = (tgt >= BASE_LO) & (tgt <= BASE_HI)
    t4 = (tgt - BASE_LO).clamp(0, 3)
    nll = -lp[:, :-1].gather(-1, t4.unsqueeze(-1)).squeeze(-1)  # (b, L-1)
    return float(nll[ok].double().sum()), float(ok.sum())


def markov_baseline(cfg: PretrainConfig, train: WindowData, val: WindowData, idx: list[int]) -> dict:
    """Best k-mer Markov model (order chosen on validation) on the same windows as the network."""
    from mamba_dna.baselines import best_markov

    n_train = max(1, min(len(train), cfg.markov_max_bases // max(train.length, 1)))
    sel = np.linspace(0, len(train) - 1, n_train).round().astype(np.int64) if n_train < len(train) else np.arange(len(train))
    # Windows joined with an N between them (an N breaks every context: nothing spans two
    # windows), in ~4 Mb arrays so counting is a few big vectorised passes, not one per window.
    tr, buf, size = [], [], 0
    for i in range(0, len(sel), 256):
        tok, _ = train.get(sel[i : i + 256])  # (b, L) uint8
        sep = np.full((tok.shape[0], 1), N_ID, np.uint8)
        buf.append(np.concatenate([tok, sep], axis=1).reshape(-1))
        size += buf[-1].size
        if size >= 1 << 22:
            tr.append(np.concatenate(buf))
            buf, size = [], 0
    if buf:
        tr.append(np.concatenate(buf))
    va = [val.get([int(i)])[0][0] for i in idx]
    t0 = time.time()
    res = best_markov(tr, va, cfg.markov_orders)
    mm = res[0] if isinstance(res, tuple) else res
    total = count = 0.0
    for i in range(0, len(va), 64):
        ids = torch.from_numpy(np.stack(va[i : i + 64])).long()  # (b, L)
        lp, _ = mm.log_probs(ids)  # (b, L, 4)
        nll, n = _nll_bases(torch.as_tensor(lp).float(), ids)
        total, count = total + nll, count + n
    return {
        "name": getattr(mm, "name", f"markov-{mm.order}"),
        "order": int(getattr(mm, "order", -1)),
        "bits_per_base": total / max(count, 1) / LN2,
        "train_bases": int(len(sel) * train.length),
        "val_bases": int(count),
        "fit_s": round(time.time() - t0, 2),
    }


# --------------------------------------------------------------------------- curves


def plot_curves(metrics_path: Path, png: Path, baseline: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    tr = [r for r in rows if r.get("split") == "train"]
    va = [r for r in rows if r.get("split") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if tr:
        ax.plot([r["tokens"] for r in tr], [r["bits_per_base"] for r in tr], lw=1, alpha=0.7,
                label="train (cross-entropy over the full vocabulary)")
    if va:
        ax.plot([r["tokens"] for r in va], [r["bits_per_base"] for r in va], "o-", lw=1.5,
                label="validation (A/C/G/T renormalised)")
    if baseline:
        ax.axhline(baseline["bits_per_base"], color="k", ls="--", lw=1,
                   label=f"best Markov (order {baseline['order']}), validation")
    ax.axhline(2.0, color="grey", ls=":", lw=1, label="uniform (2 bits)")
    shown = [r["bits_per_base"] for r in va] + ([baseline["bits_per_base"]] if baseline else [])
    if shown:  # the first training steps (~3 bits) would flatten the interesting range
        ax.set_ylim(min(shown) - 0.05, max(2.1, max(shown) + 0.05))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("bits per base")
    ax.set_title("mamba-dna pretrain")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume: drop rows logged after the checkpoint (they will be recomputed)."""
    if not path.exists():
        return
    keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep))


def prepare_run(cfg: PretrainConfig, resume: bool) -> tuple[PretrainConfig, bool]:
    """A new run directory gets config.json; an existing one is resumed with its own config."""
    run = Path(cfg.out)
    cfg_path = run / "config.json"
    existing = cfg_path.exists() and checkpoint_paths(run)
    if resume and not cfg_path.exists():
        raise InputError(f"{run}: --resume given but there is no run here (no config.json)")
    if cfg_path.exists() and (resume or existing):
        saved = PretrainConfig.load(cfg_path)
        saved.out = str(run)
        given, kept = cfg.to_dict(), saved.to_dict()
        differ = [k for k in given if k not in ("out", "inputs") and given[k] != kept[k]
                  and given[k] != getattr(PretrainConfig(), k, None)]
        if differ:
            log.info(f"resuming {run}: its config.json wins; ignoring changed option(s) "
                     f"{', '.join(differ)} (start a new --out to change them)")
        return saved.validate(), bool(existing)
    if run.exists() and any(p for p in run.iterdir() if p.name != "config.json"):
        raise ConfigError(f"{run}: directory exists and is not a pretrain run",
                          hint="choose a new --out or remove the directory")
    return cfg.validate(), False


def pretrain(
    cfg: PretrainConfig,
    resume: bool = False,
    stop_at: int | None = None,
    stop: mdist.StopFlag | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train (or resume) the run `cfg.out`; returns a summary dict.

    Stops early, with a checkpoint, after step `stop_at` or at the first step boundary after
    SIGTERM/SIGINT/SIGUSR1/SIGUSR2 (summary["stopped_by"] says which). `on_step(step, info)`
    is called after every optimizer step (tests, notebooks).
    """
    denv, device = mdist.setup(cfg.device)
    own_stop = stop is None
    stop = stop or mdist.StopFlag()
    try:
        if own_stop:
            stop.install()
        return _pretrain(cfg, resume, stop_at, stop, on_step, denv, device)
    finally:
        if own_stop:
            stop.restore()
        mdist.teardown()


def _pretrain(cfg, resume, stop_at, stop, on_step, denv, device) -> dict:
    main = denv.is_main
    # ---------------------------------------------------------------- setup
    prepared: tuple = (None, None, None)
    if main:
        try:
            prepared = (*prepare_run(cfg, resume), None)
        except MambaDNAError as e:
            prepared = (None, None, e)
    cfg, resuming, err = mdist.broadcast_object(prepared)
    if err is not None:
        raise err
    run = Path(cfg.out)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "config.json", cfg.to_dict())
    world = denv.world_size
    if cfg.batch_size % world:
        raise ConfigError(f"pretrain: --batch-size {cfg.batch_size} (global) is not divisible by "
                          f"{world} processes", hint=f"use a multiple of {world}")
    per_rank = cfg.batch_size // world
    k_max = cfg.seq_len // cfg.stage_lengths()[0]
    if (per_rank * k_max) % cfg.grad_accum:
        raise ConfigError(f"pretrain: {per_rank} windows per rank (x{k_max} rows in warmup) do not split "
                          f"into --grad-accum {cfg.grad_accum} micro-batches")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    torch.manual_seed(cfg.seed + denv.rank)
    random.seed(cfg.seed + denv.rank)
    np.random.seed((cfg.seed + denv.rank) % 2**32)

    train, val = load_data(cfg)
    n_eval = min(cfg.eval_windows, len(val))
    eval_idx = np.linspace(0, len(val) - 1, n_eval).round().astype(int).tolist() if n_eval else []
    my_eval = eval_idx[denv.rank :: world]

    # One global stream of batches; every rank takes its slice (world-size independent state).
    from mamba_dna.shards import ResumableSampler

    sampler = ResumableSampler(len(train), cfg.batch_size, seed=cfg.seed, rank=0, world_size=1,
                               shuffle=True, drop_last=True)
    if len(sampler) == 0:
        raise ConfigError(f"pretrain: global batch of {cfg.batch_size} windows but only {len(train)} "
                          f"training windows of {cfg.seq_len} bp", hint="lower --batch-size or --seq-len")

    model = build_model(cfg).to(device)
    ddp_model = model
    if denv.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_factor(s))

    step, tokens_seen, best_val, bad_in_row, n_skipped = 0, 0, float("inf"), 0, 0
    if resuming:
        ck_path = checkpoint_paths(run)[-1]
        ck = load_checkpoint(ck_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(_unsafe(ck["sampler"]))
        step, tokens_seen = int(ck["step"]), int(ck["tokens"])
        best_val, n_skipped = float(ck["best_val"]), int(ck["skipped_steps"])
        if ck.get("world_size") == world:
            _set_rng_state(ck["rng"][f"rank{denv.rank}"])
        else:  # another world size: data order and strands do not depend on these streams
            torch.manual_seed(cfg.seed + denv.rank + 7919 * step)
            random.seed(cfg.seed + denv.rank + 7919 * step)
            np.random.seed((cfg.seed + denv.rank + 7919 * step) % 2**32)
        if main:
            _trim_metrics(run / "metrics.jsonl", step)
            log.info(f"resumed {run} from {ck_path.name} (step {step}/{cfg.steps}, world size "
                     f"{ck.get('world_size', '?')} -> {world})")

    # Markov baseline on the same validation windows (rank 0 fits it once per run).
    base_path = run / "baseline.json"
    baseline = None
    if main:
        if base_path.exists():
            baseline = json.loads(base_path.read_text())
        elif eval_idx:
            log.info(f"fitting the Markov baseline (orders {cfg.markov_orders[0]}..{cfg.markov_orders[-1]}, "
                     "order chosen on validation)")
            baseline = markov_baseline(cfg, train, val, eval_idx)
            write_json(base_path, baseline)
            log.info(f"baseline: {baseline['name']} {baseline['bits_per_base']:.4f} bits/base on "
                     f"{baseline['val_bases']:,} validation bases")
    baseline = mdist.broadcast_object(baseline)

    n_params = sum(p.numel() for p in model.parameters())
    if main and not resuming:
        log.info(f"pretrain: {n_params:,} parameters, {len(train):,} train / {len(val):,} val windows "
                 f"of {cfg.seq_len} bp, global batch {cfg.batch_size} x {cfg.seq_len} bp, "
                 f"{world} process(es) on {device}, {'bf16 autocast' if use_bf16 else 'fp32'}")

    # ---------------------------------------------------------------- helpers bound to this run
    sampler_it = iter(sampler)

    def next_indices() -> list[int]:
        nonlocal sampler_it
        try:
            return list(next(sampler_it))
        except StopIteration:  # new epoch
            sampler_it = iter(sampler)
            return list(next(sampler_it))

    def ckpt_state(step_: int) -> dict:
        rngs = mdist.gather_objects(_rng_state())
        return {
            "format": CKPT_FORMAT,
            "step": step_,
            "tokens": tokens_seen,
            "best_val": best_val,
            "skipped_steps": n_skipped,
            "world_size": world,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "sampler": _safe(sampler.state_dict()),
            "rng": {f"rank{r}": s for r, s in enumerate(rngs)},
            "log_acc": dict(acc),
            "config": cfg.to_dict(),
        }

    def write_checkpoint(step_: int, best: bool = False) -> Path | None:
        state = ckpt_state(step_)  # collective (RNG gather): every rank calls it
        if not main:
            return None
        if not all_finite(model):
            log.info(f"step {step_}: weights are not finite; checkpoint NOT written")
            return None
        ck_dir = run / CKPT_DIR
        path = ck_dir / f"step_{step_:08d}.pt"
        save_checkpoint(path, state)
        if best:
            save_checkpoint(ck_dir / "best.pt", state)
        for old in checkpoint_paths(run)[: -cfg.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def run_eval(step_: int) -> dict | None:
        nonlocal best_val
        if not eval_idx:
            return None
        t0 = time.time()
        nll, cnt = evaluate(model, val, my_eval, cfg.eval_batch_size, device, autocast)
        red = mdist.all_reduce_sum(torch.tensor([nll, cnt], dtype=torch.float64, device=device))
        loss = float(red[0] / red[1].clamp(min=1))
        row = {"step": step_, "split": "val", "tokens": tokens_seen, "loss": loss,
               "bits_per_base": loss / LN2, "val_bases": int(red[1]),
               "markov_bits_per_base": baseline["bits_per_base"] if baseline else None,
               "markov_order": baseline["order"] if baseline else None,
               "eval_s": round(time.time() - t0, 2)}
        improved = loss < best_val
        best_val = min(best_val, loss)
        if main:
            _append_jsonl(run / "metrics.jsonl", row)
            mk = f" (best Markov order {baseline['order']}: {baseline['bits_per_base']:.4f})" if baseline else ""
            log.info(f"step {step_}: validation {row['bits_per_base']:.4f} bits/base{mk}")
        row["improved"] = improved
        return row

    # ---------------------------------------------------------------- train
    model.train()
    ddp_model.train()
    t_log, tok_log = time.time(), 0
    acc = {"loss": 0.0, "n": 0, "gn": 0.0}  # running sums for the next train log row
    if resuming and "log_acc" in ck:
        acc = {k: type(acc[k])(ck["log_acc"][k]) for k in acc}
    stopped_by = None
    last_ck_step = step
    with log.progress("pretrain", total=cfg.steps, unit="step") if main else _null_progress() as bar:
        if main and step:
            bar.advance(step)
        while step < cfg.steps:
            L = cfg.seq_len_at(step)
            idx = next_indices()  # (batch_size,) global window indices
            idx, flips = global_batch(step, idx, cfg.seed, cfg.rc_augment)
            mine = slice(denv.rank * per_rank, (denv.rank + 1) * per_rank)
            inp, tgt, w = make_batch(train, idx[mine], flips[mine], L, device, cfg.softmask_weight)
            # inp, tgt, w: (rows, L-1); rows = per_rank * seq_len / L
            w_global = mdist.all_reduce_sum(w.sum().double().reshape(1)).item()
            rows = inp.shape[0]
            micro = rows // cfg.grad_accum
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for m in range(cfg.grad_accum):
                sl = slice(m * micro, (m + 1) * micro)
                sync = m == cfg.grad_accum - 1
                ctx = ddp_model.no_sync() if (denv.distributed and not sync) else _nullctx()
                with ctx:
                    with autocast():
                        logits, _ = ddp_model(inp[sl])  # (micro, L-1, vocab)
                    ce = F.cross_entropy(logits.float().flatten(0, 1), tgt[sl].flatten(), reduction="none")
                    part = (ce * w[sl].flatten()).sum()  # nats, weighted
                    # DDP averages gradients over ranks: scale so the result is sum / w_global.
                    (part * (world / max(w_global, 1.0))).backward()
                loss_sum += part.detach().double()
            loss_g = mdist.all_reduce_sum(loss_sum.reshape(1)).item() / max(w_global, 1.0)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            finite = math.isfinite(loss_g) and bool(torch.isfinite(grad_norm))
            finite = not mdist.any_rank(not finite, device)
            if finite and w_global > 0:
                opt.step()
                bad_in_row = 0
            elif not finite:
                bad_in_row += 1
                n_skipped += 1
                if main:
                    log.info(f"step {step}: non-finite loss or gradient; step skipped "
                             f"({bad_in_row} in a row, {n_skipped} in all)")
                if bad_in_row >= cfg.max_bad_steps:
                    raise MambaDNAError(
                        f"pretrain: {bad_in_row} non-finite losses in a row at step {step}; stopping "
                        f"(last good checkpoint in {run / CKPT_DIR})",
                        hint="lower --lr, raise --warmup-steps or use --precision fp32",
                    )
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            step_tokens = cfg.batch_size * cfg.seq_len
            tokens_seen += step_tokens
            tok_log += step_tokens
            if finite:
                acc["loss"] += loss_g
                acc["n"] += 1
                acc["gn"] += float(grad_norm)
            if main:
                bar.advance(1, note=f"{loss_g / LN2:.3f} bits/base, L={L}")
            info = {"step": step, "loss": loss_g, "seq_len": L, "finite": finite, "model": model}
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.time()
                if main and acc["n"]:
                    row = {"step": step, "split": "train", "tokens": tokens_seen,
                           "loss": acc["loss"] / acc["n"], "bits_per_base": acc["loss"] / acc["n"] / LN2,
                           "lr": sched.get_last_lr()[0], "seq_len": L,
                           "grad_norm": acc["gn"] / acc["n"],
                           "tokens_per_s": tok_log / max(now - t_log, 1e-9),
                           "skipped_steps": n_skipped}
                    _append_jsonl(run / "metrics.jsonl", row)
                t_log, tok_log = now, 0
                acc = {"loss": 0.0, "n": 0, "gn": 0.0}
            best = False
            if step % cfg.eval_every == 0 or step == cfg.steps:
                row = run_eval(step)
                best = bool(row and row["improved"])
                if main:
                    plot_curves(run / "metrics.jsonl", run / "curves.png", baseline)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or best:
                write_checkpoint(step, best=best)
                last_ck_step = step
            if on_step is not None:
                on_step(step, info)
            if step < cfg.steps and stop_at is not None and step >= stop_at:
                stop.received = stop.received or f"--stop-at {stop_at}"
            if step < cfg.steps and stop.should_stop(device):
                stopped_by = stop.received or "a signal on another rank"
                if last_ck_step != step:
                    write_checkpoint(step)
                break

    # ---------------------------------------------------------------- save
    mdist.barrier()
    summary = {"run_dir": str(run), "step": step, "steps": cfg.steps, "tokens": tokens_seen,
               "skipped_steps": n_skipped, "world_size": world,
               "best_val_bits_per_base": best_val / LN2 if math.isfinite(best_val) else None,
               "markov": baseline, "stopped_by": stopped_by}
    if stopped_by is not None:
        if main:
            msg = (f"stopped by {stopped_by} after step {step}/{cfg.steps}; checkpoint saved in "
                   f"{run / CKPT_DIR}. Resume with: mamba-dna pretrain --resume --out {run}")
            log.info(msg)
            if stopped_by == "SIGUSR1":
                note = mdist.slurm_requeue()
                if note:
                    log.info(note)
        return summary
    if main:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        vals = [r for r in rows if r.get("split") == "val"]
        trs = [r for r in rows if r.get("split") == "train"]
        summary["final_val_bits_per_base"] = vals[-1]["bits_per_base"] if vals else None
        tps = [r["tokens_per_s"] for r in trs[1:]] or [r["tokens_per_s"] for r in trs]
        summary["train_tokens_per_s"] = float(np.median(tps)) if tps else None
        summary["parameters"] = n_params
        with atomic_dir(run / "model") as tmp:
            model.save_pretrained(tmp)
        write_json(run / "summary.json", summary)
        log.info(f"done: model saved to {run / 'model'}")
    mdist.barrier()
    return summary


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _NullBar:
    def advance(self, n=1, note=""):
        pass


def _null_progress():
    class _Ctx:
        def __enter__(self):
            return _NullBar()

        def __exit__(self, *a):
            return False

    return _Ctx()


# --------------------------------------------------------------------------- CLI glue


def config_from_cli(
    inputs: list[str], out: str, config: str | None, model_config: str | None,
    model_overrides: dict, overrides: dict,
) -> PretrainConfig:
    """Defaults < --config JSON < --model-config < flags that were given (not None)."""
    base = PretrainConfig.load(config).to_dict() if config else PretrainConfig().to_dict()
    if model_config:
        p = Path(model_config)
        p = p / "config.json" if p.is_dir() else p
        from mamba_dna.model import MambaConfig

        base["model"] = {k: v for k, v in MambaConfig.from_json_file(p).to_dict().items()
                         if k != "gradient_checkpointing"}
    base["model"].update({k: v for k, v in model_overrides.items() if v is not None})
    base.update({k: v for k, v in overrides.items() if v is not None})
    if inputs:
        base["inputs"] = [str(x) for x in inputs]
    base["out"] = str(out)
    return PretrainConfig.from_dict(base, where=config or "options")


def run_cli(cfg: PretrainConfig, resume: bool, stop_at: int | None) -> dict:
    """What `mamba-dna pretrain` runs; prints the run directory on stdout (rank 0)."""
    summary = pretrain(cfg, resume=resume, stop_at=stop_at)
    if mdist.detect().is_main:
        print(summary["run_dir"], flush=True)
    return summary
