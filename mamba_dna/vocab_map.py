"""The vocabulary of an external checkpoint (Caduceus, PlantCaduceus, ...) read from its
tokenizer files, and the map from mamba-dna token ids to that checkpoint's ids.

Models take mamba-dna ids (`mamba_dna.tokenizer`: PAD0 BOS1 EOS2 MASK3 A4 C5 G6 T7 N8) at the
API edge; a checkpoint trained with another vocabulary converts at its own edge with
`ExternalVocab.map_ids` (one gather) and turns its logits back with `ExternalVocab.take_logits`.

Where the ids come from, in this order (only JSON / text is read, never a `*.py`):

1. `tokenizer.json` (a `tokenizers` fast tokenizer, e.g. PlantCaduceus): `model.vocab`
   (a token -> id dict, or Unigram's [token, score] list) plus `added_tokens`; a `Lowercase`
   normalizer means the bases are looked up in lower case.
2. `tokenizer_config.json` with a `characters` list (`CaduceusTokenizer`, HyenaDNA's
   `CharacterTokenizer`): these build their vocabulary in code, not in a file. The code gives the
   seven special tokens fixed ids, [CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6, then
   numbers the characters on from 7 in the order the config lists them (A C G T N -> 7..11); the
   model's embedding is padded further (config.json `vocab_size`, 16 for Caduceus). Where the
   file also carries transformers' `added_tokens_decoder` (id -> special token) and it
   contradicts that layout, its ids are used instead and the characters follow the largest of
   them. Input is upper-cased.
3. `vocab.json` (token -> id) or `vocab.txt` (one token a line, id = line number).

Special-token names come from `tokenizer_config.json` / `special_tokens_map.json` (`mask_token`,
`pad_token`, `unk_token`, `bos_token`, `eos_token`), else the usual spellings ([MASK], <mask>, ...).
When config.json carries a `complement_map` (Caduceus RC-equivariance), the base ids derived here
must pair A<->T and C<->G in it: a layout this module gets wrong cannot load silently.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_dna import tokenizer as tk
from mamba_dna.errors import InputError
from mamba_dna.tokenizer import VOCAB, VOCAB_SIZE

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
VOCAB_JSON = "vocab.json"
VOCAB_TXT = "vocab.txt"
MODEL_CONFIG = "config.json"

# CaduceusTokenizer / CharacterTokenizer: special tokens with the ids their code assigns
CHARACTER_TOKENIZER_SPECIALS = {
    "[CLS]": 0,
    "[SEP]": 1,
    "[BOS]": 2,
    "[MASK]": 3,
    "[PAD]": 4,
    "[RESERVED]": 5,
    "[UNK]": 6,
}
# the special-token roles those classes declare by default (eos is [SEP] there)
CHARACTER_TOKENIZER_ROLES = {
    "mask_token": "[MASK]",
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "bos_token": "[BOS]",
    "eos_token": "[SEP]",
}
CHARACTER_TOKENIZER_CLASSES = ("CaduceusTokenizer", "CharacterTokenizer")

# usual spellings, tried when no file names the role
_DEFAULT_NAMES = {
    "mask_token": ("[MASK]", "<mask>"),
    "pad_token": ("[PAD]", "<pad>"),
    "unk_token": ("[UNK]", "<unk>"),
    "bos_token": ("[BOS]", "<bos>"),
    "eos_token": ("[EOS]", "<eos>"),
}

_BASES = "ACGT"


@dataclass(frozen=True, eq=False)  # eq=False: an ndarray field has no truth value
class ExternalVocab:
    """A checkpoint's vocabulary and the map from mamba-dna ids to it.

    size: rows of the checkpoint's embedding / logits: the `vocab_size` given or config.json's,
      which may pad beyond the tokens (Caduceus: 12 tokens, 16 rows), else max id + 1.
    tokens: every token the tokenizer files name -> its id.
    ids_for_ours: (9,) int64, for each mamba-dna id the checkpoint's id, -1 where it has none.
    base_ids: the checkpoint's ids of A, C, G, T, in that order.
    lowercase: the checkpoint's base tokens are lower case (PlantCaduceus: a c g t).
    source: the file the vocabulary was read from (for error messages).
    """

    size: int
    tokens: dict[str, int]
    ids_for_ours: np.ndarray
    base_ids: tuple[int, int, int, int]
    mask_id: int
    pad_id: int
    lowercase: bool
    unk_id: int = -1
    source: str = ""

    @property
    def missing(self) -> tuple[str, ...]:
        """mamba-dna tokens the checkpoint has no id for (e.g. <bos>, <eos> for PlantCaduceus)."""
        return tuple(VOCAB[i] for i in range(VOCAB_SIZE) if self.ids_for_ours[i] < 0)

    def map_ids(self, ours):
        """mamba-dna ids (torch tensor or numpy array, any shape) -> the checkpoint's ids.

        One gather through `ids_for_ours`; returns int64 (torch.long on the input's device, or a
        numpy int64 array). InputError if an id is not a mamba-dna id or has no counterpart here
        (e.g. BOS for PlantCaduceus).
        """
        torch = sys.modules.get("torch")  # a tensor implies torch is imported
        if torch is not None and isinstance(ours, torch.Tensor):
            if ours.dtype.is_floating_point or ours.dtype == torch.bool:
                raise InputError(f"input_ids: expected integer token ids, got {ours.dtype}")
            if ours.numel() == 0:
                return ours.to(torch.long)
            lo, hi = int(ours.min()), int(ours.max())
            self._check_range(lo, hi)
            table = torch.as_tensor(self.ids_for_ours, device=ours.device)  # (9,) int64
            mapped = table[ours.long()]  # same shape as ours
            if self.missing and bool((mapped < 0).any()):
                self._raise_missing(torch.unique(ours[mapped < 0]).tolist())
            return mapped
        arr = np.asarray(ours)
        if arr.dtype.kind not in "iu":
            raise InputError(f"input_ids: expected integer token ids, got {arr.dtype}")
        if arr.size == 0:
            return arr.astype(np.int64)
        self._check_range(int(arr.min()), int(arr.max()))
        mapped = self.ids_for_ours[arr]  # same shape as arr, int64
        if self.missing and (mapped < 0).any():
            self._raise_missing(np.unique(arr[mapped < 0]).tolist())
        return mapped

    def take_logits(self, logits, fill: float = float("-inf")):
        """Checkpoint logits (..., size) -> logits over mamba-dna's vocabulary (..., 9).

        Tokens the checkpoint lacks get `fill` (-inf: zero probability after a softmax).
        """
        torch = sys.modules.get("torch")
        if logits.shape[-1] != self.size:
            raise InputError(f"logits: last dim {logits.shape[-1]}, the vocabulary has {self.size}")
        idx = np.where(self.ids_for_ours < 0, 0, self.ids_for_ours)
        if torch is not None and isinstance(logits, torch.Tensor):
            out = logits[..., torch.as_tensor(idx, device=logits.device)]  # (..., 9)
            if self.missing:
                have = torch.as_tensor(self.ids_for_ours >= 0, device=logits.device)
                out = out.masked_fill(~have, fill)
            return out
        out = np.asarray(logits)[..., idx]
        if self.missing:
            out = np.where(self.ids_for_ours >= 0, out, fill)
        return out

    def _check_range(self, lo: int, hi: int) -> None:
        if lo < 0 or hi >= VOCAB_SIZE:
            bad = lo if lo < 0 else hi
            raise InputError(
                f"input_ids: {bad} is not a mamba-dna token id (expected 0..{VOCAB_SIZE - 1})"
            )

    def _raise_missing(self, ids: list[int]) -> None:
        names = ", ".join(VOCAB[i] for i in ids)
        raise InputError(
            f"{self.source}: the checkpoint's vocabulary has no token for mamba-dna's {names}; "
            f"its tokens are {_token_list(self.tokens)}"
        )


def read_external_vocab(
    directory: str | os.PathLike,
    vocab_size: int | None = None,
    complement_map: Mapping | None = None,
) -> ExternalVocab:
    """Read a checkpoint directory's tokenizer files into an `ExternalVocab`.

    vocab_size: the model's embedding rows; defaults to config.json's `vocab_size` (when the
      directory has one), else max id + 1; must cover every id.
    complement_map: checkpoint id -> complement id; defaults to config.json's, when present.
    Raises InputError (one line naming the file and field) for a vocabulary the files do not
    describe: no A/C/G/T, no mask token, malformed JSON, a multi-nucleotide (k-mer/BPE) vocabulary.
    """
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: no such model directory")
    source, tokens, lowercase, roles = _vocab_tokens(d)
    _check_single_nucleotide(tokens, source)
    lowercase = lowercase or _bases_are_lowercase(tokens)
    base_ids = _base_ids(tokens, lowercase, source)
    ids, mask_id, pad_id, unk_id = _ours_to_theirs(tokens, roles, base_ids, lowercase, source)

    model_cfg = _read_json_object(d / MODEL_CONFIG) if (d / MODEL_CONFIG).is_file() else {}
    n_tokens = max(tokens.values()) + 1
    if vocab_size is None:
        vocab_size = model_cfg.get("vocab_size", n_tokens)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < n_tokens:
        raise InputError(
            f"{d / MODEL_CONFIG}: vocab_size {vocab_size!r} does not cover the tokenizer's "
            f"{n_tokens} ids ({source.name})"
        )
    if complement_map is None:
        complement_map = model_cfg.get("complement_map")
    if complement_map is not None:
        _check_complement(complement_map, base_ids, d / MODEL_CONFIG, source)

    return ExternalVocab(
        size=vocab_size,
        tokens=tokens,
        ids_for_ours=ids,
        base_ids=base_ids,
        mask_id=mask_id,
        pad_id=pad_id,
        lowercase=lowercase,
        unk_id=unk_id,
        source=str(source),
    )


def _vocab_tokens(d: Path) -> tuple[Path, dict[str, int], bool, dict[str, str]]:
    """The file the vocabulary comes from, its tokens (name -> id), whether it is lower-case,
    and the special-token roles the files declare (role -> token name)."""
    tcfg_path = d / TOKENIZER_CONFIG
    tcfg = _read_json_object(tcfg_path) if tcfg_path.is_file() else {}
    smap_path = d / SPECIAL_TOKENS_MAP
    smap = _read_json_object(smap_path) if smap_path.is_file() else {}
    roles: dict[str, str] = {}
    lowercase = False
    if (d / TOKENIZER_JSON).is_file():
        source = d / TOKENIZER_JSON
        tokens, lowercase, unk_name = _read_tokenizer_json(source)
        if unk_name:
            roles["unk_token"] = unk_name
    elif "characters" in tcfg:
        source = tcfg_path
        tokens = _character_tokenizer_vocab(tcfg, tcfg_path)
        roles.update(CHARACTER_TOKENIZER_ROLES)  # CaduceusTokenizer upper-cases its input
    elif (d / VOCAB_JSON).is_file():
        source = d / VOCAB_JSON
        tokens = _token_dict(_read_json_object(source), source, "(top level)")
    elif (d / VOCAB_TXT).is_file():
        source = d / VOCAB_TXT
        tokens = _read_vocab_txt(source)
    else:
        raise InputError(
            f"{d}: no tokenizer files (expected {TOKENIZER_JSON}, or {TOKENIZER_CONFIG} with "
            f"'characters', or {VOCAB_JSON} / {VOCAB_TXT})"
        )
    # declared special tokens: tokenizer_config.json beats special_tokens_map.json beats defaults
    for where, cfg in ((smap_path, smap), (tcfg_path, tcfg)):
        for role in _DEFAULT_NAMES:
            if role in cfg and cfg[role] is not None:
                roles[role] = _token_name(cfg[role], where, role)
    return source, tokens, lowercase, roles


def _ours_to_theirs(tokens: dict[str, int], roles: dict[str, str], base_ids, lowercase: bool,
                    source: Path) -> tuple[np.ndarray, int, int, int]:
    """(ids (9,): the model's id for each of our tokens, -1 for none; mask, pad, unk ids)."""

    def role_id(role: str) -> int:
        name = roles.get(role)
        if name is not None:
            if name not in tokens:
                raise InputError(
                    f"{source}: {role} {name!r} is not in the vocabulary "
                    f"({_token_list(tokens)})"
                )
            return tokens[name]
        return next((tokens[n] for n in _DEFAULT_NAMES[role] if n in tokens), -1)

    mask_id = role_id("mask_token")
    if mask_id < 0:
        raise InputError(
            f"{source}: no mask token (mask_token in {TOKENIZER_CONFIG} / {SPECIAL_TOKENS_MAP}, "
            f"or a [MASK] / <mask> token); masked-LM scoring needs one"
        )
    pad_id, unk_id = role_id("pad_token"), role_id("unk_token")
    n_name = "n" if lowercase else "N"
    ids = np.full(VOCAB_SIZE, -1, dtype=np.int64)  # (9,) ours -> theirs
    ids[[tk.A, tk.C, tk.G, tk.T]] = base_ids
    ids[tk.N] = tokens.get(n_name, tokens.get(n_name.swapcase(), unk_id))
    ids[tk.MASK] = mask_id
    ids[tk.PAD] = pad_id
    ids[tk.BOS] = role_id("bos_token")
    ids[tk.EOS] = role_id("eos_token")
    return ids, mask_id, pad_id, unk_id


# --- readers ----------------------------------------------------------------------------------


def _read_json_object(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _token_name(value, path: Path, role: str) -> str:
    # transformers writes special tokens either as a string or as an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise InputError(f"{path}: {role} must be a token string or {{'content': ...}}, got {value!r}")
    return value


def _token_dict(obj, path: Path, field_name: str) -> dict[str, int]:
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path}: {field_name} must be a non-empty token -> id object")
    out: dict[str, int] = {}
    for tok, i in obj.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise InputError(f"{path}: {field_name}[{tok!r}] = {i!r} is not a token id (int >= 0)")
        out[tok] = i
    return out


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], bool, str | None]:
    """tokenizer.json -> (token -> id, lower-cases its input, the model's unk token or None)."""
    tj = _read_json_object(path)
    model = tj.get("model")
    if not isinstance(model, dict) or "vocab" not in model:
        raise InputError(f"{path}: field 'model.vocab' missing (not a tokenizers tokenizer.json)")
    vocab = model["vocab"]
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        try:
            tokens = {str(entry[0]): i for i, entry in enumerate(vocab)}
        except (TypeError, IndexError, KeyError):
            raise InputError(f"{path}: model.vocab is a list but not of [token, score] pairs") from None
    else:
        tokens = _token_dict(vocab, path, "model.vocab")
    if model.get("merges"):
        raise InputError(
            f"{path}: model.merges is not empty: a BPE (multi-nucleotide) vocabulary, not "
            f"single-nucleotide"
        )
    added = tj.get("added_tokens") or []
    if not isinstance(added, list):
        raise InputError(f"{path}: added_tokens must be a list")
    for k, entry in enumerate(added):
        if not isinstance(entry, dict) or "content" not in entry or "id" not in entry:
            raise InputError(f"{path}: added_tokens[{k}] needs 'id' and 'content'")
        tokens.update(_token_dict({entry["content"]: entry["id"]}, path, f"added_tokens[{k}]"))
    unk = model.get("unk_token")
    return tokens, _normalizer_lowercases(tj.get("normalizer")), unk if isinstance(unk, str) else None


