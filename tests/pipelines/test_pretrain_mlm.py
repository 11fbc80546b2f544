"""`mamba-dna pretrain --arch bimamba|caduceus-ph|caduceus-ps`: masked-LM batches, the
two-sided k-mer baseline at the masked validation positions, exact resume, refusals of the
wrong objective, and the exported CaduceusLM (loadable, RC-equivariant for PS).

Shares test_pretrain.py's toy FASTA and tiny config (d_model 16, 1 layer, 64 bp windows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_pretrain import (  # noqa: F401
    _ddp_worker,
    _ref_backend_one_thread,
    assert_same_weights,
    free_port,
    rows,
    tiny,
    weights,
    write_toy_fasta,
)

from mamba_dna.errors import ConfigError
from mamba_dna.mlm import IGNORE
from mamba_dna.pipelines import pretrain as pt
from mamba_dna.tokenizer import MASK, A, N, T, reverse_complement


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    return write_toy_fasta(tmp_path_factory.mktemp("fa") / "toy.fa")


def tiny_mlm(fasta, out, **kw) -> pt.PretrainConfig:
    return tiny(fasta, out, **{"arch": "caduceus-ps", **kw})


# --------------------------------------------------------------------------- config, batches


@pytest.mark.parametrize("kw, msg", [
    (dict(arch="mamba", objective="mlm"), "--objective mlm needs a bidirectional --arch"),
    (dict(arch="caduceus-ps", objective="clm"), "--objective clm with --arch caduceus-ps"),
    (dict(arch="bimamba", objective="clm"), "--objective clm with --arch bimamba"),
    (dict(arch="caduceus-ph", rc_augment=False), "caduceus-ph is BiMamba trained with reverse-complement"),
    (dict(arch="caduceus"), "--arch 'caduceus': expected one of"),
    (dict(arch="bimamba", mask_prob=0.0), "masking 0.0"),
])
def test_wrong_objective_or_arch_is_a_config_error(fasta, tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        tiny(fasta, tmp_path / "x", **kw)


def test_objective_defaults_to_the_archs_own(fasta, tmp_path):
    assert tiny(fasta, tmp_path / "a").resolved_objective == "clm"
    for arch in ("bimamba", "caduceus-ph", "caduceus-ps"):
        assert tiny(fasta, tmp_path / "a", arch=arch).resolved_objective == "mlm"


def test_build_model_per_arch(fasta, tmp_path):
    from mamba_dna.caduceus import CaduceusLM
    from mamba_dna.model import MambaLM

    assert type(pt.build_model(tiny(fasta, tmp_path / "a"))) is MambaLM
    for arch, rcps in (("bimamba", False), ("caduceus-ph", False), ("caduceus-ps", True)):
        m = pt.build_model(tiny(fasta, tmp_path / "a", arch=arch))
        assert isinstance(m, CaduceusLM) and m.config.bidirectional and m.config.rcps is rcps


@pytest.mark.parametrize("argv, needle", [
    (["--arch", "mamba", "--objective", "mlm"], "--objective mlm needs a bidirectional --arch"),
    (["--arch", "caduceus-ps", "--objective", "clm"], "--objective clm with --arch caduceus-ps"),
])
def test_cli_refuses_the_wrong_objective_in_one_line_exit_2(fasta, tmp_path, capsys, argv, needle):
    from mamba_dna.cli import main

    with pytest.raises(SystemExit) as e:
        main(["pretrain", str(fasta), "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o").exists()


def _windows(n: int, L: int, seed: int = 1) -> pt.WindowData:
    rng = np.random.default_rng(seed)
    tok = rng.integers(A, T + 1, size=(n, L)).astype(np.uint8)  # (n, L)
    tok[:, :5] = N  # an N run: never a target
    sm = np.zeros((n, L), bool)
    sm[:, L // 2 :] = True  # second half lower-case
    return pt.WindowData(tok, sm, "test")


def test_mlm_batch_caduceus_masking_deterministic_per_step_and_slot(fasta, tmp_path):
    cfg = tiny_mlm(fasta, tmp_path / "x", softmask_weight=0.1, seed=5)
    data = _windows(8, 2048)
    cpu = torch.device("cpu")
    inp, tgt, w = pt.make_mlm_batch(data, [0, 1, 2, 3], [0, 1, 2, 3], np.zeros(4, bool), 2048, 7, cpu, cfg)
    assert inp.shape == tgt.shape == w.shape == (4, 2048)
    tok = torch.from_numpy(data.tokens[:4].astype(np.int64))
    chosen = tgt != IGNORE
    assert not chosen[:, :5].any()  # N never a target
    assert torch.equal(tgt[chosen], tok[chosen])  # targets are the original bases
    assert torch.equal(inp[~chosen], tok[~chosen])  # untouched elsewhere
    frac = chosen.float().mean().item()
    assert 0.13 < frac < 0.17
    masked = (inp[chosen] == MASK).float().mean().item()
    kept = (inp[chosen] == tok[chosen]).float().mean().item()  # 10% kept + random base equal to it
    assert 0.76 < masked < 0.84 and 0.1 < kept < 0.16
    low = w[chosen & torch.from_numpy(data.softmask[:4])]
    assert low.numel() > 0 and torch.allclose(low, torch.full_like(low, 0.1))
    assert torch.all(w[chosen & ~torch.from_numpy(data.softmask[:4])] == 1.0) and torch.all(w[~chosen] == 0)

    # a function of (seed, step, slot): the same slot on another rank's call, another step differs
    inp2, tgt2, _ = pt.make_mlm_batch(data, [2, 3], [2, 3], np.zeros(2, bool), 2048, 7, cpu, cfg)
    assert torch.equal(inp2, inp[2:]) and torch.equal(tgt2, tgt[2:])
    _, tgt3, _ = pt.make_mlm_batch(data, [0, 1, 2, 3], [0, 1, 2, 3], np.zeros(4, bool), 2048, 8, cpu, cfg)
    assert not torch.equal(tgt3, tgt)
    # length warmup: the same masks, cut into rows
    inp4, tgt4, _ = pt.make_mlm_batch(data, [0, 1, 2, 3], [0, 1, 2, 3], np.zeros(4, bool), 512, 7, cpu, cfg)
    assert inp4.shape == (16, 512) and torch.equal(tgt4.reshape(4, 2048), tgt)
    # a flipped window is masked on its reverse-complement strand
    _, tgt5, _ = pt.make_mlm_batch(data, [0], [0], np.ones(1, bool), 2048, 7, cpu, cfg)
    rc = reverse_complement(tok[:1])
    ch5 = tgt5 != IGNORE
    assert torch.equal(tgt5[ch5], rc[ch5]) and not ch5[:, -5:].any()


# --------------------------------------------------------------------------- runs


def test_mlm_run_learns_checkpoints_and_resumes_exactly(fasta, tmp_path):
    kw = dict(steps=10, eval_every=5, log_every=1, softmask_weight=0.1)
    full = pt.run(tiny_mlm(fasta, tmp_path / "full", **kw))
    run = tmp_path / "full"
    assert full.step == 10 and full.stopped_by is None and full.arch == "caduceus-ps"
    assert full.objective == "mlm" and full.markov is None and full.kmer2["kind"] == "kmer2"
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"] == "caduceus-ps" and saved["objective"] == "mlm"
    r = rows(run)
    tr = [x for x in r if x["split"] == "train"]
    val = [x for x in r if x["split"] == "val"]
    assert [x["seq_len"] for x in tr][:3] == [16, 32, 64]  # length warmup kept
    assert np.mean([x["loss"] for x in tr[-3:]]) < np.mean([x["loss"] for x in tr[:3]])  # it learns
    assert [x["step"] for x in val] == [5, 10] and val[-1]["bits_per_base"] < val[0]["bits_per_base"]
    base = json.loads((run / "baseline.json").read_text())
    assert base["k"] in base["val_bits_by_k"] or str(base["k"]) in base["val_bits_by_k"]
    for v in val:  # same masked positions every evaluation, the baseline on them
        assert v["objective"] == "mlm" and v["masked_bits_per_base"] == v["bits_per_base"]
        assert v["masked_targets"] == val[0]["masked_targets"] == base["val_targets"] > 0
        assert v["kmer2_bits_per_base"] == base["masked_bits_per_base"] and v["kmer2_k"] == base["k"]
        assert 0 < v["bits_per_base"] < 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kmer2"]["masked_bits_per_base"] == base["masked_bits_per_base"]
    assert summary["final_val_bits_per_base"] == val[-1]["masked_bits_per_base"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = torch.load(pt.checkpoint_paths(run)[-1], weights_only=True)
    assert ck["step"] == 10 and ck["config"]["arch"] == "caduceus-ps"

    # stopped after step 3 (between evaluations, inside the length warmup), then resumed
    part = pt.run(tiny_mlm(fasta, tmp_path / "part", **kw), stop_at=3)
    assert part.stopped_by == "--stop-at 3" and not (tmp_path / "part" / "model").exists()
    done = pt.run(tiny_mlm(fasta, tmp_path / "part", **kw), resume=True)
    assert done.step == 10
    assert_same_weights(weights(run), weights(tmp_path / "part"))
    assert rows(run) == rows(tmp_path / "part")


def test_resume_lends_the_arch_and_lists_a_changed_one(fasta, tmp_path, capsys):
    out = tmp_path / "run"
    pt.run(tiny_mlm(fasta, out, steps=3, eval_every=3), stop_at=1)
    # a plain --resume (no --arch given) continues the caduceus run
    cfg = pt.config_from_cli([], str(out), None, None, {}, {"arch": None, "objective": None})
    assert cfg.arch == "caduceus-ps" and cfg.objective == "mlm"
    capsys.readouterr()
    changed = pt.config_from_cli([str(fasta)], str(out), None, None, {"d_model": 16, "n_layer": 1, "d_state": 4},
                                 {"arch": "bimamba", "objective": None, "seq_len": 64})
    from mamba_dna.pipelines.pretrain.rundir import prepare_run

    kept, resuming = prepare_run(changed, resume=True)
    err = capsys.readouterr().err
    assert resuming and kept.arch == "caduceus-ps" and kept.objective == "mlm"
    assert "ignoring changed option(s)" in err and "arch" in err.split("ignoring changed option(s)")[1]
    # --arch mamba (the default value) given on a caduceus run is listed too, and not refused
    # for the run's objective (mlm is not lent with a given arch)
    back = pt.config_from_cli([str(fasta)], str(out), None, None, {"d_model": 16, "n_layer": 1, "d_state": 4},
                              {"arch": "mamba", "objective": None, "seq_len": 64})
    kept, _ = prepare_run(back, resume=True)
    err = capsys.readouterr().err
    assert kept.arch == "caduceus-ps" and "arch" in err.split("ignoring changed option(s)")[1]


def test_exported_model_loads_as_caduceus_and_is_rc_equivariant(fasta, tmp_path):
    from mamba_dna.caduceus import CaduceusLM
    from mamba_dna.load import load_model
    from mamba_dna.tokenizer import COMPLEMENT

    trainer = pt.Pretrainer(tiny_mlm(fasta, tmp_path / "stopped", steps=6), stop_at=2)
    trainer.run()
    model_dir = trainer.export()  # a stopped run validated once, then exported
    last = rows(tmp_path / "stopped")[-1]
    assert last["stopped_early"] is True and last["objective"] == "mlm"
    m = load_model(str(model_dir))
    assert isinstance(m, CaduceusLM) and m.config.rcps and not m.training
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v.cpu(), rtol=0, atol=0, msg=k)
    ids = torch.randint(A, T + 1, (2, 37))  # (2, 37) an odd length
    ids[0, 3] = MASK
    with torch.no_grad():
        fwd = m(ids)  # (2, 37, 9)
        rev = m(reverse_complement(ids))
    comp = torch.as_tensor(COMPLEMENT).long()
    torch.testing.assert_close(rev.flip(1)[..., comp], fwd, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_mlm_ddp_two_ranks_match_one_process(fasta, tmp_path):
    """Masks are a function of (seed, step, slot in the global batch): 2 ranks, each masking
    its slice, train the same model as 1 process, and a 1-process checkpoint resumes on 2."""
    kw = dict(steps=4, eval_every=4, log_every=1, seq_warmup_steps=2)
    single = tmp_path / "single"
    pt.run(tiny_mlm(fasta, single, **kw))
    pt.run(tiny_mlm(fasta, tmp_path / "1to2", **kw), stop_at=2)
    phases = [(tiny_mlm(fasta, tmp_path / "ddp", **kw).to_dict(), None, free_port()),
              (tiny_mlm(fasta, tmp_path / "1to2", **kw).to_dict(), None, free_port())]
    mp.spawn(_ddp_worker, args=(2, phases), nprocs=2, join=True)
    ref = rows(single)
    for run in ("ddp", "1to2"):
        assert_same_weights(weights(single), weights(tmp_path / run), atol=2e-5)
        for a, b in zip(ref, rows(tmp_path / run), strict=True):
            assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_validation_masks_every_chosen_position(fasta, tmp_path):
    """At validation the model never sees the base it is scored on (no 10% kept / random)."""
    from mamba_dna.pipelines.pretrain.evaluate import val_masked_batches

    cfg = tiny_mlm(fasta, tmp_path / "x", seed=2)
    data = _windows(6, 4096)
    a = list(val_masked_batches(cfg, data, [0, 1, 2, 3, 4, 5], 4))
    b = list(val_masked_batches(cfg, data, [0, 1, 2, 3, 4, 5], 4))
    assert [x.n_targets for x in a] == [x.n_targets for x in b] and a[0].n_targets > 0
    for x, y, part in zip(a, b, ([0, 1, 2, 3], [4, 5]), strict=True):  # the same positions every time
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.targets, y.targets)
        tok = torch.from_numpy(data.tokens[part].astype(np.int64))
        assert torch.all(x.input_ids[x.chosen] == MASK) and torch.equal(x.targets[x.chosen], tok[x.chosen])
        assert torch.equal(x.input_ids[~x.chosen], tok[~x.chosen])
        assert 0.13 < x.chosen.float().mean().item() < 0.17
