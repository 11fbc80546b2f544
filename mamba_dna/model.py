"""The Mamba DNA language model: config, block, LM head, streaming state, save/load.

Architecture (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces"), with mamba_ssm's parameter names so checkpoints convert by renaming only:

    backbone.embedding                      (vocab, d_model)
    backbone.layers.{i}.norm                RMSNorm (pre-norm)
    backbone.layers.{i}.mixer.in_proj       d_model -> 2 * d_inner          (x, z)
    backbone.layers.{i}.mixer.conv1d        causal depthwise, kernel d_conv, + SiLU on x
    backbone.layers.{i}.mixer.x_proj        d_inner -> dt_rank + 2 * d_state (dt, B, C)
    backbone.layers.{i}.mixer.dt_proj       dt_rank -> d_inner (+ bias = softplus offset)
    backbone.layers.{i}.mixer.A_log, .D     (d_inner, d_state), (d_inner,)
    backbone.layers.{i}.mixer.out_proj      d_inner -> d_model
    backbone.norm_f                         final RMSNorm
    lm_head                                 (vocab, d_model), tied to the embedding

`selective=False` is the LTI ablation: dt, B and C no longer depend on the input. x_proj and
dt_proj are replaced by learned constants: `dt_bias` (d_inner,) and `B_lti`, `C_lti`
(d_state,), shared by the channels exactly as the selective model's input-dependent B_t and
C_t are; A stays per channel. The rest of the block (conv, gate, projections) is unchanged.

Streaming: `forward(ids, state)` returns the state after the last token (per layer: the
last d_conv - 1 conv inputs and the fp32 SSM state), so a sequence fed in pieces gives the
same outputs as one pass. `step()` advances one token with `selective_state_update`.

This module does no I/O besides `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mamba_dna import __version__
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.kernels import (
    causal_conv1d_fn,
    rms_norm_fn,
    selective_scan_fn,
    selective_state_update,
)
from mamba_dna.tokenizer import BASES, VOCAB_SIZE, TokenizerSpec, reverse_complement

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
VERSION_NAME = "mamba_dna_version"

DNA_TOKENIZER = "mamba-dna-nucleotide"


# On CPU a long sequence runs through the blocks in tiles of about this many activations
# (batch * d_inner * tokens), the state carried between tiles exactly as in streaming: the
# tile's tensors stay in cache between the projections, the conv and the scan. Measured on
# the 2-core dev box (4 x d_model 256): 19k tokens/s at L 4k against 14k at L 16k in one
# piece. MAMBA_DNA_CPU_TILE overrides it (0: no tiling). GPUs are not tiled.
CPU_TILE_ACTIVATIONS = 1 << 21


def _cpu_tile_tokens(batch: int, d_inner: int, L: int, device: torch.device) -> int:
    """Tokens per tile for a (batch, L) input on `device`; 0 = run in one piece."""
    if device.type != "cpu":
        return 0
    env = os.environ.get("MAMBA_DNA_CPU_TILE", "").strip()
    if env and not env.isdigit():
        raise ConfigError(f"MAMBA_DNA_CPU_TILE={env!r}: expected a number of activations per "
                          "tile (0 = no tiling)")
    budget = int(env) if env else CPU_TILE_ACTIVATIONS
    if budget <= 0:
        return 0
    tokens = max(1024, (budget // max(batch * d_inner, 1)) // 256 * 256)
    return tokens if L > tokens else 0


def _pad_to_multiple(n: int, m: int) -> int:
    return ((n + m - 1) // m) * m


def layer_index(layer: int, n_layer: int, label: str | None = None, final: str = "None") -> int:
    """`layer` in [-n_layer - 1, n_layer] -> blocks to run k in [0, n_layer] (negative counts
    from the end: -1 = after the last block). `label`/`final` name the option in the error."""
    k = layer + n_layer + 1 if layer < 0 else layer
    if not 0 <= k <= n_layer:
        raise ConfigError(f"{label or f'layer={layer}'}: expected an integer in [{-n_layer - 1}, "
                          f"{n_layer}] (this model has {n_layer} blocks) or {final}")
    return k


# --------------------------------------------------------------------------- config


# what config.json's "architecture" may say for MambaConfig/MambaLM
ARCHITECTURES = ("MambaLM",)
_BOOL_FIELDS = ("conv_bias", "bias", "rms_norm", "residual_in_fp32", "tie_embeddings",
                "rescale_prenorm_residual", "gradient_checkpointing", "selective")
_FLOAT_FIELDS = ("dt_min", "dt_max", "dt_scale", "dt_init_floor", "norm_eps", "initializer_range")


@dataclass
class MambaConfig:
    """Hyper-parameters of a MambaLM; stored as config.json beside the weights.

    `vocab_size` is the number of embedding rows (the 9-token DNA vocabulary padded to 16
    by default; any size for converted checkpoints). `tokenizer` names what the ids mean:
    "mamba-dna-nucleotide" (ours) or "external" (a converted model with a foreign vocab).
    """

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = _pad_to_multiple(VOCAB_SIZE, 8)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"  # "random" | "constant" (dt_proj weight init)
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    rms_norm: bool = True  # False: LayerNorm (mamba_ssm's rms_norm=False)
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    gradient_checkpointing: bool = False
    selective: bool = True  # False: the LTI ablation (dt, B, C input-independent)
    tokenizer: str = DNA_TOKENIZER

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"MambaConfig.{name}={v!r}: expected a positive integer")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ConfigError(f"MambaConfig.dt_rank={self.dt_rank!r}: expected 'auto' or a positive integer")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"MambaConfig: expected 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(f"MambaConfig.dt_init={self.dt_init!r}: expected 'random' or 'constant'")
        for name in _BOOL_FIELDS:  # "false" (a string) is truthy: refuse it
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ConfigError(f"MambaConfig.{name}={v!r}: expected true or false (a JSON boolean)")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"MambaConfig.{name}={v!r}: expected a finite number")
        if self.norm_eps <= 0:
            raise ConfigError(f"MambaConfig.norm_eps={self.norm_eps!r}: expected a positive number "
                              "(the normalisation divides by sqrt(mean + eps))")
        if self.tokenizer == DNA_TOKENIZER and self.vocab_size < VOCAB_SIZE:
            raise ConfigError(
                f"MambaConfig.vocab_size={self.vocab_size} is smaller than the DNA vocabulary "
                f"({VOCAB_SIZE} tokens)"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> MambaConfig:
        known = {f.name for f in fields(cls)}
        arch = d.get("architecture", "MambaLM")
        readable = getattr(cls, "READS_ARCHITECTURES", ARCHITECTURES)  # a subclass reads more
        if arch not in readable:
            raise ConfigError(f"{where}: field \"architecture\" is {arch!r}; this loader reads "
                              f"{' or '.join(readable)}")
        extra = sorted(set(d) - known - {"mamba_dna_version", "architecture"})
        if extra:
            raise ConfigError(
                f"{where}: unknown MambaConfig field(s) {', '.join(extra)}",
                hint=f"known fields: {', '.join(sorted(known))}",
            )
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except ConfigError as e:  # name the file the bad value came from
            raise ConfigError(f"{where}: {e}", hint=e.hint) from None

    def to_json(self) -> str:
        d = {"architecture": "MambaLM", **self.to_dict(), "mamba_dna_version": __version__}
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> MambaConfig:
        from mamba_dna.fsutil import read_json_object

        d = read_json_object(path, f"a model directory holds {CONFIG_NAME}")
        return cls.from_dict(d, where=str(path))


# --------------------------------------------------------------------------- state


@dataclass
class MambaState:
    """Recurrent state after the last token, one entry per layer.

    conv[i]: (batch, d_inner, d_conv - 1) the last conv inputs, in the model's dtype;
    ssm[i]:  (batch, d_inner, d_state) fp32;  offset: tokens consumed so far.
    """

    conv: list[torch.Tensor] = field(default_factory=list)
    ssm: list[torch.Tensor] = field(default_factory=list)
    offset: int = 0

    def detach(self) -> MambaState:
        return MambaState([c.detach() for c in self.conv], [s.detach() for s in self.ssm], self.offset)

    def clone(self) -> MambaState:
        return MambaState([c.clone() for c in self.conv], [s.clone() for s in self.ssm], self.offset)

    def to(self, device) -> MambaState:
        return MambaState([c.to(device) for c in self.conv], [s.to(device) for s in self.ssm], self.offset)

    @classmethod
    def stack(cls, states: list[MambaState]) -> MambaState:
        """States of single sequences -> one batch (rows in order; offset 0: they differ)."""
        n = len(states[0].ssm)
        return cls([torch.cat([s.conv[i] for s in states]) for i in range(n)],
                   [torch.cat([s.ssm[i] for s in states]) for i in range(n)], 0)

    @property
    def batch(self) -> int:
        return self.ssm[0].shape[0] if self.ssm else 0


# --------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_fn(x, self.weight, self.eps)  # (..., d), float32 math, x's dtype


class MambaMixer(nn.Module):
    """One Mamba block's mixer: (batch, L, d_model) -> (batch, L, d_model)."""

    def __init__(self, cfg: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        di, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank_value
        self.d_inner, self.d_state, self.dt_rank = di, N, R
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=cfg.bias)
        self.conv1d = nn.Conv1d(di, di, kernel_size=cfg.d_conv, groups=di, padding=0, bias=cfg.conv_bias)
        if cfg.selective:
            self.x_proj = nn.Linear(di, R + 2 * N, bias=False)
            self.dt_proj = nn.Linear(R, di, bias=True)
        else:  # LTI ablation: dt (per channel), B, C (shared) that do not look at the input
            self.dt_bias = nn.Parameter(torch.empty(di))
            self.B_lti = nn.Parameter(torch.empty(N))
            self.C_lti = nn.Parameter(torch.empty(N))
        self.A_log = nn.Parameter(torch.empty(di, N))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, cfg.d_model, bias=cfg.bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's initialisation of dt, A (S4D-real) and D."""
        cfg, di, N = self.cfg, self.d_inner, self.d_state
        # dt: log-uniform in [dt_min, dt_max], floored; the bias is its inverse softplus.
        dt = torch.exp(
            torch.rand(di) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        ).clamp(min=cfg.dt_init_floor)  # (d_inner,)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus(inv_dt) == dt
        if cfg.selective:
            std = self.dt_rank**-0.5 * cfg.dt_scale
            if cfg.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(inv_dt)
            self.dt_proj.bias._no_reinit = True
        else:
            self.dt_bias.copy_(inv_dt)
            self.B_lti.fill_(1.0)  # S4D: B = 1
            nn.init.normal_(self.C_lti, std=N**-0.5)
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(di, 1)  # (d_inner, N): S4D-real
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    # -- pieces shared by the parallel and the step path

    def _dt_B_C(self, x: torch.Tensor):
        """x (batch, d_inner, L) -> dt (batch, d_inner, L), B, C (batch, N, L) or grouped."""
        b, di, L = x.shape
        if self.cfg.selective:
            # W @ x with x as stored: (batch, ., L) results, no transposed copies
            x_dbl = torch.bmm(self.x_proj.weight.expand(b, -1, -1), x)  # (batch, R + 2N, L)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
            dt = torch.bmm(self.dt_proj.weight.expand(b, -1, -1), dt)  # (batch, d_inner, L)
            return dt, B, C, self.dt_proj.bias.float()  # B, C: (batch, N, L) views
        dt = x.new_zeros(b, di, L)  # (batch, d_inner, L): dt = softplus(dt_bias) everywhere
        B = self.B_lti.to(x.dtype)[None, :, None].expand(b, self.d_state, L)  # (batch, N, L) view
        C = self.C_lti.to(x.dtype)[None, :, None].expand(b, self.d_state, L)  # (batch, N, L) view
        return dt, B, C, self.dt_bias.float()

    def forward(self, u: torch.Tensor, conv_state=None, ssm_state=None):
        """u (batch, L, d_model) -> (out (batch, L, d_model), conv_state, ssm_state)."""
        b, L, _ = u.shape
        k = self.cfg.d_conv
        # xz = W_in @ u^T, laid out (batch, 2*d_inner, L) as the scan wants it; bmm lets BLAS
        # read u transposed (matmul would compute (L, 2*d_inner) and copy it transposed)
        xz = torch.bmm(self.in_proj.weight.expand(b, -1, -1), u.transpose(1, 2))  # (batch, 2*d_inner, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None].to(xz.dtype)
        x, z = xz.chunk(2, dim=1)  # (batch, d_inner, L) each
        if L >= k - 1:
            new_conv = x[..., L - (k - 1):].clone()  # (batch, d_inner, k - 1)
        else:  # a piece shorter than the conv window: the state keeps older inputs too
            prev = conv_state.to(x.dtype) if conv_state is not None else x.new_zeros(b, self.d_inner, k - 1)
            new_conv = torch.cat([prev, x], dim=-1)[..., L:].clone()  # (batch, d_inner, k - 1)
        # causal depthwise conv (left context: conv_state or zeros) + SiLU, one fused pass
        x = causal_conv1d_fn(x, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                             initial_state=conv_state, activation="silu")  # (batch, d_inner, L)
        dt, B, C, dt_bias = self._dt_B_C(x)
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        y, new_ssm = selective_scan_fn(
            x, dt, A, B, C, self.D.float(), z=z, delta_bias=dt_bias, delta_softplus=True,
            return_last_state=True, initial_state=ssm_state,
        )  # y (batch, d_inner, L), new_ssm (batch, d_inner, N) fp32
        out = F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)  # (batch, L, d_model)
        return out, new_conv, new_ssm

    def step(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One token: u (batch, d_model) -> out (batch, d_model); updates both states in place."""
        xz = self.in_proj(u)  # (batch, 2*d_inner)
        x, z = xz.chunk(2, dim=-1)  # (batch, d_inner)
        window = torch.cat([conv_state.to(x.dtype), x[..., None]], dim=-1)  # (batch, d_inner, k)
        conv_state.copy_(window[..., 1:])
        x = (window * self.conv1d.weight[:, 0, :]).sum(-1)  # (batch, d_inner)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        if self.cfg.selective:
            x_dbl = self.x_proj(x)  # (batch, R + 2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = F.linear(dt, self.dt_proj.weight)  # (batch, d_inner)
            dt_bias = self.dt_proj.bias
        else:
            dt = torch.zeros_like(x)
            B = self.B_lti.to(x.dtype)[None].expand(x.shape[0], -1)  # (batch, N)
            C = self.C_lti.to(x.dtype)[None].expand(x.shape[0], -1)
            dt_bias = self.dt_bias
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        y = selective_state_update(
            ssm_state, x, dt, A, B, C, self.D, z=z, dt_bias=dt_bias, dt_softplus=True
        )  # (batch, d_inner)
        return self.out_proj(y)


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h))."""

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.rms_norm else nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MambaMixer(cfg, layer_idx)

    def forward(self, h, conv_state=None, ssm_state=None):
        """h (batch, L, d_model) residual stream -> (h', conv_state, ssm_state)."""
        x = self.norm(h.to(self.norm.weight.dtype))
        out, conv_state, ssm_state = self.mixer(x, conv_state, ssm_state)
        h = (h.float() if self.residual_in_fp32 else h) + out
        return h, conv_state, ssm_state

    def step(self, h, conv_state, ssm_state):
        """h (batch, d_model) -> h'; states updated in place."""
        x = self.norm(h.to(self.norm.weight.dtype))
        out = self.mixer.step(x, conv_state, ssm_state)
        return (h.float() if self.residual_in_fp32 else h) + out


class Backbone(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.rms_norm else nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


# --------------------------------------------------------------------------- the LM


def write_model_dir(directory: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                    config_json: str, tokenizer_json: str | None = None) -> Path:
    """A model directory: model.safetensors, tokenizer.json (if given), mamba_dna_version and
    config.json, each written atomically, config.json last (a directory with a config is
    complete). Shared by every model class's save_pretrained."""
    from safetensors.torch import save_file

    from mamba_dna.fsutil import atomic_path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / WEIGHTS_NAME) as tmp:
        save_file(state_dict, str(tmp), metadata={"format": "pt", "mamba_dna_version": __version__})
    if tokenizer_json is not None:
        with atomic_path(d / TOKENIZER_NAME) as tmp:
            tmp.write_text(tokenizer_json)
    with atomic_path(d / VERSION_NAME) as tmp:
        tmp.write_text(__version__ + "\n")
    with atomic_path(d / CONFIG_NAME) as tmp:
        tmp.write_text(config_json)
    return d


class MambaLM(nn.Module):
    """Mamba language model over single-nucleotide tokens (any vocab for converted models)."""

    def __init__(self, config: MambaConfig | None = None, **kw):
        super().__init__()
        if config is None:
            config = MambaConfig(**kw)
        elif kw:
            raise TypeError("pass either a MambaConfig or keyword fields, not both")
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    # -- initialisation (mamba_ssm's _init_weights)

    @torch.no_grad()
    def _init_weights(self) -> None:
        cfg = self.config
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=cfg.initializer_range)
        if cfg.rescale_prenorm_residual:
            for layer in self.backbone.layers:
                w = layer.mixer.out_proj.weight
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                w /= math.sqrt(cfg.n_layer)

    # -- helpers

    @property
    def name(self) -> str:
        """Scorer-protocol name for tables."""
        return f"mamba-{self.config.n_layer}x{self.config.d_model}{'' if self.config.selective else '-lti'}"

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    def init_state(self, batch: int, device=None, dtype=None) -> MambaState:
        """Zero state (equivalent to `state=None`)."""
        cfg = self.config
        device = device or self.device
        dtype = dtype or self.backbone.embedding.weight.dtype
        conv = [torch.zeros(batch, cfg.d_inner, cfg.d_conv - 1, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        ssm = [torch.zeros(batch, cfg.d_inner, cfg.d_state, device=device, dtype=torch.float32) for _ in range(cfg.n_layer)]
        return MambaState(conv, ssm, 0)

    def _check_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise InputError(f"input_ids: expected (batch, L) token ids, got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point:
            raise InputError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
        return input_ids.long()

    def _run(self, input_ids: torch.Tensor, state: MambaState | None, upto: int):
        """Embedding + the first `upto` blocks -> (residual (batch, L, d_model), new state).

        On CPU a long input runs in tiles with the state carried (the same result as one
        pass, see CPU_TILE_ACTIVATIONS); autograd flows through the carried state."""
        ids = self._check_ids(input_ids)
        tile = _cpu_tile_tokens(ids.shape[0], self.config.d_inner, ids.shape[1], ids.device)
        if not tile:
            return self._run_piece(ids, state, upto)
        hs = []
        for s in range(0, ids.shape[1], tile):
            h, state = self._run_piece(ids[:, s:s + tile], state, upto)
            hs.append(h)  # (batch, tile, d_model)
        return torch.cat(hs, dim=1), state  # (batch, L, d_model)

    def _run_piece(self, ids: torch.Tensor, state: MambaState | None, upto: int):
        cfg = self.config
        h = self.backbone.embedding(ids)  # (batch, L, d_model)
        if cfg.residual_in_fp32:
            h = h.float()
        if state is not None and len(state.ssm) != cfg.n_layer:
            raise InputError(f"state has {len(state.ssm)} layers, the model {cfg.n_layer}")
        conv_new = list(state.conv) if state is not None else [None] * cfg.n_layer
        ssm_new = list(state.ssm) if state is not None else [None] * cfg.n_layer
        use_ckpt = cfg.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i in range(upto):
            layer = self.backbone.layers[i]
            if use_ckpt:
                h, conv_new[i], ssm_new[i] = checkpoint(layer, h, conv_new[i], ssm_new[i], use_reentrant=False)
            else:
                h, conv_new[i], ssm_new[i] = layer(h, conv_new[i], ssm_new[i])
        offset = (state.offset if state is not None else 0) + ids.shape[1]
        if upto < cfg.n_layer and state is None:  # layers not run keep a zero state
            zero = self.init_state(ids.shape[0], ids.device)
            for i in range(upto, cfg.n_layer):
                conv_new[i], ssm_new[i] = zero.conv[i], zero.ssm[i]
        return h, MambaState(conv_new, ssm_new, offset)

    # -- public API

    def forward(self, input_ids: torch.Tensor, state: MambaState | None = None):
        """input_ids (batch, L) int -> (logits (batch, L, vocab) fp32, state after the last token)."""
        h, new_state = self._run(input_ids, state, self.config.n_layer)
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))  # (batch, L, d_model)
        logits = self.lm_head(h).float()  # (batch, L, vocab)
        return logits, new_state

    def hidden(self, input_ids: torch.Tensor, state: MambaState | None = None, layer: int | None = None):
        """Embeddings: (hidden (batch, L, d_model) fp32, state).

        layer=None: after the final norm (what the LM head sees); layer=k in [0, n_layer]:
        the residual stream after k blocks (0 = token embeddings); negative k counts from
        the end (-1 = after the last block, before the final norm). Only the layers that ran
        are advanced in the returned state, so continue it with the same `layer`.
        """
        n = self.config.n_layer
        if layer is None:
            h, st = self._run(input_ids, state, n)
            return self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype)).float(), st
        h, st = self._run(input_ids, state, layer_index(layer, n))
        return h.float(), st

    def hidden_module(self, layer: int | None = None, label: str | None = None, final: str = "None"):
        """(module, pick): `pick(module's forward output)` is `hidden(..., layer)`'s value (a
        forward hook reads it during another call, e.g. `log_probs`; see scorer.HiddenTap)."""
        if layer is None:
            return self.backbone.norm_f, lambda out: out
        k = layer_index(layer, self.config.n_layer, label, final)
        if k == 0:
            return self.backbone.embedding, lambda out: out
        return self.backbone.layers[k - 1], lambda out: out[0]  # a Block returns (h, conv, ssm)

    def log_probs(self, tokens: torch.Tensor, state: MambaState | None = None):
        """Scorer protocol: tokens (batch, L) -> (lp (batch, L, 4) fp32, state).

        Row t = log P(base at t+1 | tokens[..t], state), renormalised over A, C, G, T.
        """
        if self.config.tokenizer != DNA_TOKENIZER:
            raise ConfigError(
                f"log_probs needs the DNA vocabulary; this model's ids are {self.config.tokenizer!r}",
                hint="convert with --tokenizer dna if the checkpoint was trained on mamba-dna ids",
            )
        logits, st = self.forward(tokens, state)  # (batch, L, vocab)
        lp = torch.log_softmax(logits[..., list(BASES)].float(), dim=-1)  # (batch, L, 4)
        return lp, st

    @torch.no_grad()
    def step(self, token: torch.Tensor, state: MambaState | None = None):
        """One token per sequence: token (batch,) -> (logits (batch, vocab) fp32, new state).

        The given state is not modified (it is copied first).
        """
        token = token.reshape(-1).long()  # (batch,)
        st = self.init_state(token.shape[0], token.device) if state is None else state.clone()
        h = self.backbone.embedding(token)  # (batch, d_model)
        if self.config.residual_in_fp32:
            h = h.float()
        for i, layer in enumerate(self.backbone.layers):
            h = layer.step(h, st.conv[i], st.ssm[i])
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        st.offset += 1
        return self.lm_head(h).float(), st

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        n: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        allowed: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample `n` tokens after `prompt` (batch, L0) -> (batch, L0 + n).

        temperature 0 = greedy; top_k keeps the k most likely tokens; `allowed` restricts
        sampling to these ids (e.g. `tokenizer.BASES`).
        """
        prompt = self._check_ids(prompt.to(self.device))
        logits, st = self.forward(prompt)
        last = logits[:, -1]  # (batch, vocab)
        out = [prompt]
        mask = None
        if allowed is not None:
            mask = torch.full((self.config.vocab_size,), float("-inf"), device=prompt.device)
            mask[list(allowed)] = 0.0
        for _ in range(n):
            if mask is not None:
                last = last + mask
            if temperature <= 0:
                nxt = last.argmax(-1)  # (batch,)
            else:
                scaled = last / temperature
                if top_k is not None and top_k < scaled.shape[-1]:
                    kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # (batch, 1)
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                probs = torch.softmax(scaled, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]  # (batch,)
            out.append(nxt[:, None])
            last, st = self.step(nxt, st)
        return torch.cat(out, dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- save / load

    def save_pretrained(self, directory: str | os.PathLike, write_tokenizer: bool | None = None) -> Path:
        """Write config.json, model.safetensors, tokenizer.json and mamba_dna_version.

        Each file is written atomically; config.json last, so a directory with a config
        is complete. Tied weights are stored once (lm_head.weight is dropped).
        """
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            sd.pop("lm_head.weight", None)
        if write_tokenizer is None:
            write_tokenizer = self.config.tokenizer == DNA_TOKENIZER
        return write_model_dir(directory, sd, self.config.to_json(),
                               TokenizerSpec().to_json() if write_tokenizer else None)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location="cpu", dtype: torch.dtype | None = None, **overrides
    ) -> MambaLM:
        """Load a model directory; `overrides` replace config fields (e.g. gradient_checkpointing).

        dtype None keeps the stored dtype (fp32 unless converted with --dtype).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if isinstance(map_location, (str, torch.device)):  # "tpu", "cuda:9": one line
            from mamba_dna.device import resolve_device

            map_location = resolve_device(map_location)
        d = Path(directory)
        if not d.is_dir():
            raise InputError(f"{d}: not a model directory (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
        cfg = MambaConfig.from_json_file(d / CONFIG_NAME)
        if overrides:
            cfg = MambaConfig.from_dict({**cfg.to_dict(), **overrides}, where="overrides")
        tok = d / TOKENIZER_NAME
        if cfg.tokenizer == DNA_TOKENIZER and tok.exists():
            TokenizerSpec.check_json(tok.read_text(), where=str(tok))
        wpath = d / WEIGHTS_NAME
        if not wpath.exists():
            raise InputError(f"{wpath}: no such file (the weights of {d})")
        try:
            sd = load_file(str(wpath), device=str(map_location) if map_location is not None else "cpu")
        except (SafetensorError, OSError) as e:
            raise InputError(f"{wpath}: cannot read safetensors ({e})") from None
        model = cls(cfg)
        model.load_weights(sd, where=str(wpath))
        if dtype is None:
            stored = {v.dtype for v in sd.values() if v.is_floating_point()}
            dtype = stored.pop() if len(stored) == 1 else None
        if dtype is not None and dtype != torch.float32:
            model = model.to(dtype)
        return model.to(map_location) if map_location is not None else model

    def load_weights(self, sd: dict[str, torch.Tensor], where: str = "state dict") -> None:
        """Strict load that names every missing, unexpected or mis-shaped tensor (InputError)."""
        own = self.state_dict()
        sd = dict(sd)
        if self.config.tie_embeddings:
            emb = sd.get("backbone.embedding.weight")
            head = sd.pop("lm_head.weight", None)
            if emb is None and head is not None:
                sd["backbone.embedding.weight"] = head
            elif emb is not None and head is not None and head.shape == emb.shape and not torch.equal(head, emb):
                raise InputError(f"{where}: lm_head.weight differs from backbone.embedding.weight "
                                 "but the config ties them (set tie_embeddings=false)")
            own = {k: v for k, v in own.items() if k != "lm_head.weight"}
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        misshaped = sorted(
            f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
            for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape)
        )
        problems = []
        for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if names:
                shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
                problems.append(f"{what}: {shown}")
        if problems:
            raise InputError(f"{where}: weights do not match the config: " + "; ".join(problems))
        from mamba_dna.checks import nonfinite_count

        for k in sorted(own):
            bad = nonfinite_count(sd[k])
            if bad:
                raise InputError(f"{where}: tensor {k} holds {bad:,} non-finite value(s) "
                                 f"(NaN/Inf) of {sd[k].numel():,}; the checkpoint is damaged")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(sd[k].to(v.dtype))
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight


# --------------------------------------------------------------------------- helpers


def rc_average_hidden(model: MambaLM, ids: torch.Tensor, layer: int | None = None) -> torch.Tensor:
    """Post-hoc conjoining: mean of the forward-strand and the flipped reverse-strand embeddings.

    ids (batch, L) -> (batch, L, d_model); position t of the result describes base t on
    both strands, so `rc_average_hidden(m, rc(ids)) == rc_average_hidden(m, ids).flip(1)`.
    """
    ids = model._check_ids(ids)
    fwd, _ = model.hidden(ids, layer=layer)  # (batch, L, d_model)
    rev, _ = model.hidden(reverse_complement(ids), layer=layer)  # (batch, L, d_model), reversed positions
    return 0.5 * (fwd + rev.flip(1))


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that carry `_no_weight_decay` (A_log, D) plus norms, biases, embeddings."""
    out = set()
    for name, p in model.named_parameters():
        if getattr(p, "_no_weight_decay", False) or p.dim() < 2 or "embedding" in name:
            out.add(name)
    return out


__all__ = [
    "Block",
    "MambaConfig",
    "MambaLM",
    "MambaMixer",
    "MambaState",
    "RMSNorm",
    "no_weight_decay_names",
    "rc_average_hidden",
]
