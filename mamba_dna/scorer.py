"""The scorer protocol: what `score` needs from a model, for every kind of model alike.

A scorer is a causal LM over mamba-dna token ids with
    log_probs(tokens (B, L), state) -> (lp (B, L, 4) over A, C, G, T, state after the last token)
    init_state(batch) -> an empty state;  name -> a short label for tables
and optionally `context_length` (predictions depend on that many tokens only: Markov k) and,
for network models, `hidden_module(layer, ...)` (where `hidden(ids, layer)`'s value is computed,
so `HiddenTap` can read it during a `log_probs` call). MambaLM (state: `MambaState`) and
`MarkovModel` (state: numpy (B, k) int64) implement it; the helpers below treat their states
alike, so pipelines never look inside a model.
"""

from __future__ import annotations

import numpy as np
import torch

from mamba_dna.errors import ConfigError
from mamba_dna.model import CPU_TILE_ACTIVATIONS


def device_of(scorer) -> torch.device:
    """The scorer's device (numpy scorers: cpu)."""
    d = getattr(scorer, "device", None)
    return d if isinstance(d, torch.device) else torch.device("cpu")


def as_tensor(lp) -> torch.Tensor:
    """log_probs output (torch or numpy) as a tensor."""
    return lp if isinstance(lp, torch.Tensor) else torch.from_numpy(np.asarray(lp))


def clone_state(state):
    """An independent copy of a scorer state (a snapshot that later calls cannot change)."""
    if state is None:
        return None
    if isinstance(state, np.ndarray):
        return state.copy()
    if hasattr(state, "clone"):  # MambaState, torch.Tensor
        return state.clone()
    raise TypeError(f"cannot snapshot a scorer state of type {type(state).__name__}")


def stack_states(states: list):
    """Batch-1 scorer states (None = empty) -> one state of batch len(states), in order."""
    s0 = states[0]
    if isinstance(s0, np.ndarray):
        return np.concatenate(states, axis=0)  # (B, k)
    if isinstance(s0, torch.Tensor):
        return torch.cat(states, dim=0)
    if hasattr(type(s0), "stack"):  # MambaState.stack
        return type(s0).stack(states)
    raise TypeError(f"cannot batch scorer states of type {type(s0).__name__}")


def call_tokens(scorer) -> int:
    """Tokens per model call (batch x length) that keep a call's activations cache-sized.

    A call's large tensors are (batch, d_inner, L): at ~2M elements (8 MB fp32) each, a
    2x128 model runs at ~11 us/token on this project's 2-core CPU, at 8x that (a 65,536-base
    pass chunk or 32 re-runs of 1 kb) at ~16 us/token (bench: min of 4 interleaved rounds).
    The Markov scorer has no such tensors: 65,536. On a GPU, 8x larger calls (16M elements;
    more parallel work per launch; not measured here: tune with --batch-size).
    """
    cfg = getattr(scorer, "config", None)
    d_inner = getattr(cfg, "d_inner", None)
    if not d_inner:
        return 1 << 16
    # CPU: the model's own tile budget (it tiles longer inputs the same way)
    elements = CPU_TILE_ACTIVATIONS if device_of(scorer).type == "cpu" else (1 << 24)
    return max(1024, elements // int(d_inner))


class HiddenTap:
    """Reads a network scorer's hidden states at `layer` during its `log_probs` calls.

    Same values as `scorer.hidden(ids, state, layer)` without a second forward: layer None =
    after the final norm, k = the residual stream after k blocks (0 = embeddings), negative k
    from the end. A forward hook on the module the model names (`hidden_module`); a call that
    the model runs in tiles along L (long inputs on CPU) fires it once per tile, and `take()`
    joins the tiles: (batch, L, d_model) fp32 for the last call.
    """

    def __init__(self, scorer, layer: int | None, option: str = "--emb-layer"):
        if not hasattr(scorer, "hidden_module"):
            raise ConfigError(f"--scores emb: scorer {getattr(scorer, 'name', '?')} has no embeddings",
                              hint="emb needs a network model directory; markov:K scores llr,dll only")
        self.module, self._pick = scorer.hidden_module(layer, label=f"{option} {layer}", final="'final'")
        self._tiles: list[torch.Tensor] = []
        self._handle = None

    def _hook(self, _module, _inputs, output) -> None:
        self._tiles.append(self._pick(output).float())  # (batch, tile, d_model)

    def __enter__(self) -> HiddenTap:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def take(self) -> torch.Tensor:
        tiles, self._tiles = self._tiles, []
        if not tiles:
            raise RuntimeError("HiddenTap: the hooked module did not run")
        return tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=1)  # (batch, L, d_model)
