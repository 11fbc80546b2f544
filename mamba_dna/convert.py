"""Import Mamba-1 checkpoints from state-spaces/mamba (mamba_ssm) and HuggingFace transformers.

    mamba_ssm directory:    config.json {d_model, n_layer, vocab_size, ssm_cfg, rms_norm,
                            residual_in_fp32, pad_vocab_size_multiple, tie_embeddings}
                            + pytorch_model.bin (names already ours)
    transformers directory: config.json {model_type: "mamba", hidden_size, state_size,
                            num_hidden_layers, conv_kernel, expand, time_step_rank, ...}
                            + model.safetensors | pytorch_model.bin (possibly sharded with an
                            *.index.json); `backbone.embeddings` -> `backbone.embedding`

Pickled checkpoints are read with `torch.load(..., weights_only=True)` only. The result is a
regular model directory (`MambaLM.save_pretrained`). Only Mamba-1 blocks are supported; a
checkpoint with attention layers, MLPs or Mamba-2 mixers is refused with the reason.

    Caduceus / PlantCaduceus directory (config.json model_type "caduceus", or an
    hf:ORG/NAME[@REV] id): read by `mamba_dna.load.load_caduceus_dir` (tied tensors re-tied,
    the vocabulary from the tokenizer files, no *.py ever read) and saved as a mamba-dna
    CaduceusLM directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import read_json_object
from mamba_dna.model import DNA_TOKENIZER, MambaConfig, MambaLM
from mamba_dna.tokenizer import VOCAB_SIZE, TokenizerSpec

FORMATS = ("auto", "mamba_ssm", "transformers", "caduceus")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _read_config(src: Path) -> dict:
    path = src / "config.json"
    if not src.is_dir():
        raise InputError(f"{src}: not a directory (expected a checkpoint directory with config.json)")
    return read_json_object(path, "a checkpoint directory holds config.json")


def detect_format(src: str | os.PathLike) -> str:
    """'mamba_ssm', 'transformers' or 'caduceus', from config.json's keys."""
    src = Path(src)
    d = _read_config(src)
    if d.get("architecture") in ("MambaLM", "CaduceusLM"):
        raise InputError(f"{src}: already a mamba-dna model directory (every --model accepts it as it is)")
    if d.get("model_type") == "caduceus":
        return "caduceus"
    if d.get("model_type") == "mamba" or "hidden_size" in d or "MambaForCausalLM" in d.get("architectures", []):
        return "transformers"
    if "d_model" in d and "n_layer" in d:
        return "mamba_ssm"
    if d.get("model_type") in ("mamba2", "falcon_mamba", "jamba", "zamba"):
        raise ConfigError(f"{src}/config.json: model_type {d['model_type']!r} is not a Mamba-1 model")
    raise InputError(
        f"{src}/config.json: neither a mamba_ssm config (d_model, n_layer) nor a transformers "
        "Mamba config (model_type 'mamba', hidden_size)",
    )


# --------------------------------------------------------------------------- configs


def config_from_mamba_ssm(d: dict, where: str = "config.json") -> MambaConfig:
    """mamba_ssm's MambaConfig (+ ssm_cfg) -> ours; vocab padded as MambaLMHeadModel does."""
    ssm = dict(d.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer != "Mamba1":
        raise ConfigError(f"{where}: ssm_cfg.layer={layer!r}; only Mamba1 blocks are supported")
    if d.get("d_intermediate", 0):
        raise ConfigError(f"{where}: d_intermediate={d['d_intermediate']} (MLP blocks) is not supported")
    if d.get("attn_layer_idx"):
        raise ConfigError(f"{where}: attn_layer_idx={d['attn_layer_idx']} (attention layers) is not supported")
    pad = int(d.get("pad_vocab_size_multiple", 8))
    vocab = int(d["vocab_size"])
    if vocab % pad:
        vocab += pad - vocab % pad
    fields = dict(
        d_model=int(d["d_model"]),
        n_layer=int(d["n_layer"]),
        vocab_size=vocab,
        rms_norm=bool(d.get("rms_norm", True)),
        residual_in_fp32=bool(d.get("residual_in_fp32", True)),
        tie_embeddings=bool(d.get("tie_embeddings", True)),
        norm_eps=float(d.get("norm_epsilon", 1e-5)),
    )
    known = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
             "dt_init_floor", "conv_bias", "bias"}
    ignored = {"use_fast_path", "layer_idx", "device", "dtype"}
    unknown = sorted(set(ssm) - known - ignored)
    if unknown:
        raise ConfigError(f"{where}: ssm_cfg field(s) {', '.join(unknown)} are not supported")
    fields.update({k: v for k, v in ssm.items() if k in known})
    return MambaConfig(**fields, tokenizer="external")


