"""Markov baseline and k-mer profiles: hand-checkable counts, streaming, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamba_dna.baselines import MarkovModel, best_markov, kmer_profile
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.tokenizer import N, encode, reverse_complement


def _lp(model, seq: str, state=None):
    lp, st = model.log_probs(encode(seq).astype(np.int64)[None], state)
    return lp[0], st


def test_order1_probabilities_match_hand_counts():
    # "AACAG" forward only: transitions A->A, A->C, C->A, A->G
    m = MarkovModel(1, pseudocount=0.5).fit([encode("AACAG")], both_strands=False)
    assert m.counts[1][0].tolist() == [1, 1, 1, 0]  # after A: A C G T
    assert m.counts[1][1].tolist() == [1, 0, 0, 0]  # after C
    assert m.counts[0][0].tolist() == [3, 1, 1, 0]  # base composition
    lp, _ = _lp(m, "AC")
    # row 0: P(. | A) = (count + 0.5) / (3 + 2)
    np.testing.assert_allclose(np.exp(lp[0]), np.array([1.5, 1.5, 1.5, 0.5]) / 5, rtol=1e-6)
    # row 1: P(. | C) = (1.5, .5, .5, .5) / 3
    np.testing.assert_allclose(np.exp(lp[1]), np.array([1.5, 0.5, 0.5, 0.5]) / 3, rtol=1e-6)


def test_both_strands_counts_reverse_complement():
    m = MarkovModel(2).fit([encode("AACG")], both_strands=True)
    # forward AAC->? : AA->C, AC->G ; reverse complement CGTT: CG->T, GT->T
    # order-2 index: most recent base least significant, e.g. context "AC" = A*4 + C
    def row(ctx):
        return m.counts[2][(4 * "ACGT".index(ctx[0])) + "ACGT".index(ctx[1])]

    assert row("AA").tolist() == [0, 1, 0, 0]
    assert row("AC").tolist() == [0, 0, 1, 0]
    assert row("CG").tolist() == [0, 0, 0, 1]
    assert row("GT").tolist() == [0, 0, 0, 1]
    assert m.counts[2].sum() == 4


def test_n_in_context_backs_off_and_is_not_counted():
    m = MarkovModel(2).fit([encode("ACNGT")], both_strands=False)
    # only order-2 pair would need 2 clean bases before a clean target: none here
    assert m.counts[2].sum() == 0
    assert m.counts[1].sum() == 2  # A->C and G->T
    lp, _ = _lp(m, "ANG")
    # row 1 (context ends in N): order-0 composition; row 2 (context "G" after N): order 1
    c0 = m.counts[0][0] + 0.5
    np.testing.assert_allclose(lp[1], np.log(c0 / c0.sum()), rtol=1e-6)
    c1 = m.counts[1][2] + 0.5
    np.testing.assert_allclose(lp[2], np.log(c1 / c1.sum()), rtol=1e-6)


def test_streaming_pieces_equal_one_pass_numpy_and_torch():
    rng = np.random.default_rng(0)
    seq = rng.integers(4, 9, size=777).astype(np.uint8)  # includes N
    m = MarkovModel(5).fit([seq[:500]])
    full, _ = m.log_probs(seq.astype(np.int64)[None])
    state, parts = None, []
    for a, b in [(0, 3), (3, 4), (4, 200), (200, 777)]:
        lp, state = m.log_probs(torch.from_numpy(seq[a:b].astype(np.int64))[None], state)
        assert isinstance(lp, torch.Tensor) and lp.dtype == torch.float32
        parts.append(lp.numpy())
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)
    # rows are normalised distributions over A C G T
    np.testing.assert_allclose(np.exp(full).sum(-1), 1.0, rtol=1e-5)


def test_bits_per_base_matches_manual_sum_and_ignores_n():
    rng = np.random.default_rng(1)
    seq = rng.integers(4, 8, size=300).astype(np.uint8)
    seq[50] = N
    m = MarkovModel(3).fit([seq])
    lp, _ = m.log_probs(seq.astype(np.int64)[None])
    tgt = seq[1:].astype(np.int64) - 4
    keep = seq[1:] != N
    manual = -lp[0, :-1][np.arange(299)[keep], tgt[keep]].astype(np.float64).mean() / math.log(2)
    assert m.bits_per_base([seq]) == pytest.approx(manual, rel=1e-6)
    assert m.bits_per_base([seq], chunk=7) == pytest.approx(manual, rel=1e-6)


def test_best_markov_prefers_the_generating_order():
    # an order-2 source: next base is a deterministic function of the previous two, plus noise
    rng = np.random.default_rng(2)
    x = list(rng.integers(0, 4, 2))
    for _ in range(20000):
        x.append((x[-1] * 3 + x[-2] + 1) % 4 if rng.random() < 0.9 else int(rng.integers(0, 4)))
    ids = (np.array(x) + 4).astype(np.uint8)
    best, table = best_markov([ids[:16000]], [ids[16000:]], orders=range(0, 6), both_strands=False)
    assert best.order == 2
    assert table[2] < min(table[0], table[1]) - 0.5  # order 1 alone is uninformative here
    assert best.name == "markov-2"


def test_save_load_roundtrip(tmp_path):
    m = MarkovModel(4, pseudocount=0.25).fit([encode("ACGTTGCAACGTAGCTAGCTAGGATC")])
    p = tmp_path / "m.npz"
    m.save(p)
    m2 = MarkovModel.load(p)
    assert (m2.order, m2.pseudocount) == (4, 0.25)
    x = encode("ACGTAGGCT").astype(np.int64)[None]
    np.testing.assert_array_equal(m.log_probs(x)[0], m2.log_probs(x)[0])
    with pytest.raises(InputError):
        MarkovModel.load(tmp_path / "missing.npz")
    with pytest.raises(ConfigError):
        MarkovModel(99)


def test_kmer_profile_counts_and_strands():
    p = kmer_profile(encode("AACNAC"), 2)
    # k-mers: AA, AC, (CN, NA skipped), AC -> AA 1/3, AC 2/3
    assert p.shape == (16,) and p.dtype == np.float32
    assert p[0] == pytest.approx(1 / 3) and p[1] == pytest.approx(2 / 3)
    assert p.sum() == pytest.approx(1.0)
    seq = np.random.default_rng(3).integers(4, 8, 500).astype(np.uint8)
    both = kmer_profile(seq, 3, both_strands=True)
    np.testing.assert_allclose(both, kmer_profile(reverse_complement(seq), 3, both_strands=True), atol=1e-7)
    can = kmer_profile(seq, 3, canonical=True)
    assert can[63] == 0  # TTT folds onto AAA
    assert can[0] > 0 and can.sum() == pytest.approx(1.0)
    assert kmer_profile(encode("NNN"), 2).sum() == 0


def test_real_bacterial_genome_markov6_near_facts(shared_data):
    import gzip

    from mamba_dna.tokenizer import encode_bytes

    f = shared_data / "species/bacteria/Helicobacter_pylori__G27.fna.gz"
    raw = b"".join(l.strip() for l in gzip.open(f) if not l.startswith(b">"))
    ids = encode_bytes(raw, invalid="N")
    n = int(ids.size * 0.9)
    m = MarkovModel(6).fit([ids[:n]])
    bpb = m.bits_per_base([ids[n:]])
    assert 1.80 < bpb < 1.98, bpb  # clearly better than 2 bits (uniform), no overfit
