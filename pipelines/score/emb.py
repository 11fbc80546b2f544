"""EMB on one strand: REF pools from running sums of the reference pass, ALT pools from the
re-runs, and the two distances between them (see the package docstring for the definition)."""

from __future__ import annotations

import math

import numpy as np
import torch


class EmbPools:
    """EMB on one strand: REF pools from the reference pass, ALT pools from the re-runs.

    Variant i's REF pool is mean(h[lo_i:hi_i]) = (H(hi_i) - H(lo_i)) / (hi_i - lo_i) with
    H(t) = sum of the pass's hidden states before t (float64, from the pass origin). H is
    read at each window end as the pass goes by, so memory holds only the open windows,
    not (n, d_model) arrays. A distance is written once both pools of a variant exist.
    """

    SUB = 8192  # rows per float64 prefix-sum block (bounds memory for long chunks)

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.lo, self.hi = lo, hi  # (n,) window [lo, hi) on this strand
        self.by_lo = np.argsort(lo, kind="stable")
        self.by_hi = np.argsort(hi, kind="stable")
        self.p_lo = self.p_hi = 0
        self.running: torch.Tensor | None = None  # (d,) float64: H(s) at the current pass position
        self.open: dict[int, torch.Tensor] = {}  # i -> H(lo_i)
        self.ref: dict[int, torch.Tensor] = {}  # i -> REF pool (d,)
        self.alt: dict[int, torch.Tensor] = {}  # i -> ALT pool (d,)
        self.cos = np.full(lo.size, np.nan)
        self.l2 = np.full(lo.size, np.nan)

    def pass_rows(self, s: int, h: torch.Tensor) -> None:
        """h (T, d) fp32: hidden states of pass positions s .. s+T-1."""
        n = self.lo.size
        if self.running is None:
            self.running = torch.zeros(h.shape[1], dtype=torch.float64, device=h.device)
        for a in range(0, h.shape[0], self.SUB):
            hb = h[a : a + self.SUB].double()  # (t, d)
            s0, s1 = s + a, s + a + hb.shape[0]
            cs = torch.cat([self.running[None], self.running + torch.cumsum(hb, 0)])  # (t + 1, d): H(s0..s1)
            while self.p_lo < n and self.lo[self.by_lo[self.p_lo]] <= s1:
                i = int(self.by_lo[self.p_lo])
                self.open[i] = cs[self.lo[i] - s0].clone()
                self.p_lo += 1
            while self.p_hi < n and self.hi[self.by_hi[self.p_hi]] <= s1:
                i = int(self.by_hi[self.p_hi])
                self.ref[i] = (cs[self.hi[i] - s0] - self.open.pop(i)) / float(self.hi[i] - self.lo[i])
                self.p_hi += 1
                self._finish(i)
            self.running = cs[-1].clone()

    def alt_pool(self, i: int, pool: torch.Tensor) -> None:
        self.alt[i] = pool
        self._finish(i)

    def _finish(self, i: int) -> None:
        if i in self.ref and i in self.alt:
            r, a = self.ref.pop(i), self.alt.pop(i)  # (d,) float64 each
            self.cos[i], self.l2[i] = distances(r, a)


def distances(r: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
    """(1 - cos(r, a), ||a - r||_2) of two pooled vectors, float64."""
    r, a = r.double(), a.double()
    den = float(torch.linalg.vector_norm(r) * torch.linalg.vector_norm(a))
    cos = float(r @ a) / den if den > 0 else math.nan
    return 1.0 - cos, float(torch.linalg.vector_norm(a - r))
