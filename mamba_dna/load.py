"""One loader for every model a pipeline accepts: `load_model(spec)`.

    a mamba-dna model directory (config.json architecture MambaLM)      -> MambaLM
    a mamba-dna bidirectional directory (architecture CaduceusLM)       -> CaduceusLM
    a Caduceus / PlantCaduceus hub directory (config.json model_type caduceus) -> CaduceusLM
    hf:ORG/NAME[@REVISION]  (fetched / found in the Hugging Face cache)  -> any of the above

A hub directory is read as it is published: config.json, model.safetensors or
pytorch_model.bin (torch.load with weights_only=True), the tokenizer files. Its `*.py`
modeling files are never imported nor read. Each group of tied tensors is stored once in
the hub files under whichever name survived the save; the loader re-ties from any one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mamba_dna.errors import ConfigError, InputError

CADUCEUS_MODEL_TYPE = "caduceus"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"

# hub config.json fields we read (anything else is transformers' bookkeeping, ignored)
_SSM_FIELDS = {
    "d_state": int, "d_conv": int, "expand": int, "dt_min": float, "dt_max": float,
    "dt_init": str, "dt_scale": float, "dt_init_floor": float, "conv_bias": bool, "bias": bool,
}


def _field(d: dict, name: str, kind, where: str, default=None, required: bool = False):
    if name not in d or d[name] is None:
        if required:
            raise InputError(f"{where}: field {name!r} is missing")
        return default
    v = d[name]
    ok = (isinstance(v, bool) if kind is bool else
          isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
          isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
    if not ok:
        raise InputError(f"{where}: field {name!r} = {v!r}: expected {kind.__name__}")
    return float(v) if kind is float else v


def caduceus_config_from_hub(d: dict, where: str, external_ids: list[int] | None = None):
    """A Caduceus hub config.json (as a dict) -> ModelConfig; one-line InputErrors naming the field."""
    from mamba_dna.caduceus import STRATEGIES, ModelConfig

    if d.get("model_type") != CADUCEUS_MODEL_TYPE:
        raise InputError(f"{where}: field 'model_type' = {d.get('model_type')!r}: expected 'caduceus'")
    d_model = _field(d, "d_model", int, where, required=True)
    n_layer = _field(d, "n_layer", int, where, required=True)
    vocab = _field(d, "vocab_size", int, where, required=True)
    pad = _field(d, "pad_vocab_size_multiple", int, where, 1)
    if pad < 1:
        raise InputError(f"{where}: field 'pad_vocab_size_multiple' = {pad}: expected a positive integer")
    if vocab % pad:
        vocab += pad - vocab % pad  # the real code pads the vocabulary the same way
    ssm = _field(d, "ssm_cfg", dict, where, {})
    ssm_kw = {}
    for k, kind in _SSM_FIELDS.items():
        v = _field(ssm, k, kind, f"{where}: ssm_cfg", None)
        if v is not None:
            ssm_kw[k] = v
    dt_rank = ssm.get("dt_rank", "auto")
    if dt_rank != "auto" and (not isinstance(dt_rank, int) or isinstance(dt_rank, bool)):
        raise InputError(f"{where}: field 'ssm_cfg.dt_rank' = {dt_rank!r}: expected 'auto' or an integer")
    for k in ("layer", "d_ssm", "headdim", "ngroups"):
        if k in ssm:
            raise InputError(f"{where}: field 'ssm_cfg.{k}': Mamba-2 blocks are not supported (Mamba-1 only)")
    bidir = _field(d, "bidirectional", bool, where, True)
    strategy = d.get("bidirectional_strategy", "add")
    if strategy is None:
        strategy = "add"
    if strategy not in STRATEGIES:
        raise InputError(f"{where}: field 'bidirectional_strategy' = {strategy!r}: expected one of "
                         f"{', '.join(STRATEGIES)}")
    rcps = _field(d, "rcps", bool, where, False)
    cmap = d.get("complement_map")
    complement = None
    if cmap is not None:
        if not isinstance(cmap, dict):
            raise InputError(f"{where}: field 'complement_map': expected an object token id -> id")
        try:
            pairs = {int(k): v for k, v in cmap.items()}
        except ValueError:
            raise InputError(f"{where}: field 'complement_map': keys must be token ids") from None
        if any(not isinstance(v, int) or isinstance(v, bool) for v in pairs.values()):
            raise InputError(f"{where}: field 'complement_map': values must be token ids")
        complement = [pairs.get(i, i) for i in range(vocab)]  # padded ids complement to themselves
        bad = [i for i, v in enumerate(complement) if not 0 <= v < vocab]
        if bad or any(k >= vocab or k < 0 for k in pairs):
            raise InputError(f"{where}: field 'complement_map': ids outside [0, {vocab})")
    if rcps and complement is None:
        raise InputError(f"{where}: field 'complement_map' is missing (rcps: true needs it)")
    if not bidir:
        raise InputError(f"{where}: field 'bidirectional' = false: a causal Caduceus checkpoint is not "
                         "supported (convert it as a Mamba model)")
    tie = d.get("tie_word_embeddings", True)
    try:
        return ModelConfig(
            d_model=d_model, n_layer=n_layer, vocab_size=vocab, dt_rank=dt_rank, **ssm_kw,
            rms_norm=_field(d, "rms_norm", bool, where, True),
            norm_eps=_field(d, "norm_epsilon", float, where, 1e-5),
            residual_in_fp32=_field(d, "residual_in_fp32", bool, where, True),
            fused_add_norm=_field(d, "fused_add_norm", bool, where, True),
            tie_embeddings=bool(tie), bidirectional=True, bidirectional_strategy=strategy,
            bidirectional_weight_tie=_field(d, "bidirectional_weight_tie", bool, where, True),
            rcps=rcps, complement_map=complement, tokenizer="external",
            external_ids=external_ids if external_ids is not None else list(range(9)),
        )
    except ConfigError as e:
        raise InputError(f"{where}: {e.one_line() if hasattr(e, 'one_line') else e}") from None


def _hub_name(name: str) -> str | None:
    """A Caduceus hub tensor name -> ours; None for buffers we rebuild (complement maps)."""
    if name.endswith("complement_map"):
        return None
    n = name
    if n.startswith("caduceus.backbone."):
        n = n[len("caduceus.backbone."):]
    n = n.replace("embeddings.word_embeddings.embedding.", "embedding.")
    n = n.replace("embeddings.word_embeddings.", "embedding.")
    n = n.replace(".mixer.submodule.", ".mixer.")
    n = n.replace(".mixer.mamba_fwd.", ".mixer.fwd.").replace(".mixer.mamba_rev.", ".mixer.rev.")
    n = n.replace("lm_head.lm_head.", "lm_head.")
    return n


def _tied_groups(cfg) -> list[list[str]]:
    groups = []
    if cfg.tie_embeddings:
        groups.append(["embedding.weight", "lm_head.weight"])
    if cfg.bidirectional_weight_tie:
        for i in range(cfg.n_layer):
            for p in ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"):
                groups.append([f"layers.{i}.mixer.fwd.{p}", f"layers.{i}.mixer.rev.{p}"])
    return groups


def read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """model.safetensors, else pytorch_model.bin (weights_only) -> (tensors, file name)."""
    st, bn = directory / SAFETENSORS_NAME, directory / BIN_NAME
    if st.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), str(st)
        except (SafetensorError, OSError) as e:
            raise InputError(f"{st}: cannot read safetensors ({e})") from None
    if bn.exists():
        try:
            obj = torch.load(str(bn), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle refused by weights_only, or a corrupt file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"{bn}: not a plain tensor state dict ({msg})") from None
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
            raise InputError(f"{bn}: not a plain tensor state dict (expected a mapping name -> tensor)")
        return dict(obj), str(bn)
    raise InputError(f"{directory}: no weights ({SAFETENSORS_NAME} or {BIN_NAME})")


def load_caduceus_dir(directory: str | os.PathLike, map_location="cpu",
                      external_ids: list[int] | None = None):
    """A Caduceus hub directory -> CaduceusLM (eval mode). `external_ids` None: read the
    model's vocabulary from its tokenizer files (mamba_dna.vocab_map)."""
    from mamba_dna.caduceus import CaduceusLM, weight_problems
    from mamba_dna.fsutil import read_json_object

    d = Path(directory)
    cpath = d / "config.json"
    raw = read_json_object(cpath, "a Caduceus directory holds config.json")
    if external_ids is None:
        from mamba_dna.vocab_map import read_external_vocab

        external_ids = [int(v) for v in read_external_vocab(d).ids_for_ours]
    cfg = caduceus_config_from_hub(raw, str(cpath), external_ids)
    sd_hub, wfile = read_state_dict(d)
    model = CaduceusLM(cfg)
    own = model.state_dict()
    sd: dict[str, torch.Tensor] = {}
    unexpected = []
    for k, v in sd_hub.items():
        ours = _hub_name(k)
        if ours is None:
            continue
        if ours in own:
            sd[ours] = v
        else:
            unexpected.append(k)
    for group in _tied_groups(cfg):
        present = [g for g in group if g in sd]
        if not present:
            continue
        src = sd[present[0]]
        for g in present[1:]:
            if sd[g].shape == src.shape and not torch.equal(sd[g], src):
                raise InputError(f"{wfile}: {g} differs from {present[0]} but the config ties them")
        for g in group:
            sd[g] = src
    tied_away = set(model._tied_names())
    missing = sorted(k for k in own if k not in sd and k not in tied_away)
    misshaped = sorted(f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
                       for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape))
    problems = weight_problems(missing, sorted(unexpected), misshaped)
    if problems:
        raise InputError(f"{wfile}: weights do not match {cpath}: {problems}")
    model.load_weights({k: v for k, v in sd.items() if k not in tied_away}, where=wfile)
    if map_location is not None:
        model = model.to(map_location)
    return model.eval()