def _normalizer_lowercases(norm) -> bool:
    if not isinstance(norm, dict):
        return False
    kind = norm.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(norm.get("lowercase", False))
    if kind == "Sequence":
        return any(_normalizer_lowercases(n) for n in norm.get("normalizers") or [])
    return False


def _character_tokenizer_vocab(tcfg: dict, path: Path) -> dict[str, int]:
    """tokenizer_config.json of a CaduceusTokenizer / CharacterTokenizer -> token -> id."""
    cls = tcfg.get("tokenizer_class")
    if cls is not None and cls not in CHARACTER_TOKENIZER_CLASSES:
        raise InputError(
            f"{path}: tokenizer_class {cls!r} with 'characters' but no {TOKENIZER_JSON}; "
            f"the character layout is known for {', '.join(CHARACTER_TOKENIZER_CLASSES)} only"
        )
    chars = tcfg["characters"]
    if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and c for c in chars):
        raise InputError(f"{path}: characters must be a non-empty list of strings, got {chars!r}")
    if len(set(chars)) != len(chars):
        raise InputError(f"{path}: characters has duplicates: {chars}")
    specials = dict(CHARACTER_TOKENIZER_SPECIALS)
    decoder = tcfg.get("added_tokens_decoder")
    if decoder is not None:  # transformers >= 4.34 records the special tokens' real ids here
        if not isinstance(decoder, dict) or not decoder:
            raise InputError(f"{path}: added_tokens_decoder must be a non-empty id -> token object")
        recorded: dict[str, int] = {}
        for key, entry in decoder.items():
            if not str(key).isdigit():
                raise InputError(f"{path}: added_tokens_decoder key {key!r} is not a token id")
            recorded[_token_name(entry, path, f"added_tokens_decoder[{key}]")] = int(key)
        # transformers records only the tokens it treats as special (not [RESERVED]): where
        # they agree with the fixed layout, keep the layout; where not, the file is the truth
        by_id = {i: t for t, i in specials.items()}
        agrees = all(specials.get(t, i) == i and by_id.get(i, t) == t for t, i in recorded.items())
        specials = specials | recorded if agrees else recorded
    first = max(specials.values()) + 1
    tokens = dict(specials)
    for k, ch in enumerate(chars):
        if ch in tokens:
            raise InputError(f"{path}: character {ch!r} is also a special token")
        tokens[ch] = first + k
    return tokens