def config_from_transformers(d: dict, where: str = "config.json") -> MambaConfig:
    """transformers' MambaConfig -> ours."""
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act={act!r}; only 'silu' is supported")
    rank = d.get("time_step_rank", "auto")
    return MambaConfig(
        d_model=int(d["hidden_size"]),
        n_layer=int(d["num_hidden_layers"]),
        vocab_size=int(d["vocab_size"]),
        d_state=int(d.get("state_size", 16)),
        d_conv=int(d.get("conv_kernel", 4)),
        expand=int(d.get("expand", 2)),
        dt_rank=rank if rank == "auto" else int(rank),
        dt_min=float(d.get("time_step_min", 0.001)),
        dt_max=float(d.get("time_step_max", 0.1)),
        dt_init=str(d.get("time_step_init_scheme", "random")),
        dt_scale=float(d.get("time_step_scale", 1.0)),
        dt_init_floor=float(d.get("time_step_floor", 1e-4)),
        conv_bias=bool(d.get("use_conv_bias", True)),
        bias=bool(d.get("use_bias", False)),
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
        residual_in_fp32=bool(d.get("residual_in_fp32", True)),
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        tokenizer="external",
    )


# --------------------------------------------------------------------------- weights


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise InputError(f"{path}: cannot read safetensors ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; the file is the user's
        raise InputError(
            f"{path}: cannot load with torch.load(weights_only=True) ({type(e).__name__}: {e})",
            hint="only plain tensor state dicts are accepted (no pickled code)",
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: expected a dict of tensors (a state dict)")
    return sd


def load_checkpoint_weights(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint directory (single file or sharded with an index)."""
    src = Path(src)
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (src / single).exists():
            return _load_file(src / single)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        ip = src / index
        if ip.exists():
            try:
                weight_map = json.loads(ip.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(f"{ip}: not a shard index with a weight_map ({e})") from None
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(_load_file(src / shard))
            return sd
    raise InputError(
        f"{src}: no weights found (expected model.safetensors, pytorch_model.bin or a sharded "
        "*.index.json)"
    )


def rename_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> mamba_ssm names (ours)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.") and not k.startswith("model.backbone"):
            k = "backbone." + k[len("model."):]
        k = k.replace("backbone.embeddings.", "backbone.embedding.")
        out[k] = v
    return out


def rename_mamba_ssm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mamba_ssm names are ours; drop buffers some versions save (none are needed)."""
    return {k: v for k, v in sd.items() if not k.endswith("._extra_state")}


# --------------------------------------------------------------------------- entry point


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    fmt: str = "auto",
    tokenizer: str = "auto",
    dtype: str = "float32",
) -> torch.nn.Module:
    """Load a mamba_ssm / transformers checkpoint as a MambaLM, or a Caduceus checkpoint as a
    CaduceusLM; save it to `out` if given.

    tokenizer: "dna" (the ids are this package's nucleotide ids), "external" (any other
    vocabulary; no tokenizer.json is written) or "auto" ("dna" only when the source holds our
    tokenizer.json).
    """
    if str(src).startswith("hf:"):
        from mamba_dna.load import model_dir

        src = model_dir(src)
    src = Path(src)
    if fmt not in FORMATS:
        raise ConfigError(f"--from {fmt!r}: expected one of {', '.join(FORMATS)}")
    if tokenizer not in ("auto", "dna", "external"):
        raise ConfigError(f"--tokenizer {tokenizer!r}: expected auto, dna or external")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if fmt == "auto":
        fmt = detect_format(src)
    if fmt == "caduceus":
        from mamba_dna.load import load_caduceus_dir

        model = load_caduceus_dir(src, map_location="cpu").to(DTYPES[dtype])
        if out is not None:
            model.save_pretrained(out)
        return model
    raw = _read_config(src)
    where = str(src / "config.json")
    try:
        if fmt == "mamba_ssm":
            cfg = config_from_mamba_ssm(raw, where)
        else:
            cfg = config_from_transformers(raw, where)
    except KeyError as e:
        raise InputError(f"{where}: missing field {e} for a {fmt} Mamba config") from None
    if tokenizer == "auto":
        tok = src / "tokenizer.json"
        tokenizer = "external"
        if tok.exists():
            try:
                if json.loads(tok.read_text()).get("kind") == TokenizerSpec.kind:
                    tokenizer = "dna"
            except (json.JSONDecodeError, AttributeError):
                pass
    if tokenizer == "dna":
        if cfg.vocab_size < VOCAB_SIZE:
            raise ConfigError(f"{where}: vocab_size {cfg.vocab_size} < {VOCAB_SIZE}: not the DNA vocabulary")
        cfg.tokenizer = DNA_TOKENIZER
    sd = load_checkpoint_weights(src)
    sd = rename_transformers(sd) if fmt == "transformers" else rename_mamba_ssm(sd)
    model = MambaLM(cfg)
    model.load_weights(sd, where=f"{src} ({fmt} checkpoint)")
    model = model.to(DTYPES[dtype])
    if out is not None:
        model.save_pretrained(out)
    return model


__all__ = [
    "config_from_mamba_ssm",
    "config_from_transformers",
    "convert",
    "detect_format",
    "load_checkpoint_weights",
]
