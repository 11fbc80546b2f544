"""MambaLM: streaming == one pass == token steps, save/load, errors, checkpointing, LTI, RC.

Runs with the default scan dispatch (the fast CPU path on CPU tensors); sizes are small and
irregular so the sequential reference would also pass quickly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.model import (
    MambaConfig,
    MambaLM,
    MambaState,
    no_weight_decay_names,
    rc_average_hidden,
)
from mamba_dna.tokenizer import BASES, reverse_complement

TOL = dict(rtol=1e-4, atol=1e-4)  # fp32: the chunked scan sums in a different order


def tiny(seed: int = 0, **kw) -> MambaLM:
    torch.manual_seed(seed)
    cfg = dict(d_model=24, n_layer=2, d_state=8, d_conv=4)
    cfg.update(kw)
    model = MambaLM(MambaConfig(**cfg)).eval()
    # move A and dt away from init so that long memory and large steps are both exercised
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.A_log.add_(0.5 * torch.randn_like(layer.mixer.A_log))
            layer.mixer.D.add_(0.3 * torch.randn_like(layer.mixer.D))
    return model


def dna(batch: int, L: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 9, (batch, L), generator=g)  # A C G T N


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip_and_errors(tmp_path):
    cfg = MambaConfig(d_model=40, n_layer=3, selective=False, dt_rank=7)
    assert cfg.d_inner == 80 and cfg.dt_rank_value == 7
    assert MambaConfig(d_model=40).dt_rank_value == math.ceil(40 / 16)
    d = json.loads(cfg.to_json())
    assert d["mamba_dna_version"] and d["architecture"] == "MambaLM"
    assert MambaConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="d_modle"):
        MambaConfig.from_dict({**cfg.to_dict(), "d_modle": 3})
    with pytest.raises(ConfigError, match="d_state"):
        MambaConfig(d_state=0)
    with pytest.raises(ConfigError, match="vocab_size"):
        MambaConfig(vocab_size=5)  # smaller than the DNA vocabulary
    bad = tmp_path / "config.json"
    bad.write_text('{"d_model": 3,\n "n_layer": }')
    with pytest.raises(InputError, match="line 2"):
        MambaConfig.from_json_file(bad)


def test_initialisation_follows_mamba_ssm():
    cfg = MambaConfig(d_model=32, n_layer=3, d_state=12)
    torch.manual_seed(0)
    m = MambaLM(cfg)
    mix = m.backbone.layers[1].mixer
    assert torch.allclose(mix.A_log, torch.log(torch.arange(1, 13.0)).expand(cfg.d_inner, -1))
    assert torch.equal(mix.D, torch.ones(cfg.d_inner))
    dt = F.softplus(mix.dt_proj.bias)
    assert dt.min() >= cfg.dt_min * 0.999 and dt.max() <= cfg.dt_max * 1.001
    assert dt.std() > 0  # log-uniform, not constant
    assert mix.A_log._no_weight_decay and mix.D._no_weight_decay
    assert "backbone.layers.1.mixer.A_log" in no_weight_decay_names(m)
    assert "backbone.layers.1.mixer.in_proj.weight" not in no_weight_decay_names(m)
    assert m.lm_head.weight is m.backbone.embedding.weight  # tied
    # out_proj rescaled by 1/sqrt(n_layer): kaiming-uniform bound / sqrt(3)
    bound = 1 / math.sqrt(cfg.d_inner) / math.sqrt(cfg.n_layer)
    assert mix.out_proj.weight.abs().max() <= bound + 1e-6
    assert mix.out_proj.weight.abs().max() > 0.8 * bound
    names = {n for n, _ in m.named_parameters()}
    for n in ("backbone.embedding.weight", "backbone.layers.0.norm.weight", "backbone.norm_f.weight",
              "backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.conv1d.weight",
              "backbone.layers.0.mixer.x_proj.weight", "backbone.layers.0.mixer.dt_proj.bias",
              "backbone.layers.0.mixer.out_proj.weight"):
        assert n in names, n


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("selective", [True, False])
def test_parallel_equals_pieces_equals_steps(selective):
    model = tiny(selective=selective)
    ids = dna(3, 53)
    with torch.no_grad():
        full, st_full = model(ids)  # (3, 53, vocab)
        # irregular pieces, some shorter than the conv window (d_conv - 1 = 3)
        outs, st = [], None
        for a, b in [(0, 1), (1, 3), (3, 20), (20, 22), (22, 53)]:
            o, st = model(ids[:, a:b], st)
            outs.append(o)
        pieces = torch.cat(outs, dim=1)
        steps, st2 = [], None
        for t in range(ids.shape[1]):
            o, st2 = model.step(ids[:, t], st2)
            steps.append(o)
        steps = torch.stack(steps, dim=1)
    assert full.shape == (3, 53, model.config.vocab_size) and full.dtype == torch.float32
    torch.testing.assert_close(pieces, full, **TOL)
    torch.testing.assert_close(steps, full, **TOL)
    assert st.offset == st2.offset == 53
    for i in range(model.config.n_layer):
        torch.testing.assert_close(st.ssm[i], st_full.ssm[i], **TOL)
        torch.testing.assert_close(st2.ssm[i], st_full.ssm[i], **TOL)
        torch.testing.assert_close(st2.conv[i], st_full.conv[i], **TOL)
    # the carried state matters: without it the second half differs
    with torch.no_grad():
        cold, _ = model(ids[:, 30:])
    assert (cold - full[:, 30:]).abs().max() > 1e-3


def test_step_does_not_modify_given_state():
    model = tiny()
    ids = dna(2, 9)
    with torch.no_grad():
        _, st = model(ids)
    before = st.clone()
    model.step(ids[:, 0], st)
    for a, b in zip(st.ssm + st.conv, before.ssm + before.conv, strict=True):
        assert torch.equal(a, b)


def test_init_state_equals_none():
    model = tiny()
    ids = dna(2, 11)
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(ids, model.init_state(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(InputError, match="layers"):
        model(ids, MambaState(conv=[], ssm=[]))


def test_log_probs_scorer_protocol():
    model = tiny()
    ids = dna(2, 40)
    with torch.no_grad():
        lp, st = model.log_probs(ids)
        lp1, s1 = model.log_probs(ids[:, :17])
        lp2, _ = model.log_probs(ids[:, 17:], s1)
        logits, _ = model(ids)
    assert lp.shape == (2, 40, 4) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 40), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([lp1, lp2], 1), lp, **TOL)
    # renormalised over A, C, G, T: differences of log-probs are differences of logits
    base_logits = logits[..., list(BASES)]
    torch.testing.assert_close(lp - lp[..., :1], base_logits - base_logits[..., :1], **TOL)
    assert isinstance(model.name, str) and model.name


def test_hidden_layers():
    model = tiny(n_layer=3)
    ids = dna(2, 21)
    with torch.no_grad():
        h0, _ = model.hidden(ids, layer=0)
        hn, _ = model.hidden(ids, layer=3)
        hm1, _ = model.hidden(ids, layer=-1)
        hf, _ = model.hidden(ids)
        h1, s1 = model.hidden(ids[:, :8], layer=2)
        h2, _ = model.hidden(ids[:, 8:], s1, layer=2)
        h2full, _ = model.hidden(ids, layer=2)
    torch.testing.assert_close(h0, model.backbone.embedding(ids).float(), rtol=0, atol=0)
    torch.testing.assert_close(hn, hm1, rtol=0, atol=0)
    torch.testing.assert_close(hf, model.backbone.norm_f(hn), **TOL)
    torch.testing.assert_close(torch.cat([h1, h2], 1), h2full, **TOL)
    assert not torch.allclose(h2full, hn)
    with pytest.raises(ConfigError, match="layer=4"):
        model.hidden(ids, layer=4)


def test_hidden_module_hook_reads_what_hidden_returns_and_states_stack():
    """The scorer protocol's tap (scorer.HiddenTap) reads `hidden`'s value inside `log_probs`;
    MambaState.stack batches single-sequence states as one call would have made them."""
    from mamba_dna.scorer import HiddenTap, clone_state, stack_states

    model = tiny(n_layer=3)
    ids = dna(2, 21)
    with torch.no_grad():
        for layer in (None, 0, 2, -1, -4):
            want, _ = model.hidden(ids, layer=layer)
            with HiddenTap(model, layer) as tap:
                model.log_probs(ids)
            torch.testing.assert_close(tap.take(), want, rtol=0, atol=0)
        with pytest.raises(ConfigError, match=r"--emb-layer 4: expected an integer in \[-4, 3\]"):
            HiddenTap(model, 4)
        _, s0 = model.log_probs(ids[:1, :9])
        _, s1 = model.log_probs(ids[1:, :9])
        _, both = model.log_probs(ids[:, :9])
        st = stack_states([clone_state(s0), s1])
        lp, _ = model.log_probs(ids[:, 9:], st)
        lp_ref, _ = model.log_probs(ids[:, 9:], both)
    assert st.batch == 2
    torch.testing.assert_close(lp, lp_ref, **TOL)


def test_generate_greedy_and_allowed():
    model = tiny()
    prompt = dna(2, 6)
    out = model.generate(prompt, 12, temperature=0)
    assert out.shape == (2, 18) and torch.equal(out[:, :6], prompt)
    with torch.no_grad():  # greedy continuation == argmax of a full forward pass
        logits, _ = model(out[:, :-1])
    torch.testing.assert_close(out[:, 6:], logits[:, 5:].argmax(-1), rtol=0, atol=0)
    g = torch.Generator().manual_seed(3)
    s = model.generate(prompt, 30, temperature=1.5, top_k=3, allowed=BASES, generator=g)
    assert set(s[:, 6:].unique().tolist()) <= set(BASES)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    from safetensors.torch import load_file

    model = tiny(vocab_size=16)
    d = model.save_pretrained(tmp_path / "m")
    assert {p.name for p in d.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                             "mamba_dna_version"}
    assert not list(d.glob("*.tmp"))
    assert "lm_head.weight" not in load_file(str(d / "model.safetensors"))  # tied: stored once
    loaded = MambaLM.from_pretrained(d).eval()
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    ids = dna(2, 33)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0], rtol=0, atol=0)
    # untied weights are both stored and kept apart
    untied = tiny(tie_embeddings=False)
    MambaLM.from_pretrained(untied.save_pretrained(tmp_path / "u"))
    assert "lm_head.weight" in load_file(str(tmp_path / "u" / "model.safetensors"))
    # overrides
    ck = MambaLM.from_pretrained(d, gradient_checkpointing=True)
    assert ck.config.gradient_checkpointing


def test_load_names_missing_and_misshaped_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    d = tiny().save_pretrained(tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    del sd["backbone.layers.1.mixer.D"]
    sd["backbone.layers.0.mixer.x_proj.weight"] = torch.zeros(3, 3)
    sd["backbone.layers.7.mixer.D"] = torch.zeros(3)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(InputError) as e:
        MambaLM.from_pretrained(d)
    msg = str(e.value)
    assert "missing: backbone.layers.1.mixer.D" in msg
    assert "mis-shaped: backbone.layers.0.mixer.x_proj.weight (3, 3)" in msg
    assert "unexpected: backbone.layers.7.mixer.D" in msg
    assert "\n" not in e.value.one_line()
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="model.safetensors"):
        MambaLM.from_pretrained(d)
    with pytest.raises(InputError, match="config.json"):
        MambaLM.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- training


def test_gradient_checkpointing_same_gradients():
    ids = dna(2, 29)
    grads = []
    for ckpt in (False, True):
        model = tiny(seed=5, gradient_checkpointing=ckpt).train()
        logits, _ = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)
    assert grads[0]["backbone.layers.0.mixer.A_log"].abs().sum() > 0


@pytest.mark.parametrize("ckpt", [False, True])
def test_cpu_tiling_equals_one_pass(monkeypatch, ckpt):
    """A long CPU input runs in tiles with the state carried: same logits, state and grads."""
    import mamba_dna.model as M

    ids = dna(2, 2600)
    monkeypatch.setattr(M, "CPU_TILE_ACTIVATIONS", 1)  # the 1024-token minimum tile
    assert M._cpu_tile_tokens(2, 48, 2600, torch.device("cpu")) == 1024
    assert M._cpu_tile_tokens(2, 48, 1000, torch.device("cpu")) == 0  # fits in one tile
    out = []
    for tiled in (False, True):
        monkeypatch.setenv("MAMBA_DNA_CPU_TILE", "" if tiled else "0")
        model = tiny(seed=3, gradient_checkpointing=ckpt).train()
        logits, st = model(ids)
        logits.logsumexp(-1).mean().backward()
        out.append((logits.detach(), st, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, s0, g0), (l1, s1, g1) = out
    torch.testing.assert_close(l1, l0, **TOL)
    assert s1.offset == s0.offset == 2600
    for a, b in zip(s1.ssm + s1.conv, s0.ssm + s0.conv, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-5, msg=n)


def test_gradient_flows_through_carried_state():
    """Truncated BPTT across pieces: a loss on piece 2 reaches piece 1's state if not detached."""
    model = tiny().train()
    ids = dna(1, 24)
    _, st = model(ids[:, :12])
    logits, _ = model(ids[:, 12:], st)
    logits.sum().backward()
    g = model.backbone.embedding.weight.grad
    assert g[ids[0, :12].unique()].abs().sum() > 0