def model_dir(spec: str | os.PathLike) -> Path:
    """The local directory of a model spec (an hf: id is fetched or found in the cache)."""
    s = str(spec)
    if s.startswith("hf:"):
        from mamba_dna.hub import resolve_model_dir

        d = Path(resolve_model_dir(s))
    else:
        d = Path(spec)
    if not d.is_dir():
        raise InputError(f"{d}: not a model directory (expected config.json and weights)",
                         hint="point --model at a directory written by `mamba-dna pretrain`, "
                         "a Caduceus checkpoint directory or hf:ORG/NAME")
    return d


def checkpoint_sha256(spec: str | os.PathLike) -> str:
    """sha256 of the weights file of `spec` (recorded in outputs for provenance)."""
    from mamba_dna.fsutil import sha256_file

    d = model_dir(spec)
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (d / name).is_file():
            return sha256_file(d / name)
    raise InputError(f"{d}: no {SAFETENSORS_NAME} or {BIN_NAME}")


def load_model(spec: str | os.PathLike, map_location="cpu") -> torch.nn.Module:
    """A model directory or hf:ORG/NAME[@REV] -> MambaLM or CaduceusLM, in eval mode."""
    from mamba_dna.fsutil import read_json_object

    d = model_dir(spec)
    raw = read_json_object(d / "config.json", "a model directory holds config.json")
    if raw.get("model_type") == CADUCEUS_MODEL_TYPE:
        return load_caduceus_dir(d, map_location)
    if raw.get("architecture") == "CaduceusLM":
        from mamba_dna.caduceus import CaduceusLM

        return CaduceusLM.from_pretrained(d, map_location).eval()
    if "model_type" in raw and "architecture" not in raw:
        raise InputError(f"{d / 'config.json'}: field 'model_type' = {raw['model_type']!r}: not a model "
                         "mamba-dna reads (supported: mamba-dna directories, model_type caduceus)",
                         hint="convert a Mamba checkpoint with `mamba-dna convert`")
    from mamba_dna.model import MambaLM

    return MambaLM.from_pretrained(d, map_location).eval()


__all__ = ["caduceus_config_from_hub", "checkpoint_sha256", "load_caduceus_dir", "load_model", "model_dir",
           "read_state_dict"]
