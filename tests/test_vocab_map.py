"""mamba_dna.vocab_map: external checkpoint vocabularies -> the map from mamba-dna ids.

The shared Caduceus-layout fixtures carry `input_ids` that the real Caduceus code's tokenizers
made from 1,000 bp of BRCA1 (models/README.md): tokenizing the same bases with mamba-dna's
tokenizer and mapping them must give those ids exactly. Synthetic tokenizer files cover the
layouts and the errors without shared data.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_dna import tokenizer as tk
from mamba_dna.errors import InputError
from mamba_dna.vocab_map import read_external_vocab

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
MODELS = DATA / "models"
BRCA1 = DATA / "variants/brca1_sge_findlay2018/BRCA1_region_GRCh38.fasta.gz"
BRCA1_OFFSET, BRCA1_LEN = 700_000, 1_000  # models/README.md: the bases behind input_ids row 0

# what models/README.md and the Caduceus tokenizer code give; ours: PAD BOS EOS MASK A C G T N
CADUCEUS_IDS = [4, 2, 1, 3, 7, 8, 9, 10, 11]
PLANT_IDS = [0, -1, -1, 1, 3, 4, 5, 6, 2]
FIXTURES = {
    # folder: (ids_for_ours, size, base_ids, mask_id, pad_id, lowercase)
    "caduceus_ps": (CADUCEUS_IDS, 16, (7, 8, 9, 10), 3, 4, False),
    "caduceus_ph": (CADUCEUS_IDS, 16, (7, 8, 9, 10), 3, 4, False),
    "caduceus_plant": (PLANT_IDS, 8, (3, 4, 5, 6), 1, 0, True),
}


def _fixture_dir(name: str) -> Path:
    d = MODELS / name
    if not (d / "expected_outputs.safetensors").is_file():
        pytest.skip(f"shared data absent: {d}")
    return d


def _brca1_bases() -> bytes:
    if not BRCA1.is_file():
        pytest.skip(f"shared data absent: {BRCA1}")
    with gzip.open(BRCA1, "rt", encoding="ascii") as fh:
        lines = fh.read().splitlines()
    assert lines[0].startswith(">") and sum(line.startswith(">") for line in lines) == 1
    seq = "".join(lines[1:])
    return seq[BRCA1_OFFSET : BRCA1_OFFSET + BRCA1_LEN].upper().encode("ascii")


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# --- the real fixtures --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_vocab_fields(name):
    ids, size, base_ids, mask_id, pad_id, lowercase = FIXTURES[name]
    v = read_external_vocab(_fixture_dir(name))
    assert v.ids_for_ours.dtype == np.int64 and v.ids_for_ours.shape == (tk.VOCAB_SIZE,)
    assert v.ids_for_ours.tolist() == ids
    assert (v.size, v.base_ids, v.mask_id, v.pad_id, v.lowercase) == (
        size, base_ids, mask_id, pad_id, lowercase
    )
    assert v.size == json.loads((_fixture_dir(name) / "config.json").read_text())["vocab_size"]
    assert v.ids_for_ours[tk.N] == (11 if not lowercase else v.unk_id)  # plant: N -> [UNK]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_input_ids_match_real_tokenizer(name):
    """Our tokenizer + map_ids == the real code's input_ids, plain row and masked row."""
    from safetensors.numpy import load_file

    d = _fixture_dir(name)
    expected = load_file(str(d / "expected_outputs.safetensors"))
    want = expected["input_ids"]  # (2, 1000) int64
    mask_positions = expected["mask_positions"]  # (5,)
    v = read_external_vocab(d)

    ours = tk.encode_bytes(_brca1_bases()).astype(np.int64)  # (1000,)
    assert ours.shape == (BRCA1_LEN,)
    masked = ours.copy()
    masked[mask_positions] = tk.MASK
    batch = np.stack([ours, masked])  # (2, 1000)

    got_np = v.map_ids(batch)
    assert got_np.dtype == np.int64
    np.testing.assert_array_equal(got_np, want)
    got_t = v.map_ids(torch.from_numpy(batch).to(torch.int32))
    assert got_t.dtype == torch.long
    torch.testing.assert_close(got_t, torch.from_numpy(want), rtol=0, atol=0)
    # the masked row differs from the plain row exactly at the mask positions
    assert set(np.flatnonzero(want[1] != want[0]).tolist()) == set(mask_positions.tolist())


def test_fixture_logits_back_to_our_vocab():
    """take_logits picks the checkpoint's columns for our ids (real logits, caduceus_ps)."""
    from safetensors.torch import load_file

    d = _fixture_dir("caduceus_ps")
    logits = load_file(str(d / "expected_outputs.safetensors"))["logits"]  # (2, 1000, 16)
    v = read_external_vocab(d)
    ours = v.take_logits(logits)  # (2, 1000, 9)
    assert ours.shape == (2, 1000, tk.VOCAB_SIZE)
    for our_id, their_id in enumerate(CADUCEUS_IDS):
        torch.testing.assert_close(ours[..., our_id], logits[..., their_id], rtol=0, atol=0)


