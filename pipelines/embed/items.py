"""What `embed` embeds: windows over every record, BED regions, or whole records."""

from __future__ import annotations

import os

import numpy as np

from mamba_dna.genome import read_bed
from mamba_dna.io import hdf5
from mamba_dna.tokenizer import reverse_complement


def bed_items(path: str | os.PathLike, genome) -> hdf5.Items:
    """BED regions (`genome.read_bed`); id = the name column, else chrom:start-end(strand)."""
    regions = read_bed(path, genome)
    ids = [r.name or f"{r.chrom}:{r.start}-{r.end}({r.strand})" for r in regions]
    return hdf5.Items(np.array([r.chrom for r in regions], object),
                      np.array([r.start for r in regions], np.int64),
                      np.array([r.end for r in regions], np.int64),
                      np.array([r.strand for r in regions], object), np.array(ids, object))


def window_items(genome, window: int, stride: int) -> hdf5.Items:
    """Windows [s, s+window) at s = 0, stride, ... over every record; the last one of a record
    ends at the record's end (it may be shorter). window 0: one item per whole record."""
    chrom, start, end = [], [], []
    for name in genome.names:
        n = genome.lengths[name]
        if window <= 0:
            chrom.append(name), start.append(0), end.append(n)
            continue
        s = 0
        while True:
            e = min(s + window, n)
            chrom.append(name), start.append(s), end.append(e)
            if e >= n:
                break
            s += stride
    m = len(chrom)
    ids = [f"{c}:{s}-{e}(+)" for c, s, e in zip(chrom, start, end, strict=True)]
    return hdf5.Items(np.array(chrom, object), np.array(start, np.int64), np.array(end, np.int64),
                      np.array(["+"] * m, object), np.array(ids, object))


def item_tokens(genome, chrom: str, start: int, end: int, strand: str) -> np.ndarray:
    """(L,) uint8 ids of one item; '-' = the reverse complement."""
    ids, _ = genome.tokens(chrom, start, end)  # (L,) uint8
    return reverse_complement(ids) if strand == "-" else ids