def test_lti_switch_makes_dt_B_C_input_independent(monkeypatch):
    import mamba_dna.model as M

    seen = []
    real = M.selective_scan_fn

    def spy(u, delta, A, B, C, *a, **kw):
        seen.append((delta.detach().clone(), B.detach().clone(), C.detach().clone()))
        return real(u, delta, A, B, C, *a, **kw)

    monkeypatch.setattr(M, "selective_scan_fn", spy)
    ids = dna(2, 17)
    lti = tiny(selective=False)
    sel = tiny(selective=True)
    names = {n for n, _ in lti.named_parameters()}
    assert "backbone.layers.0.mixer.x_proj.weight" not in names
    assert "backbone.layers.0.mixer.B_lti" in names
    with torch.no_grad():
        lti(ids)
    delta, B, C = seen[0]
    assert torch.equal(delta, torch.zeros_like(delta))  # dt = softplus(dt_bias) everywhere
    assert torch.equal(B, B[:1, ..., :1].expand_as(B)) and torch.equal(C, C[:1, ..., :1].expand_as(C))
    seen.clear()
    with torch.no_grad():
        sel(ids)
    delta, B, C = seen[0]
    assert (B - B[..., :1]).abs().max() > 1e-3 and (delta - delta[..., :1]).abs().max() > 1e-3
    # and the LTI model trains: gradients reach its per-channel B and C
    out, _ = lti.train()(ids)
    out.sum().backward()
    assert lti.backbone.layers[0].mixer.C_lti.grad.abs().sum() > 0


def test_bfloat16_forward_runs_close_to_fp32():
    model = tiny()
    ids = dna(1, 40)
    with torch.no_grad():
        ref, _ = model(ids)
        low, _ = model.to(torch.bfloat16)(ids)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


# ----------------------------------------------------------------------------- RC averaging


def test_rc_average_is_strand_symmetric():
    model = tiny()
    ids = dna(2, 31)
    with torch.no_grad():
        a = rc_average_hidden(model, ids)
        b = rc_average_hidden(model, reverse_complement(ids))
        plain, _ = model.hidden(ids)
        a1 = rc_average_hidden(model, ids, layer=1)
        b1 = rc_average_hidden(model, reverse_complement(ids), layer=1)
    assert a.shape == (2, 31, model.config.d_model)
    torch.testing.assert_close(b, a.flip(1), **TOL)
    torch.testing.assert_close(b1, a1.flip(1), **TOL)
    assert (a - plain).abs().max() > 1e-4  # the reverse strand contributes
