"""What kind of model an embedding comes from, and what that means for its output.

    architecture   "mamba" (causal MambaLM), "caduceus-ph" (bidirectional CaduceusLM without
                   parameter sharing; pretrain's bimamba is the same network), "caduceus-ps"
                   (bidirectional, reverse-complement-equivariant parameter sharing)
    objective      "clm" for causal models, "mlm" for bidirectional ones: the only objective
                   each is trained with (by `pretrain` and by the published Caduceus models)
    width          columns of an embedding: d_model, except a Caduceus-PS without rc_average,
                   whose hidden states are its full 2 x d_model [forward half | RC half]
    rc_average     how strand-symmetric output is made: "rc_pass" (the mean with the flipped
                   pass over the reverse complement: causal and Caduceus-Ph, twice the work) or
                   "rcps_halves" (Caduceus-PS: the mean of the forward half and the
                   channel-flipped RC half of one pass, free; exact per position)

Pooling "last" is meaningful only for a causal model, whose last position has read the whole
sequence; every position of a bidirectional model sees both sides, so `check_pool` refuses it.
"""

from __future__ import annotations

from mamba_dna.errors import ConfigError


def is_bidirectional(model) -> bool:
    """True for a CaduceusLM (every position sees the whole sequence)."""
    return not getattr(model, "is_causal", True)


def is_rcps(model) -> bool:
    return bool(getattr(model.config, "rcps", False))


def architecture(model) -> str:
    if not is_bidirectional(model):
        return "mamba"
    return "caduceus-ps" if is_rcps(model) else "caduceus-ph"


def objective(model) -> str:
    return "mlm" if is_bidirectional(model) else "clm"


def width(model, rc_average: bool) -> int:
    """Columns of the embeddings `embed` writes for this model."""
    d = int(model.config.d_model)
    return 2 * d if is_rcps(model) and not rc_average else d


def channels(model, rc_average: bool) -> str:
    """The `channels` attribute: what the columns are."""
    if is_rcps(model) and not rc_average:
        return ("2 x d_model: [forward half | RC half] (Caduceus-PS layout; columns d_model.. "
                "flipped are the reverse strand's channels at the same position)")
    return "d_model"


def rc_average_method(model, rc_average: bool) -> str:
    if not rc_average:
        return ""
    return "rcps_halves" if is_rcps(model) else "rc_pass"


def check_pool(model, pool: str, option: str = "--pool") -> None:
    """ConfigError for pooling "last" with a bidirectional model (see the module docstring)."""
    if pool == "last" and is_bidirectional(model):
        raise ConfigError(
            f"{option} last with a bidirectional model ({architecture(model)}): its last position "
            "is no summary of the sequence (every position sees both sides)",
            hint=f"use {option} mean (Caduceus's choice) or max")


def describe(model, rc_average: bool) -> dict:
    """The HDF5 root attributes of `mamba_dna.io.hdf5` that say what made the embeddings."""
    return {"architecture": architecture(model), "objective": objective(model),
            "channels": channels(model, rc_average),
            "rc_average_method": rc_average_method(model, rc_average)}
