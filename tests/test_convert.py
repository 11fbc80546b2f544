"""Checkpoint import: transformers MambaForCausalLM and mamba_ssm layouts give our logits."""

from __future__ import annotations

import json

import pytest
import torch

from mamba_dna.cli import main
from mamba_dna.convert import convert, detect_format
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.model import MambaConfig, MambaLM


def _hf_model(tmp_path, **kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = dict(vocab_size=37, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
               conv_kernel=4, time_step_rank=5)
    cfg.update(kw)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(**cfg)).eval()
    with torch.no_grad():  # away from init, so every tensor's mapping matters
        for name, p in hf.named_parameters():
            if name.endswith(("A_log", "D", "norm.weight", "norm_f.weight", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    return hf, src


@pytest.mark.parametrize("variant", ["tied", "untied_bias"])
def test_transformers_logits_match(tmp_path, variant):
    kw = {} if variant == "tied" else dict(tie_word_embeddings=False, use_bias=True, use_conv_bias=False)
    hf, src = _hf_model(tmp_path, **kw)
    assert detect_format(src) == "transformers"
    model = convert(src, tmp_path / "ours").eval()
    assert model.config.vocab_size == 37 and model.config.dt_rank_value == 5
    assert model.config.tokenizer == "external"
    assert not (tmp_path / "ours" / "tokenizer.json").exists()  # foreign vocab: no DNA tokenizer
    ids = torch.randint(0, 37, (2, 45), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits.float()  # (2, 45, 37)
        ours, _ = model(ids)
        loaded, _ = MambaLM.from_pretrained(tmp_path / "ours").eval()(ids)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded, ours, rtol=0, atol=0)
    assert model.config.tie_embeddings == (variant == "tied")
    with pytest.raises(ConfigError, match="DNA vocabulary"):  # foreign ids: not a DNA scorer
        model.log_probs(ids)


def _mamba_ssm_checkpoint(tmp_path, rms_norm=True, vocab=13):
    """A synthetic state-spaces/mamba checkpoint: its config.json layout + pytorch_model.bin."""
    cfg = MambaConfig(d_model=24, n_layer=2, d_state=4, d_conv=3, expand=2, dt_rank=3,
                      vocab_size=16, rms_norm=rms_norm, tokenizer="external")
    torch.manual_seed(1)
    ours = MambaLM(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    src = tmp_path / "ssm"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "d_model": 24, "d_intermediate": 0, "n_layer": 2, "vocab_size": vocab,
        "ssm_cfg": {"layer": "Mamba1", "d_state": 4, "d_conv": 3, "expand": 2, "dt_rank": 3},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": rms_norm, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }))
    # mamba_ssm saves both names of the tied weight (one shared storage)
    torch.save(ours.state_dict(), src / "pytorch_model.bin")
    return ours, src


@pytest.mark.parametrize("rms_norm", [True, False])
def test_mamba_ssm_round_trip(tmp_path, rms_norm):
    ours, src = _mamba_ssm_checkpoint(tmp_path, rms_norm=rms_norm)
    assert detect_format(src) == "mamba_ssm"
    conv = convert(src, tmp_path / "out", fmt="mamba_ssm").eval()
    assert conv.config.vocab_size == 16  # 13 padded to a multiple of 8, as MambaLMHeadModel does
    assert conv.config.d_conv == 3 and conv.config.dt_rank_value == 3
    ids = torch.randint(0, 13, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(conv(ids)[0], ours(ids)[0], rtol=0, atol=0)
    again = MambaLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids)[0], ours(ids)[0], rtol=0, atol=0)
    half = convert(src, tmp_path / "bf16", dtype="bfloat16", tokenizer="dna")
    assert half.backbone.embedding.weight.dtype == torch.bfloat16
    back = MambaLM.from_pretrained(tmp_path / "bf16")  # keeps the stored dtype
    assert back.backbone.layers[0].mixer.A_log.dtype == torch.bfloat16
    assert back.config.tokenizer == "mamba-dna-nucleotide" and (tmp_path / "bf16" / "tokenizer.json").exists()


def test_refuses_what_it_cannot_convert(tmp_path):
    _, src = _mamba_ssm_checkpoint(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "ssm_cfg": {"layer": "Mamba2"}}))
    with pytest.raises(ConfigError, match="Mamba2"):
        convert(src, None)
    (src / "config.json").write_text(json.dumps({**cfg, "attn_layer_idx": [1]}))
    with pytest.raises(ConfigError, match="attn_layer_idx"):
        convert(src, None)
    (src / "config.json").write_text(json.dumps(cfg))
    # a state dict with a tensor of the wrong shape names it
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    sd["backbone.layers.1.mixer.A_log"] = torch.zeros(5, 5)
    torch.save(sd, src / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"backbone\.layers\.1\.mixer\.A_log \(5, 5\)"):
        convert(src, None)
    # pickled objects other than tensors are refused (weights_only=True)
    torch.save({"x": _Evil()}, src / "pytorch_model.bin")
    with pytest.raises(InputError, match="weights_only"):
        convert(src, None)
    (src / "pytorch_model.bin").unlink()
    with pytest.raises(InputError, match="no weights found"):
        convert(src, None)
    with pytest.raises(InputError, match="config.json"):
        convert(tmp_path, None)
    with pytest.raises(ConfigError, match="--from"):
        convert(src, None, fmt="keras")


class _Evil:
    pass


def test_cli_convert(tmp_path, capsys):
    ours, src = _mamba_ssm_checkpoint(tmp_path)
    out = tmp_path / "cli_out"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src), str(out), "--from", "auto"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "nope"), str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err and err.strip().count("\n") == 0


def test_convert_caduceus_directory(shared_data, tmp_path):
    """A Caduceus hub directory converts to a CaduceusLM directory with the same logits."""
    from mamba_dna.load import load_model

    src = shared_data / "models" / "caduceus_ps"
    assert detect_format(src) == "caduceus"
    out = tmp_path / "ps"
    convert(src, out)
    a, b = load_model(src), load_model(out)
    assert type(b).__name__ == "CaduceusLM"
    ids = torch.randint(4, 8, (1, 57))
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="already a mamba-dna model directory"):
        convert(out, tmp_path / "again")
