"""Training and validation windows (FASTA or a `tokenize` shard directory) and the batches
cut from them: strands drawn per (seed, step), targets and loss weights per base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.tokenizer import BASES

from .config import PretrainConfig

BASE_LO, BASE_HI = min(BASES), max(BASES)  # A..T are contiguous ids (4..7)


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
    if not first.is_dir():
        return _fasta_windows(cfg, "train"), _fasta_windows(cfg, "val")
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
    return train, val


def eval_indices(n_val: int, n_windows: int) -> list[int]:
    """The validation windows every evaluation scores: `n_windows` spread evenly over the split."""
    n = min(n_windows, n_val)
    return np.linspace(0, n_val - 1, n).round().astype(int).tolist() if n else []


def strand_flips(step: int, n: int, seed: int, rc: bool) -> np.ndarray:
    """(n,) bool: which windows of step `step`'s global batch are read on the reverse strand.

    Depends only on (seed, step, slot), never on the rank or world size.
    """
    if not rc:
        return np.zeros(n, bool)
    return np.random.default_rng([seed, 0x5C, step]).integers(0, 2, size=n).astype(bool)


def mask_generator(seed: int, stream: int, n: int, slot: int) -> torch.Generator:
    """The CPU generator that masks window `slot` of step `n` (stream MASK_TRAIN) or validation
    window `n` (stream MASK_VAL): a function of (seed, stream, n, slot) only, like the strands,
    so masks survive resume and a change of world size, and every evaluation masks the same
    validation positions."""
    st = np.random.SeedSequence([seed, 0x4D4C4D, stream, n, slot]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(st))


MASK_TRAIN, MASK_VAL = 0, 1


def mask_windows(tok: torch.Tensor, sm: torch.Tensor, gens: list[torch.Generator], cfg: PretrainConfig,
                 all_mask: bool = False):
    """Caduceus masking of each window (row) with its own generator -> mamba_dna.mlm.MaskedBatch
    of the stacked rows. tok (b, L) int64, sm (b, L) bool.

    all_mask (validation): every chosen position becomes MASK. The 10% kept / 10% random of
    training would show the model the answer at ~1 in 8 targets, which the two-sided k-mer
    model (it never reads the scored token) cannot use, and which a variant score never
    offers; the same positions are chosen either way (the draws do not depend on the split)."""
    from mamba_dna.mlm import MaskedBatch, mask_tokens

    fracs = (1.0, 0.0) if all_mask else (cfg.mask_token_frac, cfg.random_token_frac)
    parts = [mask_tokens(tok[i : i + 1], g, sm[i : i + 1], mask_prob=cfg.mask_prob,
                         mask_token_frac=fracs[0], random_token_frac=fracs[1],
                         softmask_weight=cfg.softmask_weight) for i, g in enumerate(gens)]
    return MaskedBatch(torch.cat([p.input_ids for p in parts]), torch.cat([p.targets for p in parts]),
                       torch.cat([p.weights for p in parts]))  # each (b, L)


def _windows(data: WindowData, idx, flips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows `idx` as (tokens (b, L) int64, softmask (b, L) bool), flipped ones reverse-complemented."""
    tok, sm = data.get(idx)  # (b, L) uint8, (b, L) bool
    tok = torch.from_numpy(np.ascontiguousarray(tok)).long()  # (b, L)
    sm = torch.from_numpy(np.ascontiguousarray(sm)) if sm is not None else torch.zeros_like(tok, dtype=torch.bool)
    if flips.any():
        from mamba_dna.tokenizer import reverse_complement

        f = torch.from_numpy(flips)
        tok[f] = reverse_complement(tok[f])
        sm[f] = sm[f].flip(-1)
    return tok, sm


def make_mlm_batch(
    data: WindowData, idx: list[int], slots: list[int], flips: np.ndarray, length: int, step: int,
    device: torch.device, cfg: PretrainConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked-LM batch: (inputs, targets, weights), each (rows, length).

    Each window (after its strand flip) is masked whole with the generator of (seed, step, its
    slot in the global batch), then cut into seq_len / length rows like make_batch. Targets are
    the original base at the chosen positions and mlm.IGNORE elsewhere; weights 1 there
    (softmask_weight for lower-case bases), 0 elsewhere, so a weighted cross-entropy is
    mamba_dna.mlm.mlm_loss's numerator.
    """
    tok, sm = _windows(data, idx, flips)  # (b, L)
    mb = mask_windows(tok, sm, [mask_generator(cfg.seed, MASK_TRAIN, step, s) for s in slots], cfg)
    b, L = tok.shape
    rows = b * (L // length)
    return tuple(x.reshape(rows, length).to(device) for x in (mb.input_ids, mb.targets, mb.weights))


def make_batch(
    data: WindowData, idx: list[int], flips: np.ndarray, length: int, device: torch.device,
    softmask_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows -> (inputs (rows, length-1) int64, targets (rows, length-1) int64, weights fp32).

    Each window of seq_len is cut into seq_len / length rows (sequence-length warmup keeps
    tokens per step constant). Targets that are not A/C/G/T (N, padding) get weight 0;
    soft-masked targets get `softmask_weight`.
    """
    tok, sm = _windows(data, idx, flips)  # (b, L) int64, (b, L) bool
    b, L = tok.shape
    tok = tok.reshape(b * (L // length), length)  # (rows, length)
    sm = sm.reshape(b * (L // length), length)
    inp, tgt, tsm = tok[:, :-1], tok[:, 1:], sm[:, 1:]  # (rows, length-1)
    w = ((tgt >= BASE_LO) & (tgt <= BASE_HI)).float()  # (rows, length-1)
    if softmask_weight != 1.0:
        w = torch.where(tsm, w * softmask_weight, w)
    return inp.to(device), tgt.to(device), w.to(device)