# --- synthetic tokenizer files (no shared data needed) ------------------------------------------


def _write(d: Path, files: dict[str, object]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (d / name).write_text(text, encoding="utf-8")
    return d


def _caduceus_files(characters=("A", "C", "G", "T", "N"), **extra) -> dict:
    return {"tokenizer_config.json": {"tokenizer_class": "CaduceusTokenizer",
                                      "characters": list(characters), **extra}}


def _tokenizer_json(vocab: dict, added=(), normalizer=None, merges=()) -> dict:
    return {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "special": True} for t, i in added],
        "normalizer": normalizer,
        "model": {"type": "BPE", "unk_token": "[UNK]", "vocab": vocab, "merges": list(merges)},
    }


PLANT_VOCAB = {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "a": 3, "c": 4, "g": 5, "t": 6}


def test_caduceus_character_layout_synthetic(tmp_path):
    v = read_external_vocab(_write(tmp_path / "m", _caduceus_files()))
    assert v.ids_for_ours.tolist() == CADUCEUS_IDS
    assert v.size == 12 and not v.lowercase and v.unk_id == 6
    assert v.tokens["[RESERVED]"] == 5 and v.tokens["[CLS]"] == 0
    # a padded embedding, as Caduceus pads 12 -> 16
    assert read_external_vocab(tmp_path / "m", vocab_size=16).size == 16


def test_characters_numbered_in_config_order(tmp_path):
    d = _write(tmp_path / "m", _caduceus_files(characters=("T", "G", "C", "A")))
    v = read_external_vocab(d)
    assert v.base_ids == (10, 9, 8, 7)
    assert v.ids_for_ours[tk.N] == 6  # no N character: N -> [UNK]


def test_added_tokens_decoder_overrides_special_ids(tmp_path):
    # a later CaduceusTokenizer layout: ten specials, characters from 10
    specials = ["[CLS]", "[EOS]", "[SEP]", "[REF]", "[MUT]", "[BOS]", "[MASK]", "[PAD]",
                "[RESERVED]", "[UNK]"]
    decoder = {str(i): {"content": t, "special": True} for i, t in enumerate(specials)}
    d = _write(tmp_path / "m", _caduceus_files(added_tokens_decoder=decoder))
    v = read_external_vocab(d)
    assert v.base_ids == (10, 11, 12, 13) and v.ids_for_ours[tk.N] == 14
    assert (v.mask_id, v.pad_id) == (6, 7)


def test_added_tokens_decoder_subset_keeps_the_fixed_layout(tmp_path):
    # what transformers >= 4.34 saves for the 7-special CaduceusTokenizer: no [RESERVED]
    decoder = {str(i): {"content": t} for t, i in
               [("[CLS]", 0), ("[SEP]", 1), ("[BOS]", 2), ("[MASK]", 3), ("[PAD]", 4)]}
    v = read_external_vocab(_write(tmp_path / "m", _caduceus_files(added_tokens_decoder=decoder)))
    assert v.ids_for_ours.tolist() == CADUCEUS_IDS and v.tokens["[RESERVED]"] == 5


def test_complement_map_checked_against_base_ids(tmp_path):
    good = {str(i): i for i in range(16)} | {"7": 10, "8": 9, "9": 8, "10": 7}
    d = _write(tmp_path / "m", _caduceus_files() | {"config.json": {"vocab_size": 16,
                                                                    "complement_map": good}})
    assert read_external_vocab(d).size == 16  # size from config.json
    # ids shifted by one (the 10-special layout read as the 7-special one would do this)
    bad = {str(i): i for i in range(16)} | {"8": 11, "9": 10, "10": 9, "11": 8}
    _write(d, {"config.json": {"vocab_size": 16, "complement_map": bad}})
    with pytest.raises(InputError) as e:
        read_external_vocab(d)
    assert "config.json: complement_map[7]" in _one_line_error(e)


def test_tokenizer_json_lowercase_plant_layout(tmp_path):
    tj = _tokenizer_json(PLANT_VOCAB, added=[("[PAD]", 0), ("[MASK]", 1), ("[UNK]", 2)],
                         normalizer={"type": "Lowercase"})
    d = _write(tmp_path / "m", {"tokenizer.json": tj,
                                "tokenizer_config.json": {"mask_token": "[MASK]",
                                                          "pad_token": "[PAD]"}})
    v = read_external_vocab(d)
    assert v.ids_for_ours.tolist() == PLANT_IDS and v.lowercase and v.size == 7


def test_tokenizer_json_uppercase_word_level_with_special_map(tmp_path):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "A": 3, "C": 4, "G": 5, "T": 6, "N": 7, "<m>": 8}
    tj = {"model": {"type": "WordLevel", "vocab": vocab, "unk_token": "N"}, "normalizer": None}
    d = _write(tmp_path / "m", {
        "tokenizer.json": tj,
        "special_tokens_map.json": {"mask_token": {"content": "<m>"}, "bos_token": "<s>",
                                    "eos_token": "</s>", "pad_token": "<pad>"},
    })
    v = read_external_vocab(d)
    assert v.ids_for_ours.tolist() == [0, 1, 2, 8, 3, 4, 5, 6, 7] and not v.lowercase


