"""MLM masking, loss and masked bits; MLM_LLR windows and scores; the two-sided k-mer baseline."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_dna.baselines import (
    MarkovModel,
    TwoSidedKmer,
    best_kmer2,
    best_markov,
    kmer2_from_spec,
    load_baseline,
    parse_kmer2_spec,
)
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.mlm import (
    IGNORE,
    acgt_log_probs,
    mask_tokens,
    masked_bits,
    mlm_llr,
    mlm_loss,
    unmasked_llr,
    variant_windows,
    window_centre,
)
from mamba_dna.tokenizer import (
    BOS,
    EOS,
    MASK,
    PAD,
    A,
    C,
    G,
    N,
    T,
    encode,
    encode_bytes,
    reverse_complement,
)

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))


def _random_ids(rng, B, L, p_n=0.05):
    ids = rng.integers(A, T + 1, size=(B, L))
    ids[rng.random((B, L)) < p_n] = N
    return ids


# ============================================================================ masking


def test_masking_fractions_match_caduceus():
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(_random_ids(rng, 64, 4096))  # 262k positions, ~5% N
    ids[:, 0], ids[:, -1], ids[:, 100:110] = BOS, EOS, PAD
    g = torch.Generator().manual_seed(1)
    chosen = masked = rand_changed = unchanged = eligible = 0
    rand_bases = torch.zeros(4)
    for _ in range(4):
        b = mask_tokens(ids, g)
        ok = (ids >= A) & (ids <= T)
        ch = b.chosen
        eligible += int(ok.sum())
        chosen += int(ch.sum())
        masked += int((ch & (b.input_ids == MASK)).sum())
        changed = ch & (b.input_ids != MASK) & (b.input_ids != ids)
        rand_changed += int(changed.sum())
        unchanged += int((ch & (b.input_ids == ids)).sum())
        rand_bases += torch.bincount(b.input_ids[changed] - A, minlength=4)
        # nothing outside the chosen positions is touched
        assert torch.equal(b.input_ids[~ch], ids[~ch])
    assert chosen / eligible == pytest.approx(0.15, abs=0.003)
    assert masked / chosen == pytest.approx(0.80, abs=0.006)
    # a random base equals the original 1/4 of the time: 10% * 3/4 change, 10% + 2.5% stay
    assert rand_changed / chosen == pytest.approx(0.075, abs=0.004)
    assert unchanged / chosen == pytest.approx(0.125, abs=0.005)
    assert (rand_bases / rand_bases.sum()).tolist() == pytest.approx([0.25] * 4, abs=0.02)


def test_n_pad_specials_never_targets():
    ids = torch.tensor([[PAD, BOS, N, N, MASK, EOS, PAD] * 50])  # (1, 350) no base at all
    b = mask_tokens(ids, torch.Generator().manual_seed(0), mask_prob=1.0)
    assert b.n_targets == 0 and (b.targets == IGNORE).all() and (b.weights == 0).all()
    assert torch.equal(b.input_ids, ids)
    # with mask_prob 1 every base is chosen and only bases
    mixed = torch.tensor([[A, N, C, PAD, G, T, EOS]])
    b = mask_tokens(mixed, torch.Generator().manual_seed(0), mask_prob=1.0)
    assert b.chosen.tolist() == [[True, False, True, False, True, True, False]]
    assert b.targets[b.chosen].tolist() == [A, C, G, T]


def test_masking_is_exactly_reproducible_and_resumable():
    rng = np.random.default_rng(3)
    ids = torch.from_numpy(_random_ids(rng, 4, 333))
    g1 = torch.Generator().manual_seed(42)
    a1 = mask_tokens(ids, g1)
    state = g1.get_state()
    a2 = mask_tokens(ids, g1)
    g2 = torch.Generator().manual_seed(42)
    b1 = mask_tokens(ids, g2)
    assert torch.equal(a1.input_ids, b1.input_ids) and torch.equal(a1.targets, b1.targets)
    g3 = torch.Generator()
    g3.set_state(state)  # a resumed job continues the stream
    c2 = mask_tokens(ids, g3)
    assert torch.equal(a2.input_ids, c2.input_ids) and torch.equal(a2.weights, c2.weights)
    assert not torch.equal(a1.input_ids, a2.input_ids)
    # the stream advances by the same amount whatever the tokens are
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    mask_tokens(ids, ga)
    mask_tokens(torch.full_like(ids, N), gb)
    assert torch.equal(ga.get_state(), gb.get_state())
    # numpy uint8 input gives the same masks as the tensor
    d1 = mask_tokens(ids.numpy().astype(np.uint8), torch.Generator().manual_seed(42))
    assert torch.equal(d1.input_ids, a1.input_ids)


def test_softmask_weights():
    rng = np.random.default_rng(4)
    ids = torch.from_numpy(_random_ids(rng, 8, 500))
    soft = torch.from_numpy(rng.random((8, 500)) < 0.3)
    b = mask_tokens(ids, torch.Generator().manual_seed(0), soft, softmask_weight=0.1)
    ch = b.chosen
    assert torch.allclose(b.weights[ch & soft], torch.tensor(0.1)) and (b.weights[ch & ~soft] == 1.0).all()
    assert (b.weights[~ch] == 0).all() and (ch & soft).any() and (ch & ~soft).any()
    # the masks do not depend on the softmask (same draws)
    b0 = mask_tokens(ids, torch.Generator().manual_seed(0))
    assert torch.equal(b0.input_ids, b.input_ids)
    with pytest.raises(ConfigError):
        mask_tokens(ids, torch.Generator(), mask_prob=1.5)
    with pytest.raises(ConfigError):
        mask_tokens(ids, torch.Generator(), mask_token_frac=0.95, random_token_frac=0.1)


# ============================================================================ loss and bits


def test_mlm_loss_equals_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 9, requires_grad=True)
    ids = torch.tensor([[A, C, G, T]])
    soft = torch.tensor([[False, True, False, False]])
    b = mask_tokens(ids, torch.Generator().manual_seed(0), soft, mask_prob=1.0, softmask_weight=0.1)
    b.targets[0, 2] = IGNORE  # leave position 2 out by hand
    b.weights[0, 2] = 0.0
    loss, n = mlm_loss(logits, b)
    lz = logits.detach()[0]
    ce = [float(torch.logsumexp(lz[i], 0)) - float(lz[i, t]) for i, t in [(0, A), (1, C), (3, T)]]
    want = (1.0 * ce[0] + 0.1 * ce[1] + 1.0 * ce[2]) / 2.1
    assert n == 3 and float(loss.detach()) == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    # bf16 logits: computed in fp32, close to the same value
    l16, _ = mlm_loss(logits.detach().bfloat16(), b)
    assert float(l16) == pytest.approx(want, rel=2e-2)
    # no target: 0 and still differentiable
    empty = mask_tokens(torch.full((1, 4), N), torch.Generator(), mask_prob=1.0)
    l0, n0 = mlm_loss(logits, empty)
    assert n0 == 0 and float(l0.detach()) == 0.0
    l0.backward()


def test_masked_bits_over_acgt_only():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 9)
    ids = torch.tensor([[A, C, N, G, T], [T, T, G, PAD, C]])
    b = mask_tokens(ids, torch.Generator().manual_seed(0), mask_prob=1.0)
    lp4 = acgt_log_probs(logits)  # (2, 5, 4)
    assert torch.allclose(lp4.exp().sum(-1), torch.ones(2, 5))
    bits, n = masked_bits(lp4, b)
    want = 0.0
    for i in range(2):
        for j in range(5):
            t = int(ids[i, j])
            if A <= t <= T:
                z = logits[i, j, A : T + 1]
                want -= float(torch.log_softmax(z, -1)[t - A]) / math.log(2)
    assert n == 8 and bits == pytest.approx(want, rel=1e-5)
    # ACGT-only bits are lower than full-vocabulary ones: the softmax has fewer competitors
    full, _ = mlm_loss(logits, b)
    assert bits / n < float(full) / math.log(2)


# ============================================================================ windows and LLR


class ConvMasked(torch.nn.Module):
    """A small bidirectional mock: log-softmax over ACGT of a width-5 convolution."""

    is_causal = False

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(9, 6)
        self.conv = torch.nn.Conv1d(6, 4, 5, padding=2)
        self.seen: list[torch.Tensor] = []

    def masked_log_probs(self, ids):
        self.seen.append(ids.detach().cpu().clone())
        h = self.conv(self.emb(ids).transpose(1, 2)).transpose(1, 2)  # (B, L, 4)
        return torch.log_softmax(h, -1)


def test_window_placement_matches_plantcaduceus():
    assert window_centre(512) == 255 and window_centre(513) == 256
    assert window_centre(1) == 0 and window_centre(2) == 0 and window_centre(8192) == 4095
    rng = np.random.default_rng(0)
    contig = rng.integers(A, T + 1, 1000).astype(np.uint8)
    w = variant_windows(contig, [0, 500, 999], 512)  # (3, 512)
    assert w.shape == (3, 512) and (w[:, 255] == MASK).all()
    assert (w[0, :255] == N).all() and np.array_equal(w[0, 256:], contig[1:257])
    assert np.array_equal(w[1, :255], contig[245:500]) and np.array_equal(w[1, 256:], contig[501:757])
    assert np.array_equal(w[2, :255], contig[744:999]) and (w[2, 256:] == N).all()
    u = variant_windows(contig, [500], 512, mask=False)
    assert np.array_equal(u[0], contig[245:757])


def test_one_forward_per_distinct_position_and_batching():
    rng = np.random.default_rng(1)
    contig = rng.integers(A, T + 1, 3000).astype(np.uint8)
    pos = np.array([5, 5, 5, 900, 900, 2999, 1200])
    ref = contig[pos]
    alt = np.array([A, C, G, T, A, C, G])
    m = ConvMasked()
    r = mlm_llr(m, contig, pos, ref, alt, context=64, batch_size=2)
    assert r.n_windows == 4 and r.n_calls == 2
    seen = torch.cat(m.seen)  # (4, 64)
    assert seen.shape == (4, 64) and (seen[:, 31] == MASK).all()
    m2 = ConvMasked()
    r2 = mlm_llr(m2, contig, pos, ref, alt, context=64, strands="both", batch_size=3)
    assert r2.n_windows == 8 and r2.n_calls == 3
    seen = torch.cat(m2.seen)  # forward windows then their reverse complements
    assert (seen[:4, 31] == MASK).all() and (seen[4:, 64 - 1 - 31] == MASK).all()
    assert torch.equal(seen[4:], torch.from_numpy(reverse_complement(seen[:4].numpy())))


def test_llr_equals_log_softmax_difference_both_strands():
    rng = np.random.default_rng(2)
    contig = rng.integers(A, T + 1, 700).astype(np.uint8)
    contig[100] = N
    pos = np.array([3, 350, 350, 699, 100, 200])
    ref = contig[pos].astype(np.int64)
    ref[5] = A if contig[200] != A else C  # a REF that disagrees with the contig
    alt = np.array([G, A, T, C, G, N])
    m = ConvMasked(seed=3)
    ctx = 101
    r = mlm_llr(m, contig, pos, ref, alt, context=ctx, strands="forward")
    rb = mlm_llr(m, contig, pos, ref, alt, context=ctx, strands="both")
    c = window_centre(ctx)
    with torch.no_grad():
        for i in range(4):
            w = variant_windows(contig, [pos[i]], ctx)  # (1, ctx)
            lp = m.masked_log_probs(torch.from_numpy(w.astype(np.int64)))[0, c]  # (4,)
            f = float(lp[alt[i] - A] - lp[ref[i] - A])
            assert r.score[i] == pytest.approx(f, abs=1e-5)
            rcw = reverse_complement(w)
            lpr = m.masked_log_probs(torch.from_numpy(rcw.astype(np.int64)))[0, ctx - 1 - c]
            comp = {A: T, C: G, G: C, T: A}
            s_rc = float(lpr[comp[int(alt[i])] - A] - lpr[comp[int(ref[i])] - A])
            assert rb.score[i] == pytest.approx((f + s_rc) / 2, abs=1e-5)
    assert r.ref_is_n.tolist() == [False, False, False, False, True, False]
    assert r.ref_mismatch.tolist() == [False, False, False, False, False, True]
    assert np.isnan(r.score[4]) and np.isnan(r.score[5])  # REF N; ALT N
    assert np.allclose(np.exp(r.log_probs).sum(1), 1, atol=1e-5)
    with pytest.raises(InputError, match="outside the contig"):
        mlm_llr(m, contig, [700], [A], [C], context=ctx)
    rs = mlm_llr(m, contig, [350], "A", "C", context=ctx)  # letters work too
    assert rs.score[0] == pytest.approx(float(r.log_probs[1, C - A] - r.log_probs[1, A - A]), abs=1e-6)


def test_unmasked_llr_tiles_and_reads():
    rng = np.random.default_rng(5)
    contig = rng.integers(A, T + 1, 2000).astype(np.uint8)
    pos = np.array([0, 10, 60, 61, 63, 64, 1999, 1000])
    alt = np.array([A, C, G, T, A, C, G, T])
    m = ConvMasked(seed=4)
    ctx, stride = 64, 32
    r = unmasked_llr(m, contig, pos, contig[pos], alt, context=ctx, stride=stride, batch_size=4)
    tiles = sorted(set((pos // stride).tolist()))  # 0, 1, 2, 31, 62 -> 5 tiles
    assert r.n_windows == len(tiles) and r.n_calls == 2
    seen = torch.cat(m.seen)
    assert not (seen == MASK).any()
    margin = (ctx - stride) // 2
    with torch.no_grad():
        for i, p in enumerate(pos):
            start = (p // stride) * stride - margin
            win = np.full(ctx, N, np.uint8)
            lo, hi = max(start, 0), min(start + ctx, contig.size)
            win[lo - start : hi - start] = contig[lo:hi]
            off = p - start
            assert margin <= off < margin + stride
            lp = m.masked_log_probs(torch.from_numpy(win.astype(np.int64))[None])[0, off]
            want = float(lp[alt[i] - A] - lp[contig[p] - A])
            assert r.score[i] == pytest.approx(want, abs=1e-5)
    # the unmasked scores differ from the masked ones for a model that reads token i
    rm = mlm_llr(m, contig, pos, contig[pos], alt, context=ctx)
    assert not np.allclose(rm.score, r.score, atol=1e-3)


def test_kmer2_masked_and_unmasked_llr_agree_and_strands():
    # a model that ignores token i: masking it changes nothing, so the two scores are equal
    rng = np.random.default_rng(6)
    contig = rng.integers(A, T + 1, 5000).astype(np.uint8)
    m = TwoSidedKmer(3).fit([contig])
    pos = rng.integers(10, 4990, 200)
    alt = (contig[pos] - A + 1) % 4 + A
    a = mlm_llr(m, contig, pos, contig[pos], alt, context=64)
    b = unmasked_llr(m, contig, pos, contig[pos], alt, context=64)
    np.testing.assert_allclose(a.score, b.score, atol=1e-6)
    # fitted on both strands, the k-mer model is strand-symmetric: both strands == forward
    c = mlm_llr(m, contig, pos, contig[pos], alt, context=64, strands="both")
    np.testing.assert_allclose(a.score, c.score, atol=1e-5)
    assert b.n_windows < a.n_windows


def test_scores_do_not_depend_on_batching_or_chunking():
    rng = np.random.default_rng(13)
    contig = rng.integers(A, T + 1, 40_000).astype(np.uint8)
    m = TwoSidedKmer(2).fit([contig[:20_000]])
    pos = rng.choice(40_000, 9000, replace=False)  # > 4096 windows: several chunks
    alt = (contig[pos] - A + 2) % 4 + A
    for fn in (mlm_llr, unmasked_llr):
        big = fn(m, contig, pos, contig[pos], alt, context=32, batch_size=9000, strands="both")
        small = fn(m, contig, pos, contig[pos], alt, context=32, batch_size=1000, strands="both")
        np.testing.assert_array_equal(big.score, small.score)
        assert small.n_calls > big.n_calls and small.n_windows == big.n_windows


def test_bf16_model_output_is_read_in_fp32():
    class Bf16(ConvMasked):
        def masked_log_probs(self, ids):
            return super().masked_log_probs(ids).bfloat16()

    rng = np.random.default_rng(7)
    contig = rng.integers(A, T + 1, 300).astype(np.uint8)
    r = mlm_llr(Bf16(seed=1), contig, [150], contig[[150]], [G if contig[150] != G else A], context=32)
    assert r.score.dtype == np.float32 and np.isfinite(r.score).all()


# ============================================================================ two-sided k-mer


def _planted(n, rng):
    """Odd positions = (left + right) mod 4 of their random even neighbours."""
    code = rng.integers(0, 4, n)
    code[1:-1:2] = (code[0:-2:2] + code[2::2]) % 4
    return (code + A).astype(np.uint8)


def test_kmer2_hand_counts_and_smoothing():
    m = TwoSidedKmer(1, alpha=2.0).fit([encode("ACGTA")], both_strands=False)
    # order 0: every base; order 1: C|(A,G), G|(C,T), T|(G,A)
    assert m.counts[0][0].tolist() == [2, 1, 1, 1]
    assert m.keys[1].size == 3 and m.counts[1].sum() == 3
    lp = m.masked_log_probs(encode("AMG".replace("M", "T")).astype(np.int64)[None])[0]  # (3, 4)
    p0 = (np.array([2, 1, 1, 1]) + 0.5) / 7.0
    np.testing.assert_allclose(np.exp(lp[0]), p0, rtol=1e-6)  # sequence end: order 0
    p1 = (np.array([0, 1, 0, 0]) + 2 * p0) / 3.0  # context (A, G) saw C once
    np.testing.assert_allclose(np.exp(lp[1]), p1, rtol=1e-6)
    # token i itself is ignored; a MASK or N next to i backs off to order 0
    lpm = m.masked_log_probs(np.array([[A, MASK, G], [A, N, G]]))
    np.testing.assert_allclose(lpm[0], lp, rtol=1e-6)
    np.testing.assert_allclose(np.exp(lpm[1, 0]), p0, rtol=1e-6)


def test_kmer2_marginalises_masks_in_the_context():
    m = TwoSidedKmer(1, alpha=2.0).fit([encode("ACGTA")], both_strands=False)
    p0 = (np.array([2, 1, 1, 1]) + 0.5) / 7.0
    lp = m.masked_log_probs(np.array([[MASK, T, G], [MASK, T, MASK]]))
    # (MASK, G): the fillings (A, G) -> C once, (C|G|T, G) unseen
    np.testing.assert_allclose(np.exp(lp[0, 1]), (np.array([0, 1, 0, 0]) + 2 * p0) / 3.0, rtol=1e-6)
    # (MASK, MASK): every order-1 context summed: C, G, T once each
    np.testing.assert_allclose(np.exp(lp[1, 1]), (np.array([0, 1, 1, 1]) + 2 * p0) / 5.0, rtol=1e-6)
    # a third mask stops the order below it: k=2 with masks at -2, -1, +1 == order 1
    rng = np.random.default_rng(11)
    m2 = TwoSidedKmer(2).fit([rng.integers(A, T + 1, 5000).astype(np.uint8)])
    three = m2.masked_log_probs(np.array([[MASK, MASK, C, MASK, A]]))[0, 2]
    two = m2.truncated(1).masked_log_probs(np.array([[MASK, C, MASK]]))[0, 1]
    np.testing.assert_allclose(three, two, rtol=1e-6)
    # with one mask at +2, order 2 sums the 4 fillings of that digit
    ids = np.array([[G, T, C, A, MASK]])
    got = m2.masked_log_probs(ids)[0, 2]
    fills = np.stack([np.array([G, T, C, A, b]) for b in (A, C, G, T)])
    c1 = m2._lookup(1, np.array([[(T - A) | ((A - A) << 2)]]))  # order-1 context (T, A)
    p_1 = (c1 + m2.alpha * np.exp(m2.truncated(0).masked_log_probs(fills[:1])[0, 2].astype(np.float64))) / (
        c1.sum() + m2.alpha
    )
    c2 = sum(m2._lookup(2, np.array([[(T - A) | ((A - A) << 2) | ((G - A) << 4) | ((b - A) << 6)]])) for b in range(A, T + 1))
    want = (c2 + m2.alpha * p_1) / (c2.sum() + m2.alpha)
    np.testing.assert_allclose(np.exp(got), want[0], rtol=1e-5)


def test_kmer2_normalised_torch_roundtrip_and_chunks(tmp_path):
    rng = np.random.default_rng(8)
    train = _random_ids(rng, 1, 20_000)[0].astype(np.uint8)
    m = TwoSidedKmer(4).fit([train])
    ids = _random_ids(rng, 3, 257)
    ids[0, 10:13] = MASK
    lp = m.masked_log_probs(torch.from_numpy(ids))
    assert isinstance(lp, torch.Tensor) and lp.shape == (3, 257, 4) and lp.dtype == torch.float32
    np.testing.assert_allclose(lp.exp().sum(-1).numpy(), 1.0, rtol=1e-5)
    val = _random_ids(rng, 1, 3001)[0]
    assert m.bits_per_base([val], chunk=500) == pytest.approx(m.bits_per_base([val]), rel=1e-6)
    m.save(tmp_path / "k2.npz")
    back = load_baseline(tmp_path / "k2.npz")
    assert isinstance(back, TwoSidedKmer) and back.k == 4 and back.alpha == m.alpha
    np.testing.assert_array_equal(back.masked_log_probs(ids), lp.numpy())
    MarkovModel(2).fit([train]).save(tmp_path / "mm.npz")
    assert isinstance(load_baseline(tmp_path / "mm.npz"), MarkovModel)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError):
        load_baseline(tmp_path / "bad.npz")
    with pytest.raises(InputError):
        TwoSidedKmer.load(tmp_path / "mm.npz")


def test_kmer2_incremental_fit_merges_tables():
    rng = np.random.default_rng(12)
    arrs = [_random_ids(rng, 1, n)[0].astype(np.uint8) for n in (3000, 17, 5000)]
    one = TwoSidedKmer(3).fit(arrs)
    inc = TwoSidedKmer(3)
    for x in arrs:
        inc.fit([x])
    for j in range(4):
        np.testing.assert_array_equal(one.keys[j], inc.keys[j])
        np.testing.assert_array_equal(one.counts[j], inc.counts[j])
    assert one.n_fitted == inc.n_fitted > 0
    # order-0 counts every clean base of both strands
    assert one.counts[0].sum() == 2 * sum(int(((x >= A) & (x <= T)).sum()) for x in arrs)


def test_kmer2_spec_parsing_and_auto():
    assert parse_kmer2_spec("kmer2:auto") is None and parse_kmer2_spec("kmer2:3") == 3
    for bad in ("kmer2:9", "kmer2:x", "kmer2:", "kmer3:2", "kmer2:-1"):
        with pytest.raises(ConfigError, match="kmer2:K"):
            parse_kmer2_spec(bad)
    rng = np.random.default_rng(9)
    seqs = [_planted(30_001, rng), _planted(10_001, rng)]
    m, table = kmer2_from_spec("kmer2:auto", seqs)
    assert table is not None and m.k == min(table, key=table.get) and m.k >= 1
    m2, t2 = kmer2_from_spec("kmer2:2", seqs)
    assert t2 is None and m2.k == 2 and m2.n_fitted > 0


def test_kmer2_recovers_a_two_sided_dependency_markov_cannot():
    rng = np.random.default_rng(10)
    train, val, test = _planted(200_001, rng), _planted(40_001, rng), _planted(40_001, rng)
    best, table = best_kmer2([train], [val], ks=range(0, 5))
    mm, mtable = best_markov([train], [val], orders=range(0, 7))
    two, one = best.bits_per_base([test]), mm.bits_per_base([test])
    print(f"planted (odd = left + right mod 4): kmer2 k={best.k} alpha={best.alpha} {two:.3f} "
          f"bits/base vs markov-{mm.order} {one:.3f}; kmer2 val {table}")
    assert table[0] == pytest.approx(2.0, abs=0.01)
    assert best.k >= 1 and table[best.k] < table[0] - 0.5
    assert two < one - 0.3
    # chosen on MLM-masked validation batches (other masks in the context): still k >= 2
    vb = mask_tokens(torch.from_numpy(val[:40_000].reshape(-1, 400).astype(np.int64)), torch.Generator().manual_seed(0))
    bm, tm = best_kmer2([train], [vb], ks=range(0, 4), alphas=(2.0, 32.0))
    bits, n = masked_bits(bm.masked_log_probs(vb.input_ids), vb)
    assert bm.k >= 2 and bits / n == pytest.approx(tm[bm.k], rel=1e-9) and tm[bm.k] < 1.5
    # iid bases: no context helps, k = 0 (or one within noise of it) is chosen
    iid = [rng.integers(A, T + 1, 100_000).astype(np.uint8) for _ in range(2)]
    b0, t0 = best_kmer2([iid[0]], [iid[1]], ks=range(0, 4))
    assert t0[b0.k] == pytest.approx(2.0, abs=0.005) and t0[b0.k] <= t0[0]


# ============================================================================ real data


def _read_fasta_gz(path: Path) -> np.ndarray:
    raw = b"".join(line.strip() for line in gzip.open(path) if not line.startswith(b">"))
    return encode_bytes(raw, invalid="N")


@pytest.mark.skipif(not (DATA / "species/phage").is_dir(), reason="shared data not present")
def test_real_phage_two_sided_vs_markov():
    ids = _read_fasta_gz(DATA / "species/phage/Enterobacteria_phage_lambda__NC_001416.fna.gz")
    a, b = int(ids.size * 0.8), int(ids.size * 0.9)
    train, val, test = ids[:a], ids[a:b], ids[b:]
    k2, table = best_kmer2([train], [val])
    mm, _ = best_markov([train], [val], orders=range(0, 9))
    two, one = k2.bits_per_base([test]), mm.bits_per_base([test])
    # the same positions as an MLM validation would mask (other masks in the context)
    win = torch.from_numpy(test[: (test.size // 512) * 512].reshape(-1, 512).astype(np.int64))
    mb = mask_tokens(win, torch.Generator().manual_seed(0))
    bits, n = masked_bits(k2.masked_log_probs(mb.input_ids), mb)
    print(f"lambda phage ({ids.size:,} bp; train 80% / val 10% / test 10%): kmer2 k={k2.k} "
          f"alpha={k2.alpha} test {two:.4f} bits/base (MLM-masked positions {bits / n:.4f}, n={n}); "
          f"markov-{mm.order} {one:.4f}; kmer2 val {({k: round(v, 4) for k, v in table.items()})}")
    for v in (two, one, bits / n):
        assert math.isfinite(v) and v < 2.0
