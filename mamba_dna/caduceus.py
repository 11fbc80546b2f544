"""Bidirectional and reverse-complement-equivariant Mamba: BiMamba, Caduceus-PS / -Ph, CaduceusLM.

Architecture (Schiff et al. 2024, "Caduceus: Bi-Directional Equivariant Long-Range DNA
Sequence Modeling"), reproducing what the published checkpoints compute with
`fused_add_norm: true`:

* BiMamba: a forward Mamba over the sequence plus a second Mamba over the flipped sequence,
  its output flipped back, combined by `add` or `ew_multiply`; with `bidirectional_weight_tie`
  the two share in_proj and out_proj (conv, x_proj, dt_proj, A, D stay per direction).
* Caduceus-PS (`rcps`): the hidden stream has 2 x d_model channels, [forward half | RC half].
  The embedding writes E(ids) into the first half and rc(E(rc(ids))) into the second
  (rc = flip positions and channels); every block runs ONE set of weights on the first half
  and on rc(second half); the LM head adds W h_fwd and the complement-permuted W rc(h_rc).
  The fused add+norm of the real code normalises the SECOND half of (hidden + residual) as the
  forward strand and rc(FIRST half) as the RC strand, i.e. it swaps the two halves (each
  reverse-complemented) in every block; the residual it returns is swapped the same way. The
  final norm does not swap. The fixture numbers (tests/test_caduceus.py) pin this down.
* Caduceus-Ph: the same bidirectional backbone without sharing (d_model channels); a caller
  that wants strand-symmetric output asks for `rc_average=True` (post-hoc conjoining: the mean
  of the forward pass and the flipped pass over the reverse complement).

How it runs (one representation for both variants, "stacked"): the PS halves are stacked on
the batch, (2 * batch, L, d_model) = [forward half ; rc(RC half)], so one set of weights runs
them as one batch; the two directions of a BiMamba run in ONE selective-scan call, stacked
along channels (batch, 2 * d_inner, L) with two B/C groups, in "scan time" (the reverse
direction's positions flipped). On CPU a long sequence runs in tiles of scan time with both
directions' conv and SSM states carried (the forward one left to right, the reverse one right
to left), so tiling never lets the future into the forward direction nor the past into the
reverse one. Nothing of size (L, d_inner, d_state) exists on the CPU or Triton path.
With tied weights (`bidirectional_weight_tie`, as every published checkpoint has) the reverse
direction's in_proj over the flipped input IS the forward one's, flipped: it is computed once
per position (the tiles are a palindrome, so step j and step k-1-j share two tiles; their
projections are kept between the two steps within MAMBA_DNA_BIDIR_CACHE_MB, the pairs nearest
the middle first), and with `add` the two directions share one out_proj product,
W (y_f + y_r). That is a third of a BiMamba's matmul FLOPs saved.

This module does no I/O besides `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mamba_dna import __version__
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.kernels import causal_conv1d_fn, selective_scan_fn
from mamba_dna.model import (
    CONFIG_NAME,
    DNA_TOKENIZER,
    WEIGHTS_NAME,
    MambaConfig,
    MambaMixer,
    RMSNorm,
    _cpu_tile_tokens,
    write_model_dir,
)
from mamba_dna.tokenizer import BASES, COMPLEMENT, VOCAB, VOCAB_SIZE

ARCHITECTURE = "CaduceusLM"
STRATEGIES = ("add", "ew_multiply")
# in_proj (and y) of tile pairs kept between a pair's two steps on CPU (MiB; see BiMamba.forward)
BIDIR_CACHE_MB = 1024


# --------------------------------------------------------------------------- config


@dataclass
class ModelConfig(MambaConfig):
    """One config for causal Mamba, BiMamba, Caduceus-PS and Caduceus-Ph (config.json).

    bidirectional=False, rcps=False is the causal Mamba (MambaLM); bidirectional=True is
    BiMamba (Caduceus-Ph when rcps=False, Caduceus-PS when rcps=True). `complement_map[i]`
    is the id of token i's complement in the model's own vocabulary (vocab_size entries; None
    = our DNA vocabulary's, A<->T, C<->G). `fused_add_norm` selects the real code's fused path
    (the one the published checkpoints ran; for PS it swaps the halves in every block).
    `external_ids` (tokenizer "external"): for each of our 9 token ids the model's id, -1
    where the model has none.
    """

    READS_ARCHITECTURES: ClassVar[tuple[str, ...]] = ("MambaLM", ARCHITECTURE)

    bidirectional: bool = False
    bidirectional_strategy: str = "add"
    bidirectional_weight_tie: bool = True
    rcps: bool = False
    complement_map: list[int] | None = None
    fused_add_norm: bool = True
    external_ids: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bidirectional", "bidirectional_weight_tie", "rcps", "fused_add_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r}: expected true or false")
        if self.bidirectional_strategy not in STRATEGIES:
            raise ConfigError(f"ModelConfig.bidirectional_strategy={self.bidirectional_strategy!r}: "
                              f"expected one of {', '.join(STRATEGIES)}")
        if self.rcps and not self.bidirectional:
            raise ConfigError("ModelConfig: rcps=true needs bidirectional=true here "
                              "(a causal RC-equivariant model is not supported)")
        if self.complement_map is not None:
            cm = self.complement_map
            if (not isinstance(cm, list) or len(cm) != self.vocab_size
                    or any(not isinstance(v, int) or not 0 <= v < self.vocab_size for v in cm)):
                raise ConfigError(f"ModelConfig.complement_map: expected {self.vocab_size} token ids "
                                  f"in [0, {self.vocab_size})")
        elif self.rcps and self.tokenizer != DNA_TOKENIZER:
            raise ConfigError("ModelConfig: rcps=true with an external vocabulary needs complement_map")
        if self.external_ids is not None:
            e = self.external_ids
            if (not isinstance(e, list) or len(e) != VOCAB_SIZE
                    or any(not isinstance(v, int) or not -1 <= v < self.vocab_size for v in e)):
                raise ConfigError(f"ModelConfig.external_ids: expected {VOCAB_SIZE} ids in "
                                  f"[-1, {self.vocab_size})")
        elif self.tokenizer != DNA_TOKENIZER and self.bidirectional:
            raise ConfigError("ModelConfig: an external vocabulary needs external_ids "
                              "(the model's id for each mamba-dna token)")

    @property
    def architecture(self) -> str:
        return ARCHITECTURE if self.bidirectional else "MambaLM"

    @property
    def complement(self) -> list[int]:
        """complement_map, or our DNA vocabulary's (identity past the 9 tokens)."""
        if self.complement_map is not None:
            return list(self.complement_map)
        return [int(COMPLEMENT[i]) if i < VOCAB_SIZE else i for i in range(self.vocab_size)]

    def to_json(self) -> str:
        d = {"architecture": self.architecture, **self.to_dict(), "mamba_dna_version": __version__}
        return json.dumps(d, indent=2) + "\n"


# --------------------------------------------------------------------------- blocks


def _rc(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of a hidden tensor (..., L, C): flip positions and channels."""
    return x.flip(-2, -1)


class BiMamba(nn.Module):
    """Forward Mamba + Mamba over the flipped sequence: (batch, L, d_model) -> same.

    `fwd` and `rev` are MambaMixers (rev None when not bidirectional); with `weight_tie`
    rev.in_proj / rev.out_proj ARE fwd's (the same Parameters).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        self.fwd = MambaMixer(cfg, layer_idx)
        self.rev = MambaMixer(cfg, layer_idx) if cfg.bidirectional else None
        self.strategy = cfg.bidirectional_strategy
        if self.rev is not None and cfg.bidirectional_weight_tie:
            self.tie()

    def tie(self) -> None:
        self.rev.in_proj.weight = self.fwd.in_proj.weight
        self.rev.in_proj.bias = self.fwd.in_proj.bias
        self.rev.out_proj.weight = self.fwd.out_proj.weight
        self.rev.out_proj.bias = self.fwd.out_proj.bias

    def _dirs(self) -> list[MambaMixer]:
        return [self.fwd] if self.rev is None else [self.fwd, self.rev]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (batch, L, d_model) -> (batch, L, d_model)."""
        if not self.cfg.selective:
            raise ConfigError("BiMamba: the LTI ablation (selective=false) is causal-only")
        b, L, _ = u.shape
        w = self._stacked(b)
        # Steps in scan time. Step j runs the forward direction over tile j = [t[j], t[j+1])
        # and the reverse one over tile k-1-j (the tiles are a palindrome: t[k-i] = L - t[i]),
        # so each step pairs tiles j and k-1-j. Tied weights: in_proj(u) of a tile serves both
        # directions (computed once, kept from step j to step k-1-j for the pairs nearest the
        # middle, within a memory budget); tied out_proj with `add`: out = W (y_f + y_r), one
        # product per tile once both directions' y of it exist.
        t = _palindromic_tiles(L, _cpu_tile_tokens(b, w.nd * w.di, L, u.device) or max(L, 1))
        # kept per pair: in_proj of both tiles (2 x b x 2 di per token) and y (b x 2 di per token)
        keep = _pairs_to_keep(t, b * w.di * (4 + (2 if w.share_out else 0)), w.tied)
        steps = _Steps(u, t, w, keep)
        state = (None, None)  # conv and SSM states of both directions, carried across steps
        for j in range(len(t) - 1):
            x, z = steps.inputs(j)  # (batch, nd di, T) each, directions stacked on channels
            y, state = _grouped_ssm(x, z, w, state)  # (batch, nd di, T)
            steps.outputs(j, y)
        return steps.result()

    def _stacked(self, b: int) -> _Stacked:
        """Both directions' weights arranged for one grouped scan over `b` rows."""
        dirs = self._dirs()
        nd = len(dirs)
        m0 = self.fwd
        n = b * nd  # bmm batch: (row, direction) pairs

        def bw(params: list[torch.Tensor]) -> torch.Tensor:
            """Per-direction weights (rows, cols) -> (n, rows, cols) for one bmm; no copy when tied."""
            if len(params) == 1 or params[1] is params[0]:
                return params[0].expand(n, -1, -1)
            return torch.stack(params).expand(b, -1, -1, -1).reshape(n, *params[0].shape)

        def cat(ts):  # per-direction (di, ...) -> (nd * di, ...)
            return ts[0] if len(ts) == 1 else torch.cat(ts)

        def same(attr: str) -> bool:
            return nd == 2 and all(getattr(getattr(dirs[1], attr), a) is getattr(getattr(m0, attr), a)
                                   for a in ("weight", "bias"))

        tied = same("in_proj")
        return _Stacked(
            b=b, nd=nd, di=m0.d_inner, N=m0.d_state, R=m0.dt_rank, K=self.cfg.d_conv,
            tied=tied, share_out=same("out_proj") and self.strategy == "add",
            add=nd == 1 or self.strategy == "add",
            # in_proj: tied -> one (2 di, d) matrix for both directions; else (nd, 2 di, d)
            w_in=m0.in_proj.weight if (tied or nd == 1) else torch.stack([m.in_proj.weight for m in dirs]),
            b_in=[m.in_proj.bias for m in dirs],
            w_xp=bw([m.x_proj.weight for m in dirs]),  # (n, R + 2N, di)
            w_dt=bw([m.dt_proj.weight for m in dirs]),  # (n, di, R)
            w_out=[m.out_proj.weight.t() for m in dirs],  # per direction (di, d)
            b_out=[m.out_proj.bias for m in dirs],
            A=cat([-torch.exp(m.A_log.float()) for m in dirs]),  # (nd di, N)
            D=cat([m.D.float() for m in dirs]),  # (nd di,)
            dt_bias=cat([m.dt_proj.bias.float() for m in dirs]),  # (nd di,)
            conv_w=cat([m.conv1d.weight[:, 0, :] for m in dirs]),  # (nd di, K)
            conv_b=cat([m.conv1d.bias for m in dirs]) if m0.conv1d.bias is not None else None,
        )


class _Stacked(NamedTuple):
    """A BiMamba's weights for one grouped scan: both directions stacked on channels."""

    b: int  # rows of the input
    nd: int  # directions (1 or 2)
    di: int
    N: int
    R: int
    K: int
    tied: bool  # the directions share in_proj
    share_out: bool  # ... and out_proj, with `add`: out = W (y_f + y_r)
    add: bool  # combine by add (else ew_multiply)
    w_in: torch.Tensor
    b_in: list
    w_xp: torch.Tensor
    w_dt: torch.Tensor
    w_out: list
    b_out: list
    A: torch.Tensor
    D: torch.Tensor
    dt_bias: torch.Tensor
    conv_w: torch.Tensor
    conv_b: torch.Tensor | None


def _grouped_ssm(x: torch.Tensor, z: torch.Tensor, w: _Stacked, state):
    """One step of both directions: conv, x_proj, dt_proj and the grouped scan.

    x, z (b, nd di, T); state (conv (b, nd di, K-1), ssm (b, nd di, N)) or Nones -> y (b, nd di, T), state.
    """
    conv_state, ssm_state = state
    b, T, K, di, N, R = w.b, x.shape[-1], w.K, w.di, w.N, w.R
    n = b * w.nd
    if T >= K - 1:
        new_conv = x[..., T - (K - 1):].clone()  # (b, nd di, K - 1)
    else:
        prev = conv_state if conv_state is not None else x.new_zeros(b, w.nd * di, K - 1)
        new_conv = torch.cat([prev.to(x.dtype), x], dim=-1)[..., T:].clone()
    xc = causal_conv1d_fn(x, w.conv_w, w.conv_b, initial_state=conv_state, activation="silu")  # (b, nd di, T)
    x_dbl = torch.bmm(w.w_xp, xc.view(n, di, T))  # (n, R + 2N, T)
    dt = torch.bmm(w.w_dt, x_dbl[:, :R])  # (n, di, T)
    Bm = x_dbl[:, R:R + N].view(b, w.nd, N, T)  # (b, groups = nd, N, T) view
    Cm = x_dbl[:, R + N:].view(b, w.nd, N, T)
    y, ssm_state = selective_scan_fn(
        xc, dt.view(b, w.nd * di, T), w.A, Bm, Cm, w.D, z=z, delta_bias=w.dt_bias,
        delta_softplus=True, return_last_state=True, initial_state=ssm_state,
    )  # y (b, nd di, T), state (b, nd di, N) fp32
    return y, (new_conv, ssm_state)


class _Steps:
    """The projections into and out of each step of a BiMamba, and the output they build.

    Step j: the forward direction over tile j, the reverse over tile jr = k-1-j. With tied
    in_proj a step j < jr in `keep` keeps both tiles' projections for step jr (where the tiles
    swap roles) and, with a shared out_proj, its y until step jr completes both tiles.
    """

    def __init__(self, u: torch.Tensor, t: list[int], w: _Stacked, keep: set[int]):
        self.u, self.t, self.w, self.keep = u, t, w, keep
        self.k = len(t) - 1
        self.kept_p: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kept_y: dict[int, torch.Tensor] = {}
        # without autograd both directions accumulate into one (batch, L, d) buffer, tile by
        # tile (add: from zeros, ew_multiply: from ones); with it, tiles are joined at the end
        self.lean = not torch.is_grad_enabled()
        b, L, d = u.shape
        if self.lean:
            self.acc = (torch.zeros if w.add else torch.ones)(b, L, d, dtype=u.dtype, device=u.device)
        else:
            self.parts: list[list[torch.Tensor]] = [[] for _ in range(self.k)]

    def _proj(self, tiles: list[int]) -> torch.Tensor:
        """in_proj of u over the given tiles (same length T) -> (len(tiles), b, 2 di, T)."""
        w, t, u = self.w, self.t, self.u
        m, b, d = len(tiles), w.b, u.shape[-1]
        U = torch.stack([u[:, t[i]:t[i + 1]] for i in tiles])  # (m, b, T, d)
        T = U.shape[2]
        # bmm reads the transposed views as they are (no copy); its output is contiguous
        W = (w.w_in.expand(m * b, -1, -1) if w.w_in.dim() == 2
             else w.w_in[:, None].expand(-1, b, -1, -1).reshape(m * b, 2 * w.di, d))
        P = torch.bmm(W, U.view(m * b, T, d).transpose(1, 2)).view(m, b, 2 * w.di, T)
        if w.b_in[0] is not None:
            P = P + torch.stack(w.b_in[:m])[:, None, :, None].to(P.dtype)
        return P

    def inputs(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, z of step j: (b, nd di, T) each, the reverse direction's in scan time."""
        di, jr = self.w.di, self.k - 1 - j
        if self.w.nd == 1:
            P = self._proj([j])  # (1, b, 2 di, T)
            return P[0, :, :di], P[0, :, di:]
        if jr in self.kept_p:  # second step of a kept pair: the tiles swap roles
            p1, p0 = self.kept_p.pop(jr)
        elif self.w.tied and jr == j:  # the middle tile serves both directions
            p0 = p1 = self._proj([j])[0]
        else:
            p0, p1 = self._proj([j, jr]).unbind(0)  # (b, 2 di, T) each: tile j, tile jr
        if j in self.keep:
            self.kept_p[j] = (p0, p1)
        xr = p1.flip(-1)  # (b, 2 di, T): tile jr in scan time
        x = torch.cat([p0[:, :di], xr[:, :di]], 1)  # (b, 2 di, T) directions on channels
        z = torch.cat([p0[:, di:], xr[:, di:]], 1)
        return x, z

    def _out(self, y: torch.Tensor, direction: int) -> torch.Tensor:
        """out_proj: y (..., di, T) -> (..., T, d)."""
        w = self.w
        lead, T = y.shape[:-2], y.shape[-1]
        y3 = y.reshape(-1, w.di, T)  # a view where y is a view of one
        o = torch.bmm(y3.transpose(1, 2), w.w_out[direction].to(y.dtype).expand(y3.shape[0], -1, -1))
        o = o.view(*lead, T, self.u.shape[-1])
        return o if w.b_out[direction] is None else o + w.b_out[direction]

    def _put(self, tile: int, o: torch.Tensor) -> None:
        """One contribution o (b, T, d) to a tile of the output."""
        t = self.t
        if not self.lean:
            self.parts[tile].append(o)
        elif self.w.add:
            self.acc[:, t[tile]:t[tile + 1]] += o
        else:
            self.acc[:, t[tile]:t[tile + 1]] *= o

    def outputs(self, j: int, y: torch.Tensor) -> None:
        """Route step j's y (b, nd di, T) through out_proj into the output."""
        w, di, jr = self.w, self.w.di, self.k - 1 - j
        yf = y[:, :di]  # (b, di, T): tile j
        if w.nd == 1:
            self._put(j, self._out(yf, 0))
            return
        if w.share_out and j in self.keep:  # first step of a kept pair: y waits for step jr
            self.kept_y[j] = y
            return
        yr = y[:, di:].flip(-1)  # (b, di, T): tile jr in original order
        bias2 = 0 if w.b_out[1] is None else w.b_out[1]  # the second direction's bias
        if w.share_out and jr == j:
            self._put(j, self._out(yf + yr, 0) + bias2)
        elif w.share_out and jr in self.keep:  # the pair's second step: both tiles complete
            y0 = self.kept_y.pop(jr)  # step jr: tile jr forward, tile j reverse (scan time)
            o = self._out(torch.stack([yf + y0[:, di:].flip(-1), y0[:, :di] + yr]), 0) + bias2  # (2, b, T, d)
            self._put(j, o[0])
            self._put(jr, o[1])
        else:  # one product per direction
            self._put(j, self._out(yf, 0))
            self._put(jr, self._out(yr, 1))

    def result(self) -> torch.Tensor:
        """(batch, L, d)."""
        if self.lean:
            return self.acc
        add = self.w.add
        tiles = [p[0] if len(p) == 1 else (p[0] + p[1] if add else p[0] * p[1]) for p in self.parts]
        return torch.cat(tiles, 1) if len(tiles) > 1 else tiles[0]


def _palindromic_tiles(L: int, tile: int) -> list[int]:
    """Tile edges 0 = t[0] < ... < t[k] = L, each tile <= ~tile, with t[k - i] = L - t[i], so
    the reverse direction's tiles (in scan time) are the forward direction's tiles."""
    k = max(1, -(-L // tile))
    if k % 2 == 0 and L % 2 == 1:  # an even count needs the middle edge at L / 2
        k += 1
    first = [-(-i * L // k) for i in range(k // 2 + 1)]  # ceil(i L / k)
    return first + [L - first[k - i] for i in range(k // 2 + 1, k + 1)]


def _pairs_to_keep(t: list[int], floats_per_token: int, tied: bool) -> set[int]:
    """Steps j < k-1-j whose in_proj (and y) are kept for step k-1-j: the pairs nearest the
    middle first (they are held the shortest), within the MAMBA_DNA_BIDIR_CACHE_MB budget."""
    env = os.environ.get("MAMBA_DNA_BIDIR_CACHE_MB", "").strip()  # checked on every call, tiled or not
    if env and not env.isdigit():
        raise ConfigError(f"MAMBA_DNA_BIDIR_CACHE_MB={env!r}: expected a number of MiB (0 = keep nothing)")
    k = len(t) - 1
    if not tied or k < 2:
        return set()
    budget = (int(env) if env else BIDIR_CACHE_MB) * 2**20 // 4  # float32 values
    keep, used = set(), 0
    for j in reversed(range(k // 2)):  # the steps j < k-1-j, nearest the middle first
        cost = (t[j + 1] - t[j]) * floats_per_token
        if used + cost > budget:
            break
        keep.add(j)
        used += cost
    return keep


def _norm(cfg: ModelConfig) -> nn.Module:
    return RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.rms_norm else nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


class CaduceusBlock(nn.Module):
    """Add + norm + BiMamba on the stacked stream (see the module docstring).

    forward(h, r): h the previous mixer output (or the embedding), r the residual (None in the
    first block) -> (mixer output, residual), both (rows, L, d_model) stacked.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.norm = _norm(cfg)
        self.mixer = BiMamba(cfg, layer_idx)

    def forward(self, h: torch.Tensor, r: torch.Tensor | None):
        cfg = self.cfg
        s = h.float() if r is None else h.float() + r.float()  # add in fp32, as the fused kernel does
        if cfg.rcps and cfg.fused_add_norm:
            # the fused RCPS add+norm: [second half ; rc(first half)], each reverse-complemented
            # in the stacked layout: swap the batch halves and rc both
            rows = s.shape[0] // 2
            s = s.view(2, rows, *s.shape[1:]).flip(0, 2, 3).reshape(s.shape)
        r = s if cfg.residual_in_fp32 else s.to(h.dtype)
        x = self.norm(s.to(self.norm.weight.dtype)).to(h.dtype)  # (rows, L, d_model)
        return self.mixer(x), r


# --------------------------------------------------------------------------- the LM


def weight_problems(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    """'missing: a, b; unexpected: c; mis-shaped: d (2,) (expected (3,))', '' when all match."""
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            problems.append(f"{what}: {shown}")
    return "; ".join(problems)


class CaduceusLM(nn.Module):
    """Bidirectional (optionally RC-equivariant) Mamba masked LM over mamba-dna token ids."""

    is_causal = False

    def __init__(self, config: ModelConfig | None = None, **kw):
        super().__init__()
        if config is None:
            config = ModelConfig(**{"bidirectional": True, **kw})
        elif kw:
            raise TypeError("pass either a ModelConfig or keyword fields, not both")
        if not config.bidirectional:
            raise ConfigError("CaduceusLM needs bidirectional=true (a causal model is a MambaLM)")
        self.config = config
        cfg = config
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([CaduceusBlock(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = _norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("complement", torch.tensor(cfg.complement, dtype=torch.long), persistent=False)
        # ours -> model ids (-1: none), and the model ids of our 9 tokens for the output
        ext = cfg.external_ids if cfg.external_ids is not None else list(range(VOCAB_SIZE))
        self.register_buffer("ext_ids", torch.tensor(ext, dtype=torch.long), persistent=False)
        self._init_weights()
        self.tie()

    def tie(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        for layer in self.layers:
            if layer.mixer.rev is not None and self.config.bidirectional_weight_tie:
                layer.mixer.tie()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """mamba_ssm / Caduceus initialisation (embedding normal, out_proj rescaled)."""
        import math

        cfg = self.config
        nn.init.normal_(self.embedding.weight, std=cfg.initializer_range)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        if cfg.rescale_prenorm_residual:
            for layer in self.layers:
                for mixer in layer.mixer._dirs():
                    w = mixer.out_proj.weight
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                    w /= math.sqrt(cfg.n_layer)

    @property
    def name(self) -> str:
        kind = "caduceus-ps" if self.config.rcps else "caduceus-ph"
        return f"{kind}-{self.config.n_layer}x{self.config.d_model}"

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the model in its own vocabulary

    def _check_ext(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.dtype.is_floating_point:
            raise InputError(f"input_ids: expected (batch, L) integer token ids, got {tuple(ids.shape)} {ids.dtype}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise InputError(f"input_ids: ids must lie in [0, {self.config.vocab_size})")
        return ids

    def _stack_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (batch, L) model ids -> stacked embedding: PS (2 batch, L, d), Ph (batch, L, d)."""
        if not self.config.rcps:
            return self.embedding(ids)
        rc_ids = self.complement[ids.flip(1)]  # (batch, L): the reverse-complement strand
        return self.embedding(torch.cat([ids, rc_ids], 0))  # (2 batch, L, d)

    def _unstack(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked (2 batch, L, d) -> the real code's layout (batch, L, 2 d) [fwd | RC half]."""
        if not self.config.rcps:
            return x
        b = x.shape[0] // 2
        return torch.cat([x[:b], _rc(x[b:])], dim=-1)

    def _final_norm(self, s: torch.Tensor) -> torch.Tensor:
        return self.norm_f(s.to(self.norm_f.weight.dtype))

    def _backbone(self, ids: torch.Tensor, upto: int, collect: bool):
        """Stacked embedding + `upto` blocks -> (h, r, hidden-states list in stacked layout)."""
        h = self._stack_embed(ids)  # (rows, L, d)
        r = None
        states = []
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers[:upto]:
            if collect:
                states.append(h)
            if use_ckpt and r is not None:
                h, r = checkpoint(layer, h, r, use_reentrant=False)
            else:
                h, r = layer(h, r)
        return h, r, states

    def forward_external(self, ids: torch.Tensor, output_hidden_states: bool = False):
        """The real code's forward in the model's own vocabulary.

        ids (batch, L) model ids -> (logits (batch, L, vocab_size) fp32, hidden-states list or
        None). The list is filled as the real code fills it: [embedding output, what enters
        block 1 (block 0's mixer output, before its residual is added), ..., what enters the
        last block, the final normed output (fused_add_norm only)]; PS entries have 2 x d_model
        channels [forward half | RC half].
        """
        ids = self._check_ext(ids)
        h, r, states = self._backbone(ids, self.config.n_layer, output_hidden_states)
        final = self._final_norm(h.float() + r.float() if r is not None else h.float())  # (rows, L, d)
        logits = self._head(final)
        if not output_hidden_states:
            return logits, None
        hs = [self._unstack(x) for x in states]
        if self.config.fused_add_norm:
            hs.append(self._unstack(final))
        return logits, hs

    def _head(self, final: torch.Tensor) -> torch.Tensor:
        """Stacked final hidden -> logits (batch, L, vocab) fp32; PS folds both halves back."""
        lg = F.linear(final, self.lm_head.weight.to(final.dtype)).float()  # (rows, L, vocab)
        if not self.config.rcps:
            return lg
        b = lg.shape[0] // 2
        return lg[:b] + lg[b:].flip(1)[..., self.complement]

    # -- the model on mamba-dna ids (the CONTRACT protocol)

    def to_model_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Our token ids (batch, L) -> the model's ids; a token it has no id for is an InputError."""
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.dtype.is_floating_point:
            raise InputError(f"input_ids: expected (batch, L) integer token ids, got {tuple(ids.shape)} {ids.dtype}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= VOCAB_SIZE):
            raise InputError(f"input_ids: mamba-dna token ids must lie in [0, {VOCAB_SIZE})")
        out = self.ext_ids[ids]  # (batch, L)
        if ids.numel() and int(out.min()) < 0:
            bad = sorted({VOCAB[int(t)] for t in ids[out < 0].unique()})
            raise InputError(f"input_ids: the model's vocabulary has no token for {', '.join(bad)}")
        return out

    def _to_ours(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, L, vocab_size) model logits -> (batch, L, 9) ours (-inf where the model has no token)."""
        sel = self.ext_ids.clamp(min=0)
        out = logits[..., sel]
        return out.masked_fill((self.ext_ids < 0), float("-inf"))

    def _rc_ours(self, ids: torch.Tensor) -> torch.Tensor:
        comp = torch.as_tensor(COMPLEMENT, device=ids.device).long()
        return comp[ids.flip(1)]

    def forward(self, ids: torch.Tensor, rc_average: bool = False) -> torch.Tensor:
        """ids (batch, L) our tokens -> logits (batch, L, 9) fp32 in our vocabulary.

        rc_average: the mean with the flipped, complement-permuted logits of the reverse
        complement (post-hoc conjoining; PS is equivariant already, so it costs nothing there).
        """
        logits, _ = self.forward_external(self.to_model_ids(ids))
        logits = self._to_ours(logits)  # (batch, L, 9)
        if rc_average and not self.config.rcps:
            ids = ids if ids.dim() == 2 else ids[None]
            rc_logits, _ = self.forward_external(self.to_model_ids(self._rc_ours(ids.long())))
            comp = torch.as_tensor(COMPLEMENT, device=logits.device).long()
            logits = 0.5 * (logits + self._to_ours(rc_logits).flip(1)[..., comp])
        return logits

    def masked_log_probs(self, ids: torch.Tensor, rc_average: bool = False) -> torch.Tensor:
        """ids (batch, L) -> (batch, L, 4) log-softmax over A, C, G, T at every position."""
        logits = self.forward(ids, rc_average=rc_average)
        return torch.log_softmax(logits[..., list(BASES)], dim=-1)

    def hidden(self, ids: torch.Tensor, layer: int | None = None, rc_average: bool = False) -> torch.Tensor:
        """Embeddings (batch, L, channels) fp32; channels 2 x d_model for PS (the real layout).

        layer None: the final normed output (what the LM head sees); layer k in [0, n_layer]:
        the residual stream after k blocks (0 = embedding output); negative k counts from the end.
        rc_average: strand-symmetric (batch, L, d_model): PS averages the forward half with the
        channel-flipped RC half; Ph averages with the flipped pass over the reverse complement.
        """
        n = self.config.n_layer
        if layer is not None:
            k = layer + n + 1 if layer < 0 else layer
            if not 0 <= k <= n:
                raise ConfigError(f"layer={layer}: expected an integer in [{-n - 1}, {n}] or None")
        else:
            k = None

        def one(model_ids):
            h, r, _ = self._backbone(model_ids, n if k is None else k, False)
            s = h.float() if r is None else h.float() + r.float()
            out = self._final_norm(s).float() if k is None else s
            return self._unstack(out)  # (batch, L, C)

        ids = ids if ids.dim() == 2 else ids[None]
        out = one(self.to_model_ids(ids))
        if not rc_average:
            return out
        if self.config.rcps:
            d = self.config.d_model
            return 0.5 * (out[..., :d] + out[..., d:].flip(-1))
        rev = one(self.to_model_ids(self._rc_ours(ids.long())))
        return 0.5 * (out + rev.flip(1))

    # -- save / load (our own format)

    def _tied_names(self) -> set[str]:
        names = set()
        if self.config.tie_embeddings:
            names.add("lm_head.weight")
        if self.config.bidirectional_weight_tie:
            for i in range(self.config.n_layer):
                for p in ("in_proj", "out_proj"):
                    names.add(f"layers.{i}.mixer.rev.{p}.weight")
                    names.add(f"layers.{i}.mixer.rev.{p}.bias")
        return names

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """config.json (architecture CaduceusLM), model.safetensors (tied tensors once), version."""
        tied = self._tied_names()
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k not in tied}
        return write_model_dir(directory, sd, self.config.to_json())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location="cpu") -> CaduceusLM:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from mamba_dna.fsutil import read_json_object

        d = Path(directory)
        cfg_d = read_json_object(d / CONFIG_NAME, f"a model directory holds {CONFIG_NAME}")
        cfg = ModelConfig.from_dict(cfg_d, where=str(d / CONFIG_NAME))
        wpath = d / WEIGHTS_NAME
        if not wpath.exists():
            raise InputError(f"{wpath}: no such file (the weights of {d})")
        try:
            sd = load_file(str(wpath))
        except (SafetensorError, OSError) as e:
            raise InputError(f"{wpath}: cannot read safetensors ({e})") from None
        model = cls(cfg)
        model.load_weights(sd, where=str(wpath))
        return model.to(map_location) if map_location is not None else model

    def load_weights(self, sd: dict[str, torch.Tensor], where: str = "state dict") -> None:
        """Strict load of our names; tied tensors may be absent. Names every problem (InputError)."""
        own = {k: v for k, v in self.state_dict().items() if k not in self._tied_names()}
        sd = {k: v for k, v in sd.items() if k not in self._tied_names() or k in own}
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        misshaped = sorted(f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
                           for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
        problems = weight_problems(missing, unexpected, misshaped)
        if problems:
            raise InputError(f"{where}: weights do not match the config: {problems}")
        for k, v in sd.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise InputError(f"{where}: tensor {k} has non-finite values (NaN or inf)")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(sd[k].to(v.dtype))
        self.tie()


__all__ = ["ARCHITECTURE", "BiMamba", "CaduceusBlock", "CaduceusLM", "ModelConfig"]