def test_vocab_txt_fallback(tmp_path):
    d = _write(tmp_path / "m", {"vocab.txt": "[PAD]\n[MASK]\nA\nC\nG\nT\n"})
    v = read_external_vocab(d)
    assert v.ids_for_ours.tolist() == [0, -1, -1, 1, 2, 3, 4, 5, -1]


# --- map_ids / take_logits ------------------------------------------------------------------------


def test_map_ids_shapes_dtypes_and_gaps(tmp_path):
    tj = _tokenizer_json(PLANT_VOCAB, normalizer={"type": "Lowercase"})
    v = read_external_vocab(_write(tmp_path / "m", {"tokenizer.json": tj}))
    ours = torch.tensor([[tk.A, tk.C, tk.G], [tk.T, tk.N, tk.MASK]], dtype=torch.uint8)  # (2, 3)
    got = v.map_ids(ours)
    assert got.dtype == torch.long and got.shape == (2, 3)
    assert got.tolist() == [[3, 4, 5], [6, 2, 1]]
    assert v.missing == ("<bos>", "<eos>")
    assert v.map_ids(np.array([], dtype=np.int64)).shape == (0,)
    with pytest.raises(InputError) as e:
        v.map_ids(torch.tensor([tk.A, tk.BOS, tk.EOS]))
    msg = _one_line_error(e)
    assert "<bos>" in msg and "<eos>" in msg and "tokenizer.json" in msg
    for bad in (np.array([tk.VOCAB_SIZE]), torch.tensor([-1])):
        with pytest.raises(InputError, match="not a mamba-dna token id"):
            v.map_ids(bad)
    with pytest.raises(InputError, match="integer"):
        v.map_ids(torch.zeros(3))


def test_take_logits_fills_missing_with_minus_inf(tmp_path):
    tj = _tokenizer_json(PLANT_VOCAB, normalizer={"type": "Lowercase"})
    v = read_external_vocab(_write(tmp_path / "m", {"tokenizer.json": tj}), vocab_size=8)
    logits = torch.randn(2, 5, 8)  # (B, L, size)
    ours = v.take_logits(logits)  # (2, 5, 9)
    assert torch.isinf(ours[..., tk.BOS]).all() and torch.isinf(ours[..., tk.EOS]).all()
    torch.testing.assert_close(ours[..., tk.A:tk.T + 1], logits[..., 3:7], rtol=0, atol=0)
    np_out = v.take_logits(logits.numpy())
    np.testing.assert_array_equal(np_out, ours.numpy())
    with pytest.raises(InputError, match="last dim 7"):
        v.take_logits(torch.zeros(1, 7))


# --- errors: one line, naming the file and field --------------------------------------------------


@pytest.mark.parametrize(
    "files, match",
    [
        (_caduceus_files(characters=("C", "G", "T")), r"tokenizer_config.json: .*no token for base A"),
        ({"tokenizer.json": "{not json"}, r"tokenizer.json: not valid JSON \(line 1"),
        ({"tokenizer.json": "[1, 2]"}, r"tokenizer.json: expected a JSON object"),
        ({"tokenizer.json": {"model": {"type": "BPE"}}}, r"tokenizer.json: field 'model.vocab'"),
        ({"tokenizer.json": _tokenizer_json({"A": 0, "C": 1, "G": 2, "T": 3})},
         r"tokenizer.json: no mask token"),
        ({"tokenizer.json": _tokenizer_json({"A": 0, "C": "x", "G": 2, "T": 3})},
         r"tokenizer.json: model.vocab\['C'\] = 'x'"),
        ({"tokenizer.json": _tokenizer_json(PLANT_VOCAB, merges=["a c"])}, r"model.merges"),
        ({"tokenizer.json": _tokenizer_json(PLANT_VOCAB | {"acg": 7})}, r"multi-nucleotide"),
        ({"tokenizer.json": _tokenizer_json(PLANT_VOCAB),
          "tokenizer_config.json": {"mask_token": "<mask>"}},
         r"tokenizer.json: mask_token '<mask>' is not in the vocabulary"),
        ({"tokenizer_config.json": "{\"characters\": [\"A\", "}, r"tokenizer_config.json: not valid JSON"),
        ({"tokenizer_config.json": {"tokenizer_class": "BertTokenizer", "characters": ["A"]}},
         r"tokenizer_class 'BertTokenizer'"),
        ({"tokenizer_config.json": {"characters": "ACGT"}}, r"characters must be a non-empty list"),
        (_caduceus_files() | {"config.json": {"vocab_size": 8}},
         r"config.json: vocab_size 8 does not cover the tokenizer's 12 ids"),
        ({"config.json": {"vocab_size": 8}}, r"no tokenizer files"),
    ],
)
def test_bad_vocabularies_are_one_line_errors(tmp_path, files, match):
    d = _write(tmp_path / "m", files)
    with pytest.raises(InputError, match=match) as e:
        read_external_vocab(d)
    _one_line_error(e)


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="no such model directory"):
        read_external_vocab(tmp_path / "absent")