def _read_vocab_txt(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    tokens: dict[str, int] = {}
    for i, line in enumerate(lines):
        tok = line.strip()
        if tok and tok not in tokens:
            tokens[tok] = i
    if not tokens:
        raise InputError(f"{path}: empty vocabulary")
    return tokens


def _token_list(tokens: Mapping[str, int], most: int = 16) -> str:
    """The first tokens by id, for messages (a 30k vocabulary stays one short line)."""
    names = sorted(tokens, key=tokens.get)
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


# --- checks -----------------------------------------------------------------------------------


def _check_single_nucleotide(tokens: Mapping[str, int], source: Path) -> None:
    kmers = [t for t in tokens if len(t) > 1 and set(t.upper()) <= set("ACGTN")]
    if kmers:
        raise InputError(
            f"{source}: vocabulary holds multi-nucleotide tokens ({', '.join(sorted(kmers)[:3])}, ...): "
            f"a k-mer/BPE tokenizer, not single-nucleotide"
        )


def _bases_are_lowercase(tokens: Mapping[str, int]) -> bool:
    return all(b.lower() in tokens for b in _BASES) and not any(b in tokens for b in _BASES)


def _base_ids(tokens: Mapping[str, int], lowercase: bool, source: Path) -> tuple[int, int, int, int]:
    out = []
    for b in _BASES:
        first = b.lower() if lowercase else b
        i = tokens.get(first, tokens.get(first.swapcase()))
        if i is None:
            raise InputError(
                f"{source}: vocabulary has no token for base {b} (tokens: "
                f"{_token_list(tokens)})"
            )
        out.append(i)
    if len(set(out)) != 4:
        raise InputError(f"{source}: bases A C G T share ids {out}")
    return tuple(out)


def _check_complement(cmap, base_ids, cfg_path: Path, source: Path) -> None:
    if not isinstance(cmap, Mapping):
        raise InputError(f"{cfg_path}: complement_map must be an id -> id object")
    a, c, g, t = base_ids
    for x, y in ((a, t), (t, a), (c, g), (g, c)):
        got = cmap.get(str(x), cmap.get(x))
        if got is None or int(got) != y:
            raise InputError(
                f"{cfg_path}: complement_map[{x}] = {got!r}, but {source.name} gives A C G T the "
                f"ids {list(base_ids)} (expected {x} -> {y}): the tokenizer files and the model "
                f"disagree"
            )
