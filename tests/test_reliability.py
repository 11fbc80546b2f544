"""Issue 20: no command may destroy its input, trust a stale index, report NaN as ok, or
leave a job it cannot resume. One regression test per reproducer, kept together."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_dna.cli import main
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import guard_output, os_error_message, os_errors, output_lock, prepare_output
from mamba_dna.genome import Genome, bed_strand, parse_region, read_bed

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REF = SHARED / "variants" / "sarscov2_ntfitness" / "MN908947_wuhan-hu-1.fasta"
VCF = SHARED / "variants" / "sarscov2_ntfitness" / "ntmut_fitness.vcf.gz"
needs_data = pytest.mark.skipif(not REF.exists(), reason="../shared/data is not present")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_DNA_CACHE", str(tmp_path / "cache"))
    # main() turns SIGTERM into an exception; give pytest its handler back afterwards
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("mamba-dna: error:")]
    assert len(lines) == 1, err
    return lines[0]


def fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    return path


def seq(n: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


# ----------------------------------------------------------------------------- 1. output guard


def test_guard_output_refuses_same_path_symlink_and_hard_link(tmp_path):
    src = fasta(tmp_path / "in.fa", {"a": "ACGT" * 10})
    os.symlink(src, tmp_path / "sym.fa")
    os.link(src, tmp_path / "hard.fa")
    for out in (src, tmp_path / "sym.fa", tmp_path / "hard.fa", tmp_path / "." / "in.fa"):
        with pytest.raises(InputError, match="destroy the input"):
            guard_output(out, [None, "markov:2", src])
    guard_output(tmp_path / "other.fa", [src, None, "-"])  # a fresh path is fine
    guard_output("-", [src])  # stdout
    with pytest.raises(InputError, match="inside this output directory"):
        guard_output(tmp_path, [src], directory=True)


def test_tokenize_out_equal_to_input_is_one_line_and_keeps_the_input(tmp_path, capsys):
    src = fasta(tmp_path / "in.fa", {"a": seq(3000)})
    before = src.read_bytes()
    os.link(src, tmp_path / "hl.fa")
    for out in (src, tmp_path / "hl.fa"):
        assert cli("tokenize", src, "--out", out, "--window", 500, "--overwrite") == 2
        assert "destroy the input" in one_line_error(capsys)
    assert cli("tokenize", src, "--out", tmp_path, "--window", 500, "--overwrite") == 2
    assert "inside this output directory" in one_line_error(capsys)
    assert src.read_bytes() == before


# ----------------------------------------------------------------------------- 2. stale index


def test_fai_newer_than_fasta_with_a_shorter_length_is_rebuilt(tmp_path):
    s = seq(8000)
    src = fasta(tmp_path / "x.fa", {"a": s})
    (tmp_path / "x.fa.fai").write_text("a\t5386\t3\t60\t61\n")  # newer than the FASTA
    g = Genome(src)
    assert g.lengths == {"a": 8000}
    assert g.fetch("a", 7990, 8000).decode() == s[-10:]


def test_fasta_replaced_by_an_older_file_is_reindexed(tmp_path):
    old = fasta(tmp_path / "old.fa", {"a": seq(8000)})
    assert Genome(old).lengths == {"a": 8000}  # writes old.fa.fai
    new = fasta(tmp_path / "new.fa", {"b": seq(5386, 1), "c": seq(700, 2)}, width=70)
    os.utime(new, (1577836800, 1577836800))  # 2020-01-01: older than the .fai
    os.replace(new, old)
    g = Genome(old)
    assert g.names == ["b", "c"] and g.lengths == {"b": 5386, "c": 700}
    assert g.fetch("c").decode() == seq(700, 2)


@pytest.mark.parametrize("edit", ["rename", "grow_last", "crlf"])
def test_fai_mismatch_cases(tmp_path, edit):
    recs = {"r1": seq(500), "r2": seq(130, 1)}
    src = fasta(tmp_path / "x.fa", recs)
    Genome(src)
    if edit == "rename":
        recs = {"q1": recs["r1"], "r2": recs["r2"]}
        fasta(src, recs)
    elif edit == "grow_last":
        recs = {**recs, "r2": recs["r2"] + "ACGT"}
        fasta(src, recs)
    else:
        src.write_bytes(src.read_bytes().replace(b"\n", b"\r\n"))
    os.utime(src, (1577836800, 1577836800))
    g = Genome(src)
    assert g.lengths == {k: len(v) for k, v in recs.items()}
    for k, v in recs.items():
        assert g.fetch(k).decode() == v


def test_stale_bgzf_index_is_rebuilt(tmp_path):
    from Bio import bgzf

    def write(recs):
        with bgzf.BgzfWriter(str(tmp_path / "x.fa.gz"), "wb") as w:
            for name, s in recs.items():
                w.write(f">{name}\n" + "".join(s[i : i + 60] + "\n" for i in range(0, len(s), 60)))

    write({"a": seq(8000)})
    with Genome(tmp_path / "x.fa.gz") as g:
        assert g.kind == "bgzf" and g.lengths == {"a": 8000}
    new = {"b": seq(5386, 1), "c": seq(900, 2)}
    write(new)
    os.utime(tmp_path / "x.fa.gz", (1577836800, 1577836800))  # older than its .fai/.gzi
    with Genome(tmp_path / "x.fa.gz") as g:
        assert g.lengths == {"b": 5386, "c": 900}
        assert g.fetch("c").decode() == new["c"]


# ----------------------------------------------------------------------------- 3. models


def _model_dir(tmp_path: Path, name: str = "m") -> Path:
    from mamba_dna.model import MambaConfig, MambaLM

    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=4)).save_pretrained(tmp_path / name)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_is_a_load_error_naming_the_tensor(tmp_path, value):
    from safetensors.torch import load_file, save_file

    from mamba_dna.model import MambaLM

    d = _model_dir(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    key = "backbone.layers.0.mixer.dt_proj.weight"
    sd[key][0, 0] = value
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(InputError, match=r"tensor backbone\.layers\.0\.mixer\.dt_proj\.weight holds 1 non-finite"):
        MambaLM.from_pretrained(d)


@pytest.mark.parametrize("field,value,match", [
    ("norm_eps", -1, "norm_eps=-1: expected a positive number"),
    ("norm_eps", 0, "norm_eps=0"),
    ("tie_embeddings", "false", "tie_embeddings='false': expected true or false"),
    ("rms_norm", 1, "rms_norm=1"),
    ("architecture", "GPT2", "architecture.*'GPT2'"),
    ("dt_scale", "1.0", "dt_scale='1.0': expected a finite number"),
])
def test_config_values_are_typed(tmp_path, field, value, match):
    from mamba_dna.model import MambaLM

    d = _model_dir(tmp_path)
    c = json.loads((d / "config.json").read_text())
    c[field] = value
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ConfigError, match=match) as e:
        MambaLM.from_pretrained(d)
    assert str(d / "config.json") in str(e.value)  # the file and the field


def test_tokenizer_json_not_json_and_device_tpu_are_one_line(tmp_path):
    from mamba_dna.model import MambaLM

    d = _model_dir(tmp_path)
    with pytest.raises(ConfigError, match="--device 'tpu'"):
        MambaLM.from_pretrained(d, map_location="tpu")
    (d / "tokenizer.json").write_text("not json{")
    with pytest.raises(InputError, match="tokenizer.json: line 1: not valid JSON"):
        MambaLM.from_pretrained(d)


def test_finiteness_helpers():
    from mamba_dna.checks import all_finite, nonfinite_count, nonfinite_rows

    x = torch.zeros(3, 4, 2)
    assert all_finite(x) and nonfinite_count(x) == 0
    x[1, 2, 0] = float("nan")
    x[2, 0, 1] = float("-inf")
    assert not all_finite(x) and nonfinite_count(x) == 2
    assert nonfinite_rows(x).tolist() == [False, True, True]
    assert nonfinite_rows(x.numpy()).tolist() == [False, True, True]
    assert nonfinite_rows(np.array([1.0, np.inf])).tolist() == [False, True]
    assert all_finite(torch.arange(3)) and all_finite(np.arange(3))


# ----------------------------------------------------------------------------- 4. VCF header


def _vcf(path: Path, meta: list[str]) -> Path:
    path.write_text("##fileformat=VCFv4.2\n" + "".join(m + "\n" for m in meta)
                    + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                    + "a\t2\t.\tC\tA\t.\t.\tY=1\n")
    return path


def test_contig_length_disagreement_warns_or_fails_under_strict(tmp_path, capsys):
    from mamba_dna.io.vcf import ContigResolver, VcfReader, check_contig_lengths

    g = Genome(fasta(tmp_path / "r.fa", {"a": seq(300)}))
    resolve = ContigResolver(g)
    ok = VcfReader(_vcf(tmp_path / "ok.vcf", ["##contig=<ID=a,length=300>", "##contig=<ID=zz,length=5>"]))
    assert check_contig_lengths(ok, resolve) == []
    bad = VcfReader(_vcf(tmp_path / "bad.vcf", ["##contig=<ID=a,length=999>"]))
    assert check_contig_lengths(bad, resolve) == ["a 999 vs a 300 bp"]
    assert "warning: " in capsys.readouterr().err
    with pytest.raises(InputError, match="1 ##contig length.*disagree.*a 999 vs a 300 bp"):
        check_contig_lengths(bad, resolve, strict=True)


def test_tsv_info_key_must_be_declared(tmp_path, capsys):
    from mamba_dna.io.vcf import VcfReader, check_info_keys

    r = VcfReader(_vcf(tmp_path / "v.vcf", ['##INFO=<ID=Y,Number=1,Type=Integer,Description="label">']))
    check_info_keys(r, ["Y"])
    with pytest.raises(ConfigError, match="--tsv-info NOPE: not declared") as e:
        check_info_keys(r, ["Y", "NOPE"])
    assert "declared INFO keys: Y" in e.value.one_line()
    bare = VcfReader(_vcf(tmp_path / "b.vcf", []))
    check_info_keys(bare, ["Y"])  # nothing declared: cannot tell, so a warning
    assert "declares no ##INFO" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5. regions, BED


def test_region_with_a_colon_but_no_range_is_malformed():
    with pytest.raises(ConfigError, match="'MT:100': malformed region"):
        parse_region("MT:100")
    assert parse_region("MT:100-200") == ("MT", 99, 200)
    assert parse_region("chr1:1,000-2,000") == ("chr1", 999, 2000)
    assert parse_region("MT")[:2] == ("MT", 0)
    assert parse_region("HLA-A*01:01", names=["HLA-A*01:01"])[0] == "HLA-A*01:01"
    with pytest.raises(ConfigError, match="1 <= start <= end"):
        parse_region("MT:200-100")


def test_bed_strand_must_be_plus_minus_or_dot(tmp_path):
    assert bed_strand(["a", "1", "2"], "x.bed", 1) == "+"
    assert bed_strand(["a", "1", "2", "n", "0", "."], "x.bed", 1) == "+"
    assert bed_strand(["a", "1", "2", "n", "0", "-"], "x.bed", 1) == "-"
    bed = tmp_path / "x.bed"
    bed.write_text("a\t0\t10\tn\t0\t+\na\t10\t20\tn\t0\tX\n")
    with pytest.raises(InputError, match=r"x\.bed: line 2: strand \(column 6\) 'X'"):
        read_bed(bed)


# ----------------------------------------------------------------------------- 6. invalid bytes


def test_invalid_reference_bytes_refused_with_record_and_offset(tmp_path):
    """The one rule (tokenize's): '7' or NUL in a reference is an error naming the file,
    record and offset; --invalid N maps them to N and counts them."""
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">r\nACGT7ACGT\x00ACGT\n")
    with pytest.raises(InputError, match=r"bad\.fa: record 'r': invalid character b'7' at offset 4 \(2 invalid"):
        Genome(bad).tokens("r")
    g = Genome(bad, invalid="N")
    g.tokens("r")
    assert g.n_invalid == 2


# ----------------------------------------------------------------------------- 7. tokenize


def test_tokenize_window_longer_than_every_record_is_refused(tmp_path, capsys):
    src = fasta(tmp_path / "x.fa", {"a": seq(5000)})
    assert cli("tokenize", src, "--out", tmp_path / "s", "--window", 1_000_000_000) == 2
    line = one_line_error(capsys)
    assert "longest record or region" in line and "5,000 bp" in line
    assert not (tmp_path / "s").exists()
    # a window a little longer than the records (padding < --max-n-fraction) is still fine
    assert cli("tokenize", src, "--out", tmp_path / "s2", "--window", 8192, "--split-by", "block",
               "--val-fraction", 0, "--test-fraction", 0) == 0


def test_tokenize_one_record_split_by_record_names_the_file(tmp_path, capsys):
    src = fasta(tmp_path / "one.fa", {"only": seq(6000)})
    assert cli("tokenize", src, "--out", tmp_path / "s", "--window", 1000, "--seed", 0) == 2  # seed 0: the record is in test
    line = one_line_error(capsys)
    assert "one.fa: no training windows" in line and "--split-by block" in line


def _default_sigint() -> None:
    # a test run started in the background of a non-interactive shell (`cmd &`, nohup)
    # inherits SIGINT ignored, and so would the child: give it the default, as in a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _slow_child(script: str, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "MAMBA_DNA_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("child never got ready")
        time.sleep(0.05)


SLOW_TOKENIZE = """
    import time
    from pathlib import Path
    from mamba_dna import genome
    from mamba_dna.cli import main
    orig = genome.GenomeWindows.window_blocks
    def slow(self, *a, **k):
        for block in orig(self, *a, **k):
            Path("ready").touch()
            time.sleep(60)
            yield block
    genome.GenomeWindows.window_blocks = slow
    main(["tokenize", "x.fa", "--out", "shards", "--window", "500", "--split-by", "block"])
"""


@pytest.mark.parametrize("sig,code,line", [(signal.SIGTERM, 143, "mamba-dna: terminated"),
                                           (signal.SIGINT, 130, "mamba-dna: interrupted")])
def test_tokenize_signal_leaves_no_partial_directory_and_says_so(tmp_path, sig, code, line):
    fasta(tmp_path / "x.fa", {"a": seq(20000)})
    p = _slow_child(SLOW_TOKENIZE, tmp_path)
    _wait_for(tmp_path / "ready", p)
    assert any(q.name.endswith(".partial") for q in tmp_path.iterdir())  # mid-write
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert line in err and "Traceback" not in err
    left = sorted(q.name for q in tmp_path.iterdir())
    assert left == ["cache", "ready", "x.fa", "x.fa.fai"], left


# ----------------------------------------------------------------------------- 8. locks


def test_second_writer_gets_in_use_by_pid(tmp_path):
    out = tmp_path / "run"
    with output_lock(out) as lp:
        assert lp.read_text().strip() == str(os.getpid())
        child = _slow_child(f"""
            from mamba_dna.fsutil import output_lock
            from mamba_dna.errors import InputError
            try:
                with output_lock({str(out)!r}):
                    print("got it")
            except InputError as e:
                print(e.one_line())
        """, tmp_path)
        got, _ = child.communicate(timeout=60)
        assert f"in use by pid {os.getpid()}" in got
    assert not lp.exists()
    with output_lock(out):  # released: free again
        pass


def test_lock_of_a_killed_process_never_blocks(tmp_path):
    out = tmp_path / "x.h5"
    child = _slow_child(f"""
        import time
        from pathlib import Path
        from mamba_dna.fsutil import output_lock
        with output_lock({str(out)!r}):
            Path("ready").touch()
            time.sleep(60)
    """, tmp_path)
    _wait_for(tmp_path / "ready", child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert (tmp_path / "x.h5.lock").exists()  # left behind by the dead process
    with output_lock(out):
        pass


# ----------------------------------------------------------------------------- 9. OS errors


def test_os_errors_become_one_line_naming_the_path():
    cases = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
             errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.ENOENT: "no such file"}
    for code, text in cases.items():
        with pytest.raises(InputError) as e:
            with os_errors("/data/out.h5"):
                raise OSError(code, os.strerror(code), "/data/out.h5")
        assert f"cannot write /data/out.h5: {text}" in str(e.value)
        assert "\n" not in str(e.value)
    # h5py puts errno and the name inside the message only
    h5 = OSError("Unable to synchronously create file (unable to open file: name = '/ro/x.h5', "
                 "errno = 30, error message = 'Read-only file system', flags = 13)")
    assert os_error_message(h5) == ("cannot write /ro/x.h5: read-only file system "
                                    "(write the output to a writable file system)")


def test_prepare_output_creates_the_parent(tmp_path):
    out = prepare_output(tmp_path / "missing" / "dir" / "x.h5")
    assert out.parent.is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        prepare_output(tmp_path / "file" / "sub" / "x.h5")


def _mount_tmpfs(where: Path, opts: str) -> None:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")


def test_tokenize_on_full_and_read_only_disks_is_one_line(tmp_path, capsys):
    src = fasta(tmp_path / "x.fa", {"a": seq(200_000)})
    full = tmp_path / "full"
    _mount_tmpfs(full, "size=64k")
    try:
        assert cli("tokenize", src, "--out", full / "s", "--window", 1000, "--split-by", "block") == 2
        assert "no space left on the device" in one_line_error(capsys)
        assert os.listdir(full) == []  # no .partial, no lock file
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)  # lazy: never left mounted
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "size=64k,ro")
    try:
        assert cli("tokenize", src, "--out", ro / "s", "--window", 1000) == 2
        assert "read-only file system" in one_line_error(capsys)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# ----------------------------------------------------------------------------- 10. embed resume


CHILD_WRITER = """
    import sys, time
    import numpy as np
    from pathlib import Path
    from mamba_dna.io import hdf5
    path = Path(sys.argv[1])
    f = hdf5.open_for_write(path)
    for r in range(f["items/done"].shape[0]):
        f["pooled"][r] = np.full(f["pooled"].shape[1], r, np.float32)
        f["items/done"][r] = 1
        f.flush()  # what run_embed does after each batch
        if r == 2:
            Path("ready").touch()
            # keep writing pooled rows without marking them done
            for k in range(10 ** 9):
                f["pooled"][3 + k % 5] = np.full(f["pooled"].shape[1], -1, np.float32)
"""


def test_partial_embedding_file_resumes_after_sigkill(tmp_path):
    import h5py

    from mamba_dna.io import hdf5

    n = 8
    items = hdf5.Items(np.array(["a"] * n, object), np.arange(n) * 10, np.arange(n) * 10 + 10,
                       np.array(["+"] * n, object), np.array([f"i{i}" for i in range(n)], object))
    attrs = {"pooling": "mean", "window": 10, "model_config": "{}"}
    part = tmp_path / "emb.h5.partial"
    hdf5.create(part, items, attrs, d_model=4, pooled=True, per_position=False, dtype="float32")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD_WRITER), str(part)],
                         cwd=tmp_path, env=env)
    _wait_for(tmp_path / "ready", p)
    time.sleep(0.3)  # mid-write
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    with h5py.File(part, "r", locking=False) as g:  # readable after the kill
        expect = hdf5.run_attrs(g)
    f = hdf5.open_for_resume(part, expect)
    try:
        done = f["items/done"][:].astype(bool)
        assert done.tolist() == [True] * 3 + [False] * 5
        np.testing.assert_array_equal(f["pooled"][:3], np.arange(3)[:, None] * np.ones(4))
        for r in np.flatnonzero(~done):  # resume: finish the rest
            f["pooled"][r] = r
            f["items/done"][r] = 1
        f.attrs["complete"] = 1
    finally:
        f.close()
    assert hdf5.summary(part)["n_done"] == n


# ----------------------------------------------------------------------------- 11. help texts


def _walk(cmd, path=()):
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))


def _flat(text: str) -> str:
    """Undo line wrapping: whitespace runs -> one space; a break after a hyphen joins."""
    import re

    return re.sub(r"-\s+", "-", " ".join(text.split()))


def test_every_help_string_renders_as_written(monkeypatch, capsys):
    """rich markup ate bracketed text ("[default: --window]"): every option's help must
    appear verbatim (up to line wrapping) in its command's --help."""
    import typer

    from mamba_dna.cli import app

    monkeypatch.setenv("COLUMNS", "100")
    root = typer.main.get_command(app)
    checked = 0
    for path, cmd in _walk(root):
        assert cli(*path, "--help") == 0
        out = _flat(capsys.readouterr().out)
        for p in cmd.params:
            if p.param_type_name == "option" and getattr(p, "help", None):
                assert _flat(p.help) in out, (path, p.help)
                checked += 1
    assert checked > 50
    assert cli("tokenize", "--help") == 0
    assert "Step between windows [default: --window]." in " ".join(capsys.readouterr().out.split())


SLOW_EMBED = """
    import sys, time
    from pathlib import Path
    import mamba_dna.pipelines.embed.run as E  # the module that calls embed_batch
    from mamba_dna.cli import main
    orig, calls = E.embed_batch, [0]
    def slow(*a, **k):
        calls[0] += 1
        if calls[0] == 4:  # three batches handed to the writer: let it land, then hang
            time.sleep(2)
            Path("ready").touch()
            time.sleep(600)
        return orig(*a, **k)
    E.embed_batch = slow
    main(sys.argv[1:])
"""


@needs_data
def test_embed_resumes_after_sigkill(tmp_path):
    """A real `mamba-dna embed` child killed with SIGKILL mid-run; --resume finishes the
    .partial and the result equals an uninterrupted run."""
    import h5py

    model = _model_dir(tmp_path)
    args = ["embed", "--fasta", str(REF), "--model", str(model), "--window", "100",
            "--device", "cpu"]
    env = {**os.environ, "MAMBA_DNA_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_EMBED), *args,
                          "--out", "k.h5"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(tmp_path / "ready", p, timeout=120)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    part = tmp_path / "k.h5.partial"
    with h5py.File(part, "r", locking=False) as f:
        n_done = int(f["items/done"][:].sum())
    assert 0 < n_done < 300  # 300 items in batches of 64
    assert cli(*args, "--out", tmp_path / "k.h5", "--resume") == 0
    assert cli(*args, "--out", tmp_path / "fresh.h5") == 0
    with h5py.File(tmp_path / "k.h5", "r") as a, h5py.File(tmp_path / "fresh.h5", "r") as b:
        assert int(a.attrs["complete"]) == 1 and a["items/done"][:].all()
        np.testing.assert_allclose(a["pooled"][:], b["pooled"][:], rtol=1e-5, atol=1e-6)


def test_free_space_is_checked_before_an_embedding_file_is_started(tmp_path):
    from mamba_dna.fsutil import check_free_space
    from mamba_dna.io import hdf5

    n = 10
    items = hdf5.Items(np.array(["a"] * n, object), np.zeros(n, np.int64), np.full(n, 1000),
                       np.array(["+"] * n, object), np.array([str(i) for i in range(n)], object))
    need = hdf5.expected_bytes(items, 128, "float32", pooled=True, per_position=True)
    assert need >= n * 1000 * 128 * 4
    check_free_space(tmp_path / "x.h5", need)  # the test disk has 5 MB free
    with pytest.raises(InputError, match="needs about .* MiB but .* free"):
        check_free_space(tmp_path / "new" / "x.h5", 1 << 62)


# ============================================================================= phase 2: the
# helpers wired into the pipelines (score, embed, pretrain, merges, classify), CLI-level


def _score_inputs(tmp_path: Path, n: int = 40, meta: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A 3 kb reference and a VCF of `n` SNVs on it (REF matching)."""
    s = seq(3000, seed=3)
    fa = fasta(tmp_path / "ref.fa", {"a": s})
    rows = []
    for k in range(n):
        pos = 50 + 60 * k  # 1-based
        ref = s[pos - 1]
        rows.append(f"a\t{pos}\tv{k}\t{ref}\t{'C' if ref != 'C' else 'G'}\t.\t.\tY={k % 2}\n")
    vcf = tmp_path / "in.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n" + "".join(m + "\n" for m in meta)
                   + '##INFO=<ID=Y,Number=1,Type=Integer,Description="label">\n'
                   + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "".join(rows))
    return fa, vcf


@pytest.mark.parametrize("name", ["in.vcf", "ref.fa"])
def test_score_out_equal_to_an_input_is_refused_and_the_input_kept(tmp_path, capsys, name):
    fa, vcf = _score_inputs(tmp_path)
    target = tmp_path / name
    before = target.read_bytes()
    out = tmp_path / "o.vcf" if name == "ref.fa" else target
    if name == "ref.fa":
        os.link(target, out)  # a hard link of the reference
    assert cli("score", "--vcf", vcf, "--fasta", fa, "--model", "markov:2", "--out", out) == 2
    assert "writing it would destroy the input" in one_line_error(capsys)
    assert target.read_bytes() == before


def test_score_reference_with_invalid_bytes_is_refused_like_tokenize(tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">a\nACGT7ACGT\x00ACGTACGTACGT\n")
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\na\t2\t.\tC\tA\t.\t.\t.\n")
    assert cli("score", "--vcf", vcf, "--fasta", bad, "--model", "markov:1", "--out", tmp_path / "o.tsv") == 2
    assert "record 'a': invalid character b'7' at offset 4" in one_line_error(capsys)
    assert not (tmp_path / "o.tsv").exists()


def test_score_header_checks_and_region_parse_are_wired(tmp_path, capsys):
    fa, vcf = _score_inputs(tmp_path, meta=("##contig=<ID=a,length=999>",))
    base = ["score", "--vcf", vcf, "--fasta", fa, "--model", "markov:2", "--out", tmp_path / "o.tsv"]
    assert cli(*base, "--region", "a:100") == 2
    assert "'a:100': malformed region" in one_line_error(capsys)
    assert cli(*base, "--strict") == 2
    assert "##contig length(s) disagree" in one_line_error(capsys)
    assert cli(*base, "--tsv-info", "NOPE") == 2
    assert "--tsv-info NOPE: not declared" in one_line_error(capsys)
    assert cli(*base, "--tsv-info", "Y") == 0  # without --strict the length is a warning
    assert "warning: " in capsys.readouterr().err
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob("*.lock"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_score_nonfinite_model_output_is_a_counted_status_never_ok(tmp_path, value):
    from mamba_dna.io.vcf import read_tsv
    from mamba_dna.model import MambaConfig, MambaLM
    from mamba_dna.pipelines.score import ScoreConfig, run_score

    fa, vcf = _score_inputs(tmp_path, n=10)
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=4))
    with torch.no_grad():
        model.backbone.norm_f.weight.fill_(value)  # every logit NaN (or +-Inf: NaN after softmax)
    cfg = ScoreConfig(vcf=str(vcf), fasta=str(fa), model="x", out=str(tmp_path / "o.tsv"), device="cpu")
    res = run_score(cfg, scorer=model, progress=False)
    assert res.scored == 0 and res.skipped["nonfinite"] == 10 and "nonfinite 10" in res.line()
    _, header, rows = read_tsv(tmp_path / "o.tsv")
    status = [r[header.index("status")] for r in rows]
    assert status == ["nonfinite"] * 10
    assert all(r[header.index("llr")] == "." for r in rows)


def test_score_sigterm_leaves_no_hidden_tmp(tmp_path):
    fa, vcf = _score_inputs(tmp_path)
    p = _slow_child(f"""
        import sys, time
        from pathlib import Path
        import mamba_dna.pipelines.score.run as R  # the module run_score lives in
        from mamba_dna.cli import main
        orig = R.score_records
        def slow(*a, **k):
            out = orig(*a, **k)
            Path("ready").touch()
            time.sleep(60)
            return out
        R.score_records = slow
        main(["score", "--vcf", {str(vcf)!r}, "--fasta", {str(fa)!r}, "--model", "markov:2",
              "--out", "o.vcf.gz"])
    """, tmp_path)
    _wait_for(tmp_path / "ready", p)
    assert [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]  # mid-write
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "mamba-dna: terminated" in err, err
    left = sorted(q.name for q in tmp_path.iterdir() if q.name != "cache")
    assert left == ["in.vcf", "ready", "ref.fa", "ref.fa.fai"], left


def _shards(tmp_path: Path, ext: str) -> list[Path]:
    fa, vcf = _score_inputs(tmp_path)
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"part{i}.{ext}")
        assert cli("score", "--vcf", vcf, "--fasta", fa, "--model", "markov:2", "--shard", f"{i}/2",
                   "--out", parts[-1]) == 0
    return parts


@pytest.mark.parametrize("ext", ["tsv", "vcf"])
def test_score_merge_refuses_a_shard_cut_off_at_a_line_boundary(tmp_path, capsys, ext):
    from mamba_dna.pipelines.score import merge_outputs

    parts = _shards(tmp_path, ext)
    assert merge_outputs([str(p) for p in parts], str(tmp_path / f"all.{ext}")) == 40
    lines = parts[1].read_text().splitlines(keepends=True)
    assert sum(ln.startswith(("##mamba-dna_records=", "#mamba-dna_rows=")) for ln in lines) == 1  # in the header
    parts[1].write_text("".join(lines[:-5]))
    assert cli("score", "merge", *parts, "--out", tmp_path / f"cut.{ext}") == 2
    line = one_line_error(capsys)
    assert f"part1.{ext}: cut off: holds 15 of the 20" in line and "(5 missing)" in line, line
    if ext == "tsv":  # without the count line (another writer) it is refused too
        parts[1].write_text("".join(ln for ln in lines if not ln.startswith("#mamba-dna_rows=")))
        assert cli("score", "merge", *parts, "--out", tmp_path / "cut.tsv") == 2
        assert "no record of how many rows it holds" in one_line_error(capsys)
    assert not (tmp_path / f"cut.{ext}").exists()


def test_merge_outputs_equal_to_a_shard_are_refused(tmp_path):
    from mamba_dna.pipelines.embed import merge
    from mamba_dna.pipelines.score import merge_outputs

    parts = _shards(tmp_path, "tsv")
    before = parts[0].read_bytes()
    with pytest.raises(InputError, match="this is the input file"):
        merge_outputs([str(p) for p in parts], str(parts[0]))
    assert parts[0].read_bytes() == before
    (tmp_path / "a.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="this is the input file"):
        merge([tmp_path / "a.h5"], tmp_path / "a.h5")


def test_classify_outputs_guarded(tmp_path):
    from mamba_dna.pipelines.classify import write_predictions

    fa = fasta(tmp_path / "x.fa", {"a": seq(100)})
    before = fa.read_bytes()
    with pytest.raises(InputError, match="this is the input file"):
        write_predictions([{"file": str(fa), "record": "a", "prediction": "p"}], fa)
    assert fa.read_bytes() == before
    write_predictions([{"file": str(fa), "record": "a", "prediction": "p"}], tmp_path / "new" / "p.tsv")
    assert (tmp_path / "new" / "p.tsv").read_text().startswith("file\trecord")


# ----------------------------------------------------------------------------- embed


def test_embed_out_equal_to_fasta_layer_99_and_missing_dir(tmp_path, capsys):
    fa = fasta(tmp_path / "x.fa", {"a": seq(3000)})
    before = fa.read_bytes()
    model = _model_dir(tmp_path)
    base = ["embed", "--fasta", fa, "--model", model, "--window", 1000, "--device", "cpu"]
    assert cli(*base, "--out", fa) == 2
    assert "writing it would destroy the input" in one_line_error(capsys)
    assert fa.read_bytes() == before
    assert cli(*base, "--layer", 99, "--out", tmp_path / "l.h5") == 2
    assert "--layer 99: expected an integer in [-2, 1]" in one_line_error(capsys)
    assert not list(tmp_path.glob("l.h5*"))  # no .partial, no lock
    assert cli(*base, "--out", tmp_path / "missing" / "dir" / "x.h5") == 0
    assert (tmp_path / "missing" / "dir" / "x.h5").is_file()


def test_embed_nonfinite_output_is_an_error_before_it_is_written(tmp_path):
    import h5py

    from mamba_dna.model import MambaLM
    from mamba_dna.pipelines.embed import EmbedConfig, partial_path, run_embed

    fa = fasta(tmp_path / "x.fa", {"a": seq(3000)})
    model = MambaLM.from_pretrained(_model_dir(tmp_path))
    with torch.no_grad():
        model.backbone.norm_f.weight.fill_(float("nan"))
    out = tmp_path / "e.h5"
    cfg = EmbedConfig(fasta=str(fa), model="m", out=str(out), window=1000, device="cpu")
    with pytest.raises(InputError, match="embedding of item .* holds 16 NaN/Inf value"):
        run_embed(cfg, model=model)
    assert not out.exists()
    with h5py.File(partial_path(out), "r") as f:  # nothing flagged done: --resume redoes all
        assert not f["items/done"][:].any() and int(f.attrs["complete"]) == 0


def test_embed_cli_sigkill_then_resume_and_a_second_writer_is_refused(tmp_path, capsys):
    """A real `mamba-dna embed` child: while it runs a second `embed --out` of the same file
    gets "in use by pid N"; after its SIGKILL, `embed --resume` finishes the .partial and the
    file equals an uninterrupted run."""
    import h5py

    fa = fasta(tmp_path / "x.fa", {"a": seq(30_000, seed=5)})
    model = _model_dir(tmp_path)
    args = ["embed", "--fasta", str(fa), "--model", str(model), "--window", "100", "--device", "cpu"]
    env = {**os.environ, "MAMBA_DNA_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_EMBED), *args, "--out", "k.h5"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / "ready", p, timeout=120)
        assert cli(*args, "--out", tmp_path / "k.h5", "--resume") == 2
        assert f"in use by pid {p.pid}" in one_line_error(capsys)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    part = tmp_path / "k.h5.partial"
    with h5py.File(part, "r", locking=False) as f:
        n_done = int(f["items/done"][:].sum())
    assert 0 < n_done < 300  # 300 items in batches of 64
    assert cli(*args, "--out", tmp_path / "k.h5", "--resume") == 0
    assert "resuming" in capsys.readouterr().err
    assert cli(*args, "--out", tmp_path / "fresh.h5") == 0
    with h5py.File(tmp_path / "k.h5", "r") as a, h5py.File(tmp_path / "fresh.h5", "r") as b:
        assert int(a.attrs["complete"]) == 1 and a["items/done"][:].all()
        np.testing.assert_allclose(a["pooled"][:], b["pooled"][:], rtol=1e-5, atol=1e-6)
    assert not part.exists() and not (tmp_path / "k.h5.lock").exists()


def test_embed_on_full_and_read_only_disks_is_one_line(tmp_path, capsys):
    fa = fasta(tmp_path / "x.fa", {"a": seq(30_000)})
    model = _model_dir(tmp_path)
    base = ["embed", "--fasta", fa, "--model", model, "--window", 100, "--per-position", "--device", "cpu"]
    full = tmp_path / "full"
    _mount_tmpfs(full, "size=300k")
    try:
        assert cli(*base, "--out", full / "x.h5") == 2
        assert "needs about" in one_line_error(capsys)
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "size=64k,ro")
    try:
        assert cli(*base, "--out", ro / "x.h5") == 2
        assert "read-only file system" in one_line_error(capsys)
        fa2, vcf = _score_inputs(tmp_path)
        for out in ("x.tsv", "x.vcf.gz"):
            assert cli("score", "--vcf", vcf, "--fasta", fa2, "--model", "markov:2", "--out", ro / out) == 2
            assert "read-only file system" in one_line_error(capsys)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# ----------------------------------------------------------------------------- pretrain


def _pretrain_args(fa: Path, out: Path, *extra) -> list:
    return ["pretrain", fa, "--out", out, "--d-model", 16, "--n-layer", 1, "--seq-len", 64,
            "--batch-size", 2, "--steps", 4, "--eval-every", 2, "--eval-windows", 2,
            "--checkpoint-every", 2, "--device", "cpu", *extra]


def test_pretrain_options_out_guard_and_changed_inputs(tmp_path, capsys):
    fa = fasta(tmp_path / "a.fa", {"a": seq(20000)})
    run = tmp_path / "run"
    assert cli(*_pretrain_args(fa, run, "--stop-at", -1)) == 2
    assert "--stop-at -1: expected a step >= 1" in one_line_error(capsys)
    assert cli(*_pretrain_args(fa, run, "--warmup-steps", -5)) == 2
    assert "--warmup-steps -5" in one_line_error(capsys)
    assert cli(*_pretrain_args(fa, fa)) == 2
    assert "writing it would destroy the input" in one_line_error(capsys)
    assert cli(*_pretrain_args(fa, run, "--stop-at", 2)) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["inputs_fingerprint"][0]["size"] == fa.stat().st_size
    other = fasta(tmp_path / "b.fa", {"b": seq(20000, seed=9)})
    assert cli(*_pretrain_args(other, run)) == 2  # another FASTA on the existing run
    line = one_line_error(capsys)
    assert "this run was started on" in line and "b.fa) differ" in line
    fasta(fa, {"a": seq(20000, seed=1)})  # same path, other content
    assert cli(*_pretrain_args(fa, run)) == 2
    assert "a.fa: changed since the run" in one_line_error(capsys)
    fasta(fa, {"a": seq(20000)})  # the original back: resumes
    assert cli(*_pretrain_args(fa, run)) == 0
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r.get("split") == "train"]
    assert steps == sorted(set(steps))


def test_pretrain_second_process_on_a_run_directory_is_refused(tmp_path, capsys):
    fa = fasta(tmp_path / "a.fa", {"a": seq(20000)})
    run = tmp_path / "run"
    args = [str(a) for a in _pretrain_args(fa, run)]
    p = _slow_child(f"""
        import time
        from pathlib import Path
        from mamba_dna.pipelines.pretrain import trainer as T
        from mamba_dna.cli import main
        orig = T.Pretrainer.train
        def slow(self):
            Path("ready").touch()
            time.sleep(60)
            return orig(self)
        T.Pretrainer.train = slow
        main({args!r})
    """, tmp_path)
    try:
        _wait_for(tmp_path / "ready", p, timeout=120)
        assert cli(*args) == 2
        assert f"in use by pid {p.pid}" in one_line_error(capsys)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    assert not (run / "metrics.jsonl").exists()  # the second never trained
    assert cli(*args) == 0  # the dead owner's lock never blocks


def test_cli_restores_the_callers_sigterm_handler(tmp_path):
    """main() turns SIGTERM into a clean exit only while it runs: a process that calls the
    CLI in-process (a test runner, a notebook) gets its own handler back."""
    before = signal.getsignal(signal.SIGTERM)
    src = fasta(tmp_path / "x.fa", {"a": seq(3000)})
    assert cli("tokenize", src, "--out", tmp_path / "s", "--window", 1000, "--split-by", "block") == 0
    assert signal.getsignal(signal.SIGTERM) is before
