"""mamba_dna.hub: hf:ORG/NAME[@REV] specs resolved through a Hub-layout cache built in tmp_path.

No test touches the network: every test runs with sockets limited to localhost, and the
"machine without internet" case points huggingface_hub at a closed localhost port.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants as hf_constants  # noqa: E402
from huggingface_hub.utils import filter_repo_objects  # noqa: E402

from mamba_dna import hub  # noqa: E402
from mamba_dna.errors import InputError  # noqa: E402
from mamba_dna.vocab_map import read_external_vocab  # noqa: E402

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
MODELS = DATA / "models"
SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
REPO = "kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16"
FIXTURE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json")
# a modeling file that, if ever imported, leaves a trace
EVIL_PY = "import pathlib, os\npathlib.Path(os.environ['HUB_TEST_SENTINEL']).write_text('ran')\n"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection other than to localhost fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache in tmp_path, offline; HF_HOME and constants pointed at it."""
    root = tmp_path / "hf_home" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(root.parent))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))
    return root


def _synthetic_files() -> dict[str, bytes]:
    """A tiny Caduceus-like checkpoint, for when shared data is absent."""
    from safetensors.numpy import save

    config = {"model_type": "caduceus", "d_model": 4, "n_layer": 1, "vocab_size": 16}
    tok = {"tokenizer_class": "CaduceusTokenizer", "characters": ["A", "C", "G", "T", "N"]}
    weights = save({"backbone.embeddings.word_embeddings.weight": np.zeros((16, 4), np.float32)})
    return {"config.json": json.dumps(config).encode(), "model.safetensors": weights,
            "tokenizer_config.json": json.dumps(tok).encode()}


def _checkpoint_files(folder: str | None) -> dict[str, bytes]:
    if folder is None:
        return _synthetic_files()
    src = MODELS / folder
    if not (src / "config.json").is_file():
        pytest.skip(f"shared data absent: {src}")
    return {name: (src / name).read_bytes() for name in FIXTURE_FILES if (src / name).is_file()}


