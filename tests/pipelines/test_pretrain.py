"""`mamba-dna pretrain`: schedule, batches, optimizer groups, checkpoints, exact resume,
non-finite handling, DDP equivalence (2 gloo processes) and stop signals.

Tiny models (d_model 16, 1 layer, 64 bp windows) on a small FASTA written per test; the
reference selective scan (MAMBA_DNA_BACKEND=ref) keeps child processes free of JIT time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mamba_dna import training
from mamba_dna.errors import ConfigError, InputError, MambaDNAError
from mamba_dna.pipelines import pretrain as pt
from mamba_dna.tokenizer import A, C, G, N, T

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _ref_backend_one_thread(monkeypatch):
    monkeypatch.setenv("MAMBA_DNA_BACKEND", "ref")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    return write_toy_fasta(tmp_path_factory.mktemp("fa") / "toy.fa")


def write_toy_fasta(path: Path) -> Path:
    """Three 6 kb records drawn from an order-2 Markov chain (learnable, deterministic)."""
    rng = np.random.default_rng(7)
    P = rng.dirichlet(np.full(4, 0.3), size=16)  # (16 contexts, 4)
    with open(path, "w") as f:
        for r in range(3):
            a, b, seq = 0, 1, []
            u = rng.random(6000)
            for x in u:
                c = int(np.searchsorted(np.cumsum(P[a * 4 + b]), x).clip(0, 3))
                seq.append("ACGT"[c])
                a, b = b, c
            s = "".join(seq)
            s = s[:3000] + s[3000:3100].lower() + "N" * 20 + s[3120:]  # soft-mask and N
            f.write(f">rec{r}\n" + "\n".join(s[i : i + 70] for i in range(0, len(s), 70)) + "\n")
    return path


def tiny(fasta: Path, out: Path, **kw) -> pt.PretrainConfig:
    d = dict(inputs=[str(fasta)], out=str(out), model={"d_model": 16, "n_layer": 1, "d_state": 4},
             seq_len=64, seq_len_start=16, seq_warmup_steps=2, batch_size=4, grad_accum=2,
             steps=6, lr=5e-3, warmup_steps=2, eval_every=3, eval_windows=4, eval_batch_size=4,
             log_every=2, checkpoint_every=100, keep_last=2, markov_orders=[0, 1, 2],
             block_size=512, test_fraction=0.0, device="cpu")
    d.update(kw)
    return pt.PretrainConfig(**d)


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def rows(run: Path, drop=("tokens_per_s", "eval_s")) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in drop})
    return out


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0 if atol == 0 else 1e-5, atol=atol, msg=k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- pure parts


def test_sequence_length_warmup_keeps_tokens_per_step():
    cfg = pt.PretrainConfig(inputs=["x"], seq_len=1024, seq_len_start=128, seq_warmup_steps=30, steps=100)
    assert cfg.stage_lengths() == [128, 256, 512, 1024]
    lens = [cfg.seq_len_at(s) for s in range(100)]
    assert lens[:10] == [128] * 10 and lens[10:20] == [256] * 10 and lens[20:30] == [512] * 10
    assert set(lens[30:]) == {1024}
    assert pt.PretrainConfig(inputs=["x"], seq_len=1024).stage_lengths() == [1024]
    with pytest.raises(ConfigError, match="power of two"):
        pt.PretrainConfig(inputs=["x"], seq_len=1024, seq_len_start=384).validate()


def test_lr_schedule_warmup_then_cosine():
    cfg = pt.PretrainConfig(inputs=["x"], steps=110, warmup_steps=10, min_lr_ratio=0.1)
    f = [cfg.lr_factor(s) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(f[10:], f[11:], strict=False))  # monotone decay
    assert f[60] == pytest.approx(0.55) and cfg.lr_factor(110) == pytest.approx(0.1)


@pytest.mark.parametrize("kw,msg", [
    (dict(inputs=[]), "no input"),
    (dict(split_by="chrom"), "split-by"),
    (dict(precision="fp16"), "precision"),
    (dict(seq_warmup_steps=5), "seq-len-start"),
])
def test_config_mistakes_are_config_errors(kw, msg):
    d = dict(inputs=["x"])
    d.update(kw)
    with pytest.raises(ConfigError, match=msg):
        pt.PretrainConfig(**d).validate()


def test_make_batch_targets_weights_and_strand():
    toks = np.array([[A, C, G, T, N, A, A, C], [C, C, G, G, T, T, A, N]], np.uint8)  # (2, 8)
    sm = np.zeros_like(toks, bool)
    sm[0, 2:4] = True
    data = pt.WindowData(toks, sm, "test")
    inp, tgt, w = pt.make_batch(data, [0, 1], np.array([False, False]), 8, torch.device("cpu"), 0.5)
    assert inp.shape == tgt.shape == w.shape == (2, 7)
    assert torch.equal(tgt[0], torch.tensor([C, G, T, N, A, A, C]))
    assert w[0].tolist() == [1, 0.5, 0.5, 0, 1, 1, 1]  # N target 0, soft-masked targets 0.5
    assert w[1, -1] == 0  # N target
    # warmup: each window cut into 2 rows of 4 -> same tokens per step
    inp2, tgt2, _ = pt.make_batch(data, [0, 1], np.array([False, False]), 4, torch.device("cpu"), 1.0)
    assert inp2.shape == (4, 3) and torch.equal(tgt2[1], torch.tensor([A, A, C]))
    # reverse strand: complement reversed, soft-mask flag follows its base
    _, tgt3, w3 = pt.make_batch(data, [0], np.array([True]), 8, torch.device("cpu"), 0.5)
    assert torch.equal(tgt3[0], torch.tensor([T, T, N, A, C, G, T]))
    assert w3[0].tolist() == [1, 1, 0, 0.5, 0.5, 1, 1]


def test_strands_depend_on_seed_and_step_only():
    f1 = pt.strand_flips(5, 64, seed=1, rc=True)
    f2 = pt.strand_flips(5, 64, seed=1, rc=True)
    f3 = pt.strand_flips(6, 64, seed=1, rc=True)
    assert np.array_equal(f1, f2) and not np.array_equal(f1, f3) and 10 < f1.sum() < 54
    assert not pt.strand_flips(5, 8, seed=1, rc=False).any()


def test_param_groups_no_decay_on_A_log_D_norms_biases():
    from mamba_dna.model import MambaConfig, MambaLM

    m = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=4))
    groups = training.param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert not decay & no_decay
    assert len(decay) + len(no_decay) == len({id(p) for p in m.parameters()})  # tied once
    for n in no_decay | decay:
        leaf = n.rsplit(".", 1)[-1]
        if leaf in ("A_log", "D", "bias") or "norm" in n:
            assert n in no_decay, n
    assert "backbone.layers.0.mixer.in_proj.weight" in decay


def test_rng_state_and_numpy_survive_weights_only_load(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = training.rng_state()
    ahead = (torch.rand(3), np.random.rand(3), random.random())
    blob = {"rng": state, "sampler": training.to_weights_only({"perm": np.arange(5, dtype=np.int32), "k": np.int64(2)})}
    training.save_checkpoint(tmp_path / "c.pt", {"format": pt.CKPT_FORMAT, **blob})
    back = pt.load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    training.set_rng_state(back["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(ahead[0], again[0]) and np.array_equal(ahead[1], again[1]) and ahead[2] == again[2]
    s = training.from_weights_only(back["sampler"])
    assert s["perm"].dtype == np.int32 and s["perm"].tolist() == [0, 1, 2, 3, 4] and s["k"] == 2
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        pt.load_checkpoint(tmp_path / "bad.pt")


# --------------------------------------------------------------------------- runs


def test_run_outputs_and_exact_resume(fasta, tmp_path):
    from mamba_dna.model import MambaLM

    full = pt.run(tiny(fasta, tmp_path / "full", log_every=1))
    run = tmp_path / "full"
    assert full.step == 6 and full.stopped_by is None
    cfg = pt.PretrainConfig.load(run / "config.json")
    assert cfg.seq_len == 64 and cfg.model["d_model"] == 16
    r = rows(run)
    val = [x for x in r if x["split"] == "val"]
    assert [x["step"] for x in val] == [3, 6]
    assert all(0 < x["bits_per_base"] < 4 and x["markov_bits_per_base"] > 0 for x in val)
    assert [x["seq_len"] for x in r if x["split"] == "train"] == [16, 32, 64, 64, 64, 64]  # warmup
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base = json.loads((run / "baseline.json").read_text())
    assert base["order"] in (0, 1, 2) and val[-1]["markov_bits_per_base"] == base["bits_per_base"]
    m = MambaLM.from_pretrained(run / "model")
    assert m.config.d_model == 16
    cks = pt.checkpoint_paths(run)
    assert [p.name for p in cks] == ["step_00000006.pt"] or len(cks) <= 2
    ck = torch.load(cks[-1], weights_only=True)
    assert ck["step"] == 6 and {"model", "optimizer", "scheduler", "sampler", "rng"} <= set(ck)

    # interrupted after step 4 (between evaluations), then resumed
    part = pt.run(tiny(fasta, tmp_path / "part", log_every=1), stop_at=4)
    assert part.stopped_by == "--stop-at 4" and part.step == 4
    assert not (tmp_path / "part" / "model").exists()
    done = pt.run(tiny(fasta, tmp_path / "part", log_every=1), resume=True)
    assert done.step == 6
    assert_same_weights(weights(run), weights(tmp_path / "part"))
    assert rows(run) == rows(tmp_path / "part")

    # an existing run directory resumes without --resume; a finished one stays finished
    again = pt.run(tiny(fasta, tmp_path / "part"))
    assert again.step == 6


def test_export_turns_a_stopped_run_into_a_model(fasta, tmp_path):
    from mamba_dna.model import MambaLM

    trainer = pt.Pretrainer(tiny(fasta, tmp_path / "stopped"), stop_at=4)
    result = trainer.run()
    assert result.stopped_by == "--stop-at 4" and result.step == 4 and result.parameters > 0
    assert not (tmp_path / "stopped" / "model").exists()
    model_dir = trainer.export()
    assert model_dir == tmp_path / "stopped" / "model"
    last = rows(tmp_path / "stopped")[-1]
    assert last["split"] == "val" and last["step"] == 4 and last["stopped_early"] is True
    assert 0 < last["bits_per_base"] < 4
    exported = MambaLM.from_pretrained(model_dir).state_dict()
    for k, v in trainer.model.state_dict().items():  # the weights in memory, as they stood
        torch.testing.assert_close(exported[k], v.cpu(), rtol=0, atol=0, msg=k)


def test_non_finite_steps_are_skipped_then_stop(fasta, tmp_path):
    def poison(step, info):
        if step == 2:
            with torch.no_grad():
                next(info["model"].parameters()).fill_(float("nan"))

    cfg = tiny(fasta, tmp_path / "nan", steps=10, checkpoint_every=1, eval_every=100, max_bad_steps=3)
    with pytest.raises(MambaDNAError, match="non-finite losses in a row"):
        pt.run(cfg, on_step=poison)
    cks = pt.checkpoint_paths(tmp_path / "nan")
    assert cks, "checkpoints before the poison must exist"
    for p in cks:  # no checkpoint with NaN weights was written
        sd = torch.load(p, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in sd.values()), p.name
        assert torch.load(p, weights_only=True)["step"] <= 2


def test_existing_foreign_directory_and_missing_input_are_user_errors(fasta, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a pretrain run"):
        pt.run(tiny(fasta, tmp_path / "busy"))
    with pytest.raises(InputError, match="no such file"):
        pt.run(tiny(tmp_path / "missing.fa", tmp_path / "new"))


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    from mamba_dna.cli import main

    with pytest.raises(SystemExit) as e:
        main(["pretrain", str(tmp_path / "nope.fa"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "nope.fa" in err[0] and "Traceback" not in err[0]


# --------------------------------------------------------------------------- DDP (2 gloo processes)


def _ddp_worker(rank: int, world: int, phases: list) -> None:
    """Run several pretrain calls in one spawned job (process start-up is the costly part)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), MAMBA_DNA_BACKEND="ref")
    torch.set_num_threads(1)
    for cfg_dict, stop_at, port in phases:
        os.environ["MASTER_PORT"] = str(port)
        pt.run(pt.PretrainConfig(**cfg_dict), stop_at=stop_at)


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process_and_checkpoints_cross_world_sizes(fasta, tmp_path):
    kw = dict(steps=5, eval_every=5, log_every=1, seq_warmup_steps=2)
    single = tmp_path / "single"
    pt.run(tiny(fasta, single, **kw))
    ref_w, ref_rows = weights(single), rows(single)
    pt.run(tiny(fasta, tmp_path / "1to2", **kw), stop_at=3)  # written by 1 process

    phases = [
        (tiny(fasta, tmp_path / "ddp", **kw).to_dict(), None, free_port()),  # full run on 2
        (tiny(fasta, tmp_path / "2to1", **kw).to_dict(), 2, free_port()),  # stopped on 2
        (tiny(fasta, tmp_path / "1to2", **kw).to_dict(), None, free_port()),  # resumed on 2
    ]
    mp.spawn(_ddp_worker, args=(2, phases), nprocs=2, join=True)

    # 2 ranks, same global batch: same losses and parameters (fp32 reduction order only)
    assert_same_weights(ref_w, weights(tmp_path / "ddp"), atol=2e-5)
    for a, b in zip(ref_rows, rows(tmp_path / "ddp"), strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # written by 1, resumed by 2
    assert_same_weights(ref_w, weights(tmp_path / "1to2"), atol=2e-5)
    # written by 2 ranks, resumed by 1
    ck = torch.load(pt.checkpoint_paths(tmp_path / "2to1")[-1], weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 2
    pt.run(tiny(fasta, tmp_path / "2to1", **kw), resume=True)
    assert_same_weights(ref_w, weights(tmp_path / "2to1"), atol=2e-5)


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_exits_0_and_resumes_to_the_same_weights(fasta, tmp_path, sig):
    steps = 30
    out = tmp_path / "run"
    calls = tmp_path / "scontrol_calls.txt"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, MAMBA_DNA_BACKEND="ref", SLURM_JOB_ID="777", OMP_NUM_THREADS="1",
               PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("SLURM_NTASKS", None)
    cmd = [sys.executable, "-m", "mamba_dna", "pretrain", str(fasta), "--out", str(out),
           "--d-model", "16", "--n-layer", "1", "--d-state", "4", "--seq-len", "64",
           "--batch-size", "4", "--steps", str(steps), "--lr", "5e-3", "--warmup-steps", "2",
           "--eval-every", "1000", "--eval-windows", "4", "--checkpoint-every", "1000",
           "--log-every", "2", "--device", "cpu", "--seed", "3"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:  # 4 steps in
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal could be sent"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Resume with" in stderr and f"stopped by {sig.name}" in stderr
    ck = pt.checkpoint_paths(out)
    assert len(ck) == 1
    stopped = torch.load(ck[-1], weights_only=True)["step"]
    assert 4 <= stopped < steps
    if sig == signal.SIGUSR1:  # the SLURM pre-emption warning: requeue the job
        assert calls.read_text().split() == ["requeue", "777"]
    else:
        assert not calls.exists()

    if sig != signal.SIGUSR1:
        return  # the relaunch below is the same code path for every signal; run it once
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(out)
    ref = pt.config_from_cli([str(fasta)], str(tmp_path / "ref"), None, None,
                             {"d_model": 16, "n_layer": 1, "d_state": 4},
                             dict(seq_len=64, batch_size=4, steps=steps, lr=5e-3, warmup_steps=2, log_every=2,
                                  eval_every=1000, eval_windows=4, checkpoint_every=1000,
                                  device="cpu", seed=3))
    pt.run(ref)
    assert_same_weights(weights(tmp_path / "ref"), weights(out))
    assert math.isfinite(json.loads((out / "summary.json").read_text())["final_val_bits_per_base"])
