"""Single-nucleotide DNA tokenizer: fixed ids, a 256-entry byte lookup table, reverse
complement in token space and the soft-mask flag.

Vocabulary (fixed; stored with every model as tokenizer.json):

    id  token   meaning
    0   <pad>   padding (never a training target)
    1   <bos>   start of sequence
    2   <eos>   end of sequence
    3   <mask>  masked position
    4   A
    5   C
    6   G
    7   T
    8   N       unknown base; IUPAC ambiguity codes R Y S W K M B D H V map here

Lowercase (soft-masked repeats) maps to the same token as uppercase; `softmask` is returned
as a separate boolean per position. U maps to T. Any other byte is invalid: an error naming
where it is, or (with `invalid="N"`) mapped to N and counted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import numpy as np

from mamba_dna.errors import InputError

PAD, BOS, EOS, MASK, A, C, G, T, N = range(9)
VOCAB = ["<pad>", "<bos>", "<eos>", "<mask>", "A", "C", "G", "T", "N"]
VOCAB_SIZE = len(VOCAB)
BASES = (A, C, G, T)  # ids of the four nucleotides, in ACGT order
INVALID = 255  # marker in the lookup table

# byte -> token id (INVALID for bytes that are not nucleotides)
LUT = np.full(256, INVALID, dtype=np.uint8)
for _ch, _id in {"A": A, "C": C, "G": G, "T": T, "U": T, "N": N}.items():
    LUT[ord(_ch)] = _id
    LUT[ord(_ch.lower())] = _id
for _ch in "RYSWKMBDHV":
    LUT[ord(_ch)] = N
    LUT[ord(_ch.lower())] = N

# byte -> 1 if lowercase (soft-masked)
SOFTMASK_LUT = np.zeros(256, dtype=bool)
SOFTMASK_LUT[ord("a") : ord("z") + 1] = True

# the same tables as bytes, for bytes.translate (a C loop; numpy fancy indexing with uint8
# indices first widens them to intp, ~10x slower)
# One table for both: low 7 bits = token id (127 = invalid), high bit = lowercase.
_BAD7 = 0x7F
_COMBINED = np.where(LUT == INVALID, _BAD7, LUT).astype(np.uint8) | (SOFTMASK_LUT.astype(np.uint8) << 7)
_COMBINED_TABLE = _COMBINED.tobytes()

# token id -> complement token id
COMPLEMENT = np.arange(VOCAB_SIZE, dtype=np.uint8)
COMPLEMENT[[A, C, G, T]] = [T, G, C, A]

# token id -> ASCII byte
DECODE = np.frombuffer(b"-^$?ACGTN", dtype=np.uint8)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a model directory stores as tokenizer.json."""

    kind: str = "mamba-dna-nucleotide"
    version: int = 1
    vocab: tuple[str, ...] = tuple(VOCAB)
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS
    mask_id: int = MASK
    n_id: int = N
    lowercase: str = "same token, softmask flag"
    iupac: str = "RYSWKMBDHV -> N, U -> T"

    def to_json(self) -> str:
        d = asdict(self)
        d["vocab"] = list(self.vocab)
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def check_json(cls, text: str, where: str = "tokenizer.json") -> TokenizerSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: line {e.lineno}: not valid JSON ({e.msg}); expected "
                             "the tokenizer.json that `save_pretrained` writes") from None
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a JSON object")
        if d.get("kind") != cls.kind or list(d.get("vocab", [])) != VOCAB:
            raise InputError(
                f"{where}: tokenizer {d.get('kind')!r} with vocab {d.get('vocab')} is not "
                f"this version's nucleotide tokenizer {VOCAB}"
            )
        return cls()


def encode_bytes(
    seq: bytes | bytearray | memoryview | np.ndarray,
    *,
    invalid: str = "error",
    where: str = "<sequence>",
    with_softmask: bool = False,
    offset: int = 0,
):
    """Bytes -> token ids (uint8). Vectorised: one table lookup, no per-base Python.

    invalid="error" raises InputError naming `where` and the 0-based offset of the first bad
    byte (plus `offset`, the position of seq[0] in its record); invalid="N" maps bad bytes to
    N. Returns ids, or (ids, softmask, n_invalid) when `with_softmask`.
    """
    if invalid not in ("error", "N"):
        raise ValueError(f"invalid must be 'error' or 'N', not {invalid!r}")
    if isinstance(seq, np.ndarray):
        raw = np.ascontiguousarray(seq, dtype=np.uint8).tobytes()
    else:
        raw = seq if isinstance(seq, bytes) else bytes(seq)
    code_bytes = raw.translate(_COMBINED_TABLE)  # one C pass over the bytes
    code = np.frombuffer(code_bytes, dtype=np.uint8)  # (L,) id | lowercase << 7
    ids = code & 0x7F  # (L,) uint8, a new writable array
    n_bad = 0
    if b"\x7f" in code_bytes or b"\xff" in code_bytes:  # memchr: cheap when all is valid
        bad = ids == _BAD7
        n_bad = int(np.count_nonzero(bad))
        if invalid == "error":
            off = int(np.argmax(bad))
            ch = raw[off : off + 1]
            off += offset
            raise InputError(
                f"{where}: invalid character {ch!r} at offset {off} "
                f"({n_bad} invalid in total); expected A/C/G/T/N, IUPAC codes or lowercase",
                hint="pass --invalid N to map them to N",
            )
        ids[bad] = N
    if with_softmask:
        softmask = (code >> 7).view(bool)  # (L,) bool
        return ids, softmask, n_bad
    return ids


def encode(seq: str, **kw):
    """A Python string -> token ids (see `encode_bytes`)."""
    return encode_bytes(seq.encode("ascii", errors="replace"), **kw)


def decode(ids) -> str:
    """Token ids -> string (specials as - ^ $ ?)."""
    arr = np.asarray(ids, dtype=np.int64)
    return DECODE[arr].tobytes().decode("ascii")


def reverse_complement(ids):
    """Reverse complement in token space along the last axis; numpy or torch input."""
    torch = sys.modules.get("torch")  # a tensor implies torch is imported: never import it here
    if torch is not None and isinstance(ids, torch.Tensor):
        comp = torch.as_tensor(COMPLEMENT, device=ids.device, dtype=ids.dtype)
        return comp[ids.long()].flip(-1)
    arr = np.asarray(ids)
    return COMPLEMENT[arr][..., ::-1].astype(arr.dtype, copy=False)
