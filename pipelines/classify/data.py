"""Labels table -> records -> segments (each in one of train / val / test) -> balanced
windows, and the token reader every stage shares."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_dna import log
from mamba_dna.errors import ConfigError, InputError

from .config import SPLITS


@dataclass
class Source:
    """One FASTA record with its label."""

    file: str
    record: str
    length: int
    label: str
    unit: str  # what a file split holds out (the file path)


def read_labels(path: str | os.PathLike, *, label_column: str = "species",
                group: str | None = None, include: str | None = None,
                label_from_record: str | None = None) -> list[Source]:
    """Rows of a labels TSV -> one Source per FASTA record (file paths relative to the TSV or
    its parent folder)."""
    from mamba_dna.genome import Genome

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: labels table not found")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise InputError(f"{path}: empty labels table; expected a header line with 'file' and "
                         "label columns")
    cols = list(rows[0])
    for need in ("file", label_column) if not label_from_record else ("file",):
        if need not in cols:
            raise InputError(f"{path}:1: no column {need!r}; columns are {', '.join(cols)}",
                             hint="choose one with --label-column")
    if group is not None and "group" not in cols:
        raise InputError(f"{path}:1: --group given but the table has no 'group' column")
    rx = re.compile(include) if include else None
    pat = re.compile(label_from_record) if label_from_record else None
    if pat is not None and pat.groups != 1:
        raise ConfigError(f"--label-from-record {label_from_record!r}: expected a regex with "
                          "exactly one (group), e.g. '_(DENV[1-4])$'")
    out: list[Source] = []
    for lineno, row in enumerate(rows, 2):
        if group is not None and row["group"] != group:
            continue
        if rx is not None and not (rx.search(row["file"]) or rx.search(row.get(label_column, ""))):
            continue
        # relative paths: beside the table, else one level up (shared/data/species/labels.tsv
        # names files as species/...)
        cands = [(path.parent / row["file"]).resolve(), (path.parent.parent / row["file"]).resolve()]
        fa = next((c for c in cands if c.exists()), cands[0])
        if not fa.exists():
            raise InputError(f"{path}:{lineno}: FASTA {row['file']!r} not found (looked at {fa})")
        g = Genome(fa)
        for name in g.names:
            if pat is not None:
                m = pat.search(name)
                if not m:
                    log.info(f"{row['file']}: record {name} has no label matching "
                             f"{label_from_record!r}; skipped")
                    continue
                label = m.group(1)
            else:
                label = row[label_column]
            out.append(Source(str(fa), name, g.lengths[name], label, str(fa)))
    if not out:
        raise InputError(f"{path}: no rows left after --group {group!r} / --include {include!r}")
    if len({s.label for s in out}) < 2:
        raise InputError(f"{path}: only one class ({out[0].label!r}) after filtering; "
                         "a classifier needs at least two")
    return out


@dataclass
class Segment:
    file: str
    record: str
    start: int
    end: int
    label: str
    split: str


def make_segments(sources: Sequence[Source], *, split_by: str, window: int, block: int,
                  fractions: tuple[float, float] = (0.2, 0.2), seed: int = 0) -> list[Segment]:
    """Assign disjoint pieces of every record to train / val / test (see module docstring).

    fractions = (val, test) share of records, blocks or files per class.
    """
    if split_by not in ("record", "block", "file"):
        raise ConfigError(f"--split-by {split_by!r}: expected record, block or file")
    rng = np.random.default_rng(seed)
    block = max(block, window)
    segs: list[Segment] = []

    def deal(n: int, rng=rng) -> list[str]:
        """n units -> split names, at least one val and one test unit when n >= 3."""
        n_val = max(1, round(n * fractions[0])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[1])) if n >= 2 else 0
        names = ["val"] * n_val + ["test"] * n_test
        names += ["train"] * (n - len(names))
        return list(rng.permutation(names))

    def blocks_of(s: Source, splits_allowed: Sequence[str] | None) -> None:
        nb = s.length // block
        if nb == 0:
            return
        edges = np.linspace(0, s.length, nb + 1).astype(int)
        # The pattern depends only on (seed, number of blocks), not on the record: homologous
        # genomes of equal length (e.g. three ebolavirus species) hold out the same regions,
        # so a test window is never classified by the same region seen in another class.
        prng = np.random.default_rng([seed, nb])
        if splits_allowed is None:
            names = deal(nb, prng)
        else:
            n_val = max(1, round(nb * fractions[0])) if nb >= 2 else 0
            names = list(prng.permutation(["val"] * n_val + ["train"] * (nb - n_val)))
        for b in range(nb):
            segs.append(Segment(s.file, s.record, int(edges[b]), int(edges[b + 1]), s.label, names[b]))

    labels = sorted({s.label for s in sources})
    for lab in labels:
        mine = [s for s in sources if s.label == lab]
        if split_by == "record":
            for s, sp in zip(mine, deal(len(mine)), strict=True):
                segs.append(Segment(s.file, s.record, 0, s.length, lab, sp))
        elif split_by == "block":
            for s in mine:
                blocks_of(s, None)
        else:  # file: whole files to test, the rest cut into train/val blocks
            units = sorted({s.unit for s in mine})
            if len(units) < 2:
                raise InputError(f"class {lab!r} has a single file ({Path(units[0]).name}); "
                                 "--split-by file needs >= 2 files per class",
                                 hint="use --split-by block")
            n_test = max(1, round(len(units) * fractions[1]))
            test_units = set(rng.permutation(units)[:n_test].tolist())
            for s in mine:
                if s.unit in test_units:
                    segs.append(Segment(s.file, s.record, 0, s.length, lab, "test"))
                else:
                    blocks_of(s, ("train", "val"))
    return segs


@dataclass
class Windows:
    """Sampled windows: coordinates, labels and the segment each came from."""

    file: list[str]
    record: list[str]
    start: np.ndarray  # (n,) int64
    label: np.ndarray  # (n,) object
    segment: np.ndarray  # (n,) int64 index into the segment list
    window: int

    def __len__(self) -> int:
        return len(self.file)


def sample_windows(segs: Sequence[Segment], split: str, window: int, per_class: int,
                   seed: int = 0) -> Windows | None:
    """`per_class` windows of one split per class, uniform over the usable positions of the
    split's segments. None when some class has no segment that fits the window."""
    rng = np.random.default_rng([seed, window, SPLITS.index(split)])
    idx = [i for i, s in enumerate(segs) if s.split == split and s.end - s.start >= window]
    labels = sorted({s.label for s in segs})
    file, record, start, lab, seg = [], [], [], [], []
    for la in labels:
        mine = [i for i in idx if segs[i].label == la]
        if not mine:
            return None
        room = np.array([segs[i].end - segs[i].start - window + 1 for i in mine], dtype=np.float64)
        pick = rng.choice(len(mine), size=per_class, p=room / room.sum())
        for j in pick:
            s = segs[mine[j]]
            st = s.start + int(rng.integers(0, s.end - s.start - window + 1))
            file.append(s.file), record.append(s.record), start.append(st)
            lab.append(la), seg.append(mine[j])
    return Windows(file, record, np.array(start, np.int64), np.array(lab, object),
                   np.array(seg, np.int64), window)


class GenomeCache:
    """Genomes opened once per file; tokens of any record slice."""

    def __init__(self):
        self._g: dict[str, object] = {}

    def tokens(self, file: str, record: str, start: int, end: int) -> np.ndarray:
        from mamba_dna.genome import Genome

        if file not in self._g:
            self._g[file] = Genome(file, invalid="N")
        return self._g[file].tokens(record, start, end)[0]  # (L,) uint8


def draw_windows(segs, window, per_class, bp_per_class, seed) -> dict | None:
    """Balanced windows of every split ({split: Windows}); None when some class does not fit."""
    n_tr = max(4, min(per_class, bp_per_class // window))
    n_ev = max(2, n_tr // 2)
    w = {sp: sample_windows(segs, sp, window, n_tr if sp == "train" else n_ev, seed)
         for sp in SPLITS}
    return None if any(v is None for v in w.values()) else w


def window_tokens(cache: GenomeCache, w: Windows) -> list[np.ndarray]:
    """Each window's tokens, (window,) uint8."""
    return [cache.tokens(f, r, int(s), int(s) + w.window)
            for f, r, s in zip(w.file, w.record, w.start, strict=True)]

