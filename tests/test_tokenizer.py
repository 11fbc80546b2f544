"""Tokenizer: fixed ids, the 256-entry LUT, soft-mask, IUPAC/U handling, invalid bytes,
reverse complement (numpy and torch) against a per-character Python reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mamba_dna.errors import InputError
from mamba_dna.tokenizer import (
    INVALID,
    LUT,
    VOCAB,
    VOCAB_SIZE,
    TokenizerSpec,
    decode,
    encode,
    encode_bytes,
    reverse_complement,
)

# The contract, written out independently of the implementation.
REF_IDS = {"A": 4, "C": 5, "G": 6, "T": 7, "U": 7, "N": 8}
for _c in "RYSWKMBDHV":
    REF_IDS[_c] = 8
REF_COMP = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def ref_encode(s: str) -> tuple[list[int], list[bool]]:
    return [REF_IDS[c.upper()] for c in s], [c.islower() for c in s]


def test_fixed_vocabulary():
    assert VOCAB_SIZE == 9
    assert [VOCAB.index(t) for t in ("<pad>", "<bos>", "<eos>", "<mask>")] == [0, 1, 2, 3]
    assert [VOCAB.index(t) for t in "ACGTN"] == [4, 5, 6, 7, 8]


def test_lut_covers_every_byte_exactly_as_the_contract_says():
    assert LUT.shape == (256,) and LUT.dtype == np.uint8
    for b in range(256):
        c = chr(b)
        want = REF_IDS.get(c.upper()) if c.isascii() and c.isalpha() else None
        assert LUT[b] == (want if want is not None else INVALID), (b, c)


def test_encode_lowercase_iupac_and_u():
    s = "ACGTacgtNnRYswkmBDHVuU"
    ids, soft, n_bad = encode_bytes(s.encode(), with_softmask=True)
    want_ids, want_soft = ref_encode(s)
    assert ids.dtype == np.uint8 and ids.tolist() == want_ids
    assert soft.dtype == bool and soft.tolist() == want_soft
    assert n_bad == 0
    assert decode(encode("acgtu")) == "ACGTT"


@pytest.mark.parametrize("bad", ["-", "*", " ", "X", "\r", "1"])
def test_invalid_byte_names_where_and_offset(bad):
    s = "ACGT" * 3 + bad + "ACGT"
    with pytest.raises(InputError) as e:
        encode_bytes(s.encode(), where="genome.fa: record 'chr7'", offset=1000)
    msg = e.value.one_line()
    assert "genome.fa: record 'chr7'" in msg
    assert "offset 1012" in msg  # 12 within the chunk + the chunk's offset
    assert repr(bad.encode()) in msg
    assert "--invalid N" in msg


def test_invalid_mapped_to_n_and_counted():
    ids, soft, n_bad = encode_bytes(b"AC-GT**a", invalid="N", with_softmask=True)
    assert ids.tolist() == [4, 5, 8, 6, 7, 8, 8, 4]
    assert n_bad == 3
    assert soft.tolist() == [False] * 7 + [True]


def test_encode_rejects_unknown_mode():
    with pytest.raises(ValueError):
        encode_bytes(b"ACGT", invalid="drop")


def test_reverse_complement_matches_reference_numpy_and_torch():
    rng = np.random.default_rng(0)
    s = "".join(rng.choice(list("ACGTN"), 1001))
    ids = encode(s)
    want = encode("".join(REF_COMP[c] for c in reversed(s)))
    np.testing.assert_array_equal(reverse_complement(ids), want)
    assert reverse_complement(ids).dtype == np.uint8
    t = torch.from_numpy(ids.astype(np.int64))
    assert torch.equal(reverse_complement(t), torch.from_numpy(want.astype(np.int64)))
    # batched along the last axis, specials unchanged, an involution
    batch = np.stack([ids, ids[::-1].copy()])  # (2, L)
    rc = reverse_complement(batch)
    np.testing.assert_array_equal(rc[0], want)
    np.testing.assert_array_equal(reverse_complement(rc), batch)
    np.testing.assert_array_equal(reverse_complement(np.array([0, 1, 2, 3])), [3, 2, 1, 0])


def test_tokenizer_spec_round_trip_and_mismatch():
    text = TokenizerSpec().to_json()
    assert TokenizerSpec.check_json(text) == TokenizerSpec()
    d = json.loads(text)
    d["vocab"] = d["vocab"][::-1]
    with pytest.raises(InputError, match="tokenizer"):
        TokenizerSpec.check_json(json.dumps(d), where="model/tokenizer.json")