def _add_repo(cache: Path, repo_id: str, files: dict[str, bytes], sha: str = SHA,
              refs: tuple[str, ...] = ("main",)) -> Path:
    """The layout huggingface_hub reads: models--ORG--NAME/{refs/<ref>, snapshots/<sha>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(sha)  # no newline, as huggingface_hub writes it
    return snap


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# --- parse_hf_spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, want",
    [
        ("hf:kuleshov-group/PlantCaduceus_l32", ("kuleshov-group/PlantCaduceus_l32", None)),
        (f"hf:{REPO}@main", (REPO, "main")),
        (f"hf:org/name@{SHA}", ("org/name", SHA)),
        ("hf:org/name.v1@refs/pr/3", ("org/name.v1", "refs/pr/3")),
        ("hf:Org_1/n-a.m_e@v1.0", ("Org_1/n-a.m_e", "v1.0")),
        ("runs/model", None),
        (Path("runs/model"), None),
        ("./hf:odd", None),
    ],
)
def test_parse_hf_spec(spec, want):
    assert hub.parse_hf_spec(spec) == want


@pytest.mark.parametrize(
    "spec, match",
    [
        ("hf:", "not a Hub repository id"),
        ("hf:name-only", "not a Hub repository id"),
        ("hf:a/b/c", "not a Hub repository id"),
        ("hf:org/", "not a Hub repository id"),
        ("hf:-org/name", "'-org' is not a valid Hub name"),
        ("hf:org/na--me", "'na--me' is not a valid Hub name"),
        ("hf:org/na..me", "not a valid Hub name"),
        ("hf:org/name.", "not a valid Hub name"),
        ("hf:org/na me", "not a valid Hub name"),
        ("hf:org/" + "n" * 97, "at most 96"),
        ("hf:org/name@", "empty revision"),
        ("hf:org/name@../x", "not a branch, tag or commit sha"),
        ("hf:org/name@a b", "not a branch, tag or commit sha"),
    ],
)
def test_parse_hf_spec_rejects_bad_ids(spec, match):
    with pytest.raises(InputError, match=match) as e:
        hub.parse_hf_spec(spec)
    assert "expected hf:ORG/NAME" in _one_line(e)


# --- plain paths -------------------------------------------------------------------------------------


def test_plain_path_returned_as_is(tmp_path):
    assert hub.resolve_model_dir(tmp_path) == tmp_path
    assert hub.resolve_model_dir(str(tmp_path)) == tmp_path
    with pytest.raises(InputError, match="no such model directory") as e:
        hub.resolve_model_dir(tmp_path / "absent")
    assert str(tmp_path / "absent") in _one_line(e)
    with pytest.raises(InputError) as e:
        hub.resolve_model_dir("no-such-org/PlantCaduceus_l32")  # a Hub id without hf:
    assert e.value.one_line().endswith("(for the Hugging Face Hub repository write "
                                       "hf:no-such-org/PlantCaduceus_l32)")


# --- offline resolution from a Hub-layout cache ----------------------------------------------------


@pytest.mark.parametrize("folder", ["caduceus_ps", "caduceus_plant", None])
def test_offline_cache_resolves_main_sha_and_reads_vocab(cache, folder):
    files = _checkpoint_files(folder)
    snap = _add_repo(cache, REPO, files)
    for spec in (f"hf:{REPO}", f"hf:{REPO}@main", f"hf:{REPO}@{SHA}"):
        d = hub.resolve_model_dir(spec)
        assert d.resolve() == snap.resolve(), spec
    for name, data in files.items():
        assert (d / name).read_bytes() == data
    v = read_external_vocab(d)
    assert v.base_ids == ((3, 4, 5, 6) if folder == "caduceus_plant" else (7, 8, 9, 10))


def test_hf_cache_env_var_honoured_at_call_time(cache, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    snap = _add_repo(other, "org/name", _synthetic_files())
    monkeypatch.setenv("HF_HUB_CACHE", str(other))  # beats HF_HOME, even after import
    assert hub.hub_cache_dir() == other
    assert hub.resolve_model_dir("hf:org/name").resolve() == snap.resolve()


def test_other_revision_not_cached_is_one_line_error(cache):
    _add_repo(cache, REPO, _synthetic_files())
    for rev in (OTHER_SHA, "v2"):
        with pytest.raises(InputError) as e:
            hub.resolve_model_dir(f"hf:{REPO}@{rev}")
        msg = _one_line(e)
        assert f"hf:{REPO}@{rev}: not in the local Hugging Face cache" in msg
        assert "HF_HUB_OFFLINE" in msg and str(cache) in msg


def test_missing_repo_offline_is_one_line_error(cache):
    with pytest.raises(InputError) as e:
        hub.resolve_model_dir("hf:nobody/nothing")
    assert _one_line(e).startswith("hf:nobody/nothing: not in the local Hugging Face cache")


@pytest.mark.parametrize(
    "drop, match",
    [("config.json", "has no config.json"), ("model.safetensors", "has no weights")],
)
def test_snapshot_without_config_or_weights(cache, drop, match):
    files = {k: v for k, v in _synthetic_files().items() if k != drop}
    _add_repo(cache, "org/partial", files)
    with pytest.raises(InputError, match=match) as e:
        hub.resolve_model_dir("hf:org/partial")
    assert _one_line(e).startswith("hf:org/partial: ")


def test_py_files_in_snapshot_never_read_or_imported(cache, tmp_path, monkeypatch):
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("HUB_TEST_SENTINEL", str(sentinel))
    files = _synthetic_files() | {
        "modeling_caduceus.py": EVIL_PY.encode(),
        "tokenization_caduceus.py": EVIL_PY.encode(),
        "configuration_caduceus.py": EVIL_PY.encode(),
    }
    snap = _add_repo(cache, REPO, files)
    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open

    def recording(real):
        def _open(file, *a, **kw):
            opened.append(os.fspath(file) if not isinstance(file, int) else "<fd>")
            return real(file, *a, **kw)
        return _open

    monkeypatch.setattr(builtins, "open", recording(real_open))
    monkeypatch.setattr(io, "open", recording(real_io_open))
    d = hub.resolve_model_dir(f"hf:{REPO}")
    v = read_external_vocab(d)
    monkeypatch.undo()  # stop recording before asserting

    assert d.resolve() == snap.resolve() and v.mask_id == 3
    assert any(p.endswith("tokenizer_config.json") for p in opened)  # the recorder works
    assert not [p for p in opened if p.endswith(".py")]
    assert not sentinel.exists()
    assert not {"modeling_caduceus", "tokenization_caduceus", "configuration_caduceus"} & set(sys.modules)


def test_allow_patterns_fetch_only_config_weights_tokenizer():
    # the file listing of a published Caduceus repo, plus extras
    listing = [
        ".gitattributes", "README.md", "config.json", "configuration_caduceus.py",
        "modeling_caduceus.py", "modeling_rcps.py", "tokenization_caduceus.py",
        "model.safetensors", "pytorch_model.bin", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.json", "vocab.txt", "sub/evil.py", "setup.py",
        "model-00001-of-00002.safetensors", "model.safetensors.index.json", "optimizer.pt",
    ]
    kept = set(filter_repo_objects(listing, allow_patterns=hub.ALLOW_PATTERNS,
                                   ignore_patterns=hub.IGNORE_PATTERNS))
    assert kept == {
        "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.json", "vocab.txt",
        "model-00001-of-00002.safetensors", "model.safetensors.index.json",
    }


def test_snapshot_download_called_with_patterns_cache_and_offline_flag(cache, monkeypatch):
    snap = _add_repo(cache, "org/name", _synthetic_files())
    calls = []

    def fake(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    hub.resolve_model_dir("hf:org/name@v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.resolve_model_dir("hf:org/name")
    (r1, kw1), (r2, kw2) = calls
    assert r1 == r2 == "org/name"
    assert kw1["revision"] == "v1" and kw2["revision"] is None
    assert kw1["local_files_only"] is True and kw2["local_files_only"] is False
    assert Path(kw1["cache_dir"]) == cache
    assert "*.py" in kw1["ignore_patterns"] and not any(p.endswith(".py") for p in kw1["allow_patterns"])


def test_commit_sha_uses_a_complete_cached_snapshot_without_the_hub(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    snap = _add_repo(cache, "org/name", _synthetic_files())
    real = huggingface_hub.snapshot_download
    calls = []

    def spy(repo_id, **kw):
        calls.append(kw["local_files_only"])
        if not kw["local_files_only"]:
            return str(snap)  # stands in for a download
        return real(repo_id, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    assert hub.resolve_model_dir(f"hf:org/name@{SHA}").resolve() == snap.resolve()
    assert calls == [True]  # cache only, no Hub call
    (snap / "model.safetensors").unlink()  # incomplete: go to the Hub
    calls.clear()
    with pytest.raises(InputError, match="has no weights"):
        hub.resolve_model_dir(f"hf:org/name@{SHA}")
    assert calls == [True, False]


def _hub_error(name: str, message: str):
    # huggingface_hub's HTTP errors want a response object whose type depends on its version
    cls = getattr(huggingface_hub.utils, name)
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


@pytest.mark.parametrize(
    "raised, match",
    [
        (lambda: _hub_error("RepositoryNotFoundError", "404 Repository Not Found for url x"),
         r"^hf:org/name@v9: no such repository on the Hugging Face Hub"),
        (lambda: _hub_error("GatedRepoError", "403 gated"), r"^hf:org/name@v9: the repository is gated"),
        (lambda: _hub_error("RevisionNotFoundError", "404 Revision Not Found"),
         r"^hf:org/name@v9: the repository org/name has no revision 'v9'"),
        (lambda: _hub_error("HfHubHTTPError", "500 Server Error\nmore detail"),
         r"^hf:org/name@v9: the Hugging Face Hub request failed \(500 Server Error\)$"),
        (lambda: ConnectionResetError("connection reset by peer"),
         r"^hf:org/name@v9: network error talking to the Hugging Face Hub"),
        (lambda: PermissionError(13, "Permission denied"), r"^hf:org/name@v9: cannot use the local"),
    ],
)
def test_hub_errors_map_to_one_line_input_errors(cache, monkeypatch, raised, match):
    def fake(repo_id, **kw):
        raise raised()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(InputError, match=match) as e:
        hub.resolve_model_dir("hf:org/name@v9")
    _one_line(e)


def test_programming_errors_keep_their_traceback(cache, monkeypatch):
    def fake(repo_id, **kw):
        raise KeyError("bug")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(KeyError):
        hub.resolve_model_dir("hf:org/name")


# --- a machine without internet (offline flag unset) -------------------------------------------------


@pytest.fixture
def unreachable_hub(cache, monkeypatch):
    """HF_HUB_OFFLINE unset and the Hub endpoint a closed localhost port: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    return cache


def test_no_internet_falls_back_to_cache(unreachable_hub):
    snap = _add_repo(unreachable_hub, "org/name", _synthetic_files())
    assert hub.resolve_model_dir("hf:org/name").resolve() == snap.resolve()
    assert hub.resolve_model_dir(f"hf:org/name@{SHA}").resolve() == snap.resolve()


def test_no_internet_and_not_cached_is_one_line_error(unreachable_hub):
    with pytest.raises(InputError) as e:
        hub.resolve_model_dir("hf:org/uncached")
    msg = _one_line(e)
    assert msg.startswith("hf:org/uncached: not in the local Hugging Face cache")
    assert "cannot be reached" in msg


def test_copied_fixture_files_stay_in_tmp(cache):
    # the fixture copies live only under tmp_path: nothing is written into the repository
    files = _checkpoint_files("caduceus_ps")
    snap = _add_repo(cache, REPO, files)
    repo_root = Path(__file__).resolve().parents[1]
    assert repo_root not in snap.resolve().parents
    shutil.rmtree(snap)
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        hub.resolve_model_dir(f"hf:{REPO}@{SHA}")
