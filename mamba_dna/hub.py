"""Model specs that name a Hugging Face Hub repository: `hf:ORG/NAME[@REVISION]`.

`resolve_model_dir` turns a model spec into a local directory: a plain path is returned as is;
an `hf:` spec is fetched with huggingface_hub's `snapshot_download` into its normal cache
(HF_HOME / HF_HUB_CACHE) and the snapshot directory is returned. Only configuration, weights
and tokenizer files are fetched (`ALLOW_PATTERNS`); a hub repo's `*.py` modeling code is never
downloaded, read or imported. HF_HUB_OFFLINE=1 (read when called, not only when huggingface_hub
was imported) uses the cache alone; a machine without internet falls back to the cache too.
Every failure a user can cause (unknown repo or revision, not cached while offline, no
config.json or weights, a network error) is a one-line InputError naming the repo.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mamba_dna.errors import InputError

HF_PREFIX = "hf:"

# what a model directory needs; nothing executable
ALLOW_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
]
# belt and braces: even a pattern above that matched code would be dropped
IGNORE_PATTERNS = ["*.py", "*.pyc", "*.pyo", "*.so", "*.pkl", "*.pickle"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Hub ids: ORG/NAME, each part letters, digits, '-', '_', '.', not starting or ending with
# '-'/'.', no '--' or '..', at most 96 characters (the Hub's own rule)
_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
# branch / tag names or a commit sha (refs/pr/N included)
_REVISION = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._/-]*[A-Za-z0-9._-])?")
_SHA = re.compile(r"[0-9a-f]{40}")


def parse_hf_spec(spec: str | os.PathLike) -> tuple[str, str | None] | None:
    """`hf:ORG/NAME[@REVISION]` -> (repo_id, revision or None); None for anything not `hf:`.

    A malformed id after `hf:` is a one-line InputError saying what is expected.
    """
    s = os.fspath(spec)
    if not isinstance(s, str) or not s.startswith(HF_PREFIX):
        return None
    body = s[len(HF_PREFIX) :]
    want = "expected hf:ORG/NAME or hf:ORG/NAME@REVISION"
    repo_id, at, revision = body.partition("@")
    if at and not revision:
        raise InputError(f"{s}: empty revision after '@' ({want})")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise InputError(f"{s}: {repo_id!r} is not a Hub repository id ({want})")
    for part in parts:
        if not _ID_PART.fullmatch(part) or "--" in part or ".." in part or len(part) > 96:
            raise InputError(
                f"{s}: {part!r} is not a valid Hub name (letters, digits, '-', '_', '.'; "
                f"no '--' or '..'; at most 96 characters) ({want})"
            )
    if at and (not _REVISION.fullmatch(revision) or ".." in revision or "//" in revision):
        raise InputError(f"{s}: {revision!r} is not a branch, tag or commit sha ({want})")
    return repo_id, (revision if at else None)


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """A model spec -> a local model directory (see the module docstring).

    Plain paths come back as given (InputError when missing); `hf:` specs come back as the
    snapshot directory inside the Hub cache, holding config.json and the weights.
    """
    parsed = parse_hf_spec(spec)
    if parsed is None:
        path = Path(spec)
        if not path.exists():
            parts = os.fspath(spec).split("/")
            looks_like_hub = len(parts) == 2 and all(_ID_PART.fullmatch(p) for p in parts)
            raise InputError(
                f"{path}: no such model directory",
                hint=f"for the Hugging Face Hub repository write hf:{os.fspath(spec)}"
                if looks_like_hub
                else None,
            )
        return path
    repo_id, revision = parsed
    label = f"hf:{repo_id}" + (f"@{revision}" if revision else "")
    snapshot = _fetch(repo_id, revision, label)
    _check_snapshot(snapshot, label)
    return snapshot


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub reads it at import."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value is not None and value.strip() != "":
            return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The Hub cache as the environment says now: HF_HUB_CACHE, else HF_HOME/hub, else the default."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _fetch(repo_id: str, revision: str | None, label: str) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import utils as hf_errors  # the error types, in every version
    except ImportError:
        raise InputError(
            f"{label}: loading from the Hugging Face Hub needs huggingface_hub "
            f"(pip install 'huggingface_hub>=0.23')"
        ) from None

    offline = hub_offline()
    cache = hub_cache_dir()
    where = f"the local Hugging Face cache ({cache})"

    def download(local_only: bool) -> str:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS,
            local_files_only=local_only,
        )

    if not offline and revision is not None and _SHA.fullmatch(revision):
        # a commit never changes: a complete cached snapshot needs no Hub round trip (without
        # internet huggingface_hub would otherwise retry its file listing for ~20 s first)
        try:
            folder = download(local_only=True)
            if _snapshot_problem(Path(folder)) is None:
                return Path(folder)
        except hf_errors.LocalEntryNotFoundError:
            pass
    try:
        folder = download(local_only=offline)
    except hf_errors.GatedRepoError:
        raise InputError(
            f"{label}: the repository is gated; accept its terms on huggingface.co and log in "
            f"(hf auth login or HF_TOKEN)"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise InputError(
            f"{label}: no such repository on the Hugging Face Hub (or it is private: log in with "
            f"hf auth login or HF_TOKEN)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise InputError(
            f"{label}: the repository {repo_id} has no revision {revision!r} (a branch, tag or "
            f"commit sha)"
        ) from None
    except hf_errors.LocalEntryNotFoundError as e:  # not cached and the Hub not reachable / offline
        if offline:
            why = "HF_HUB_OFFLINE is set"
        else:
            cause = e.__cause__ or e
            why = f"the Hub cannot be reached ({type(cause).__name__})"
        raise InputError(
            f"{label}: not in {where} and {why}; fetch it once on a machine with internet "
            f"(or unset HF_HUB_OFFLINE)"
        ) from None
    except hf_errors.EntryNotFoundError as e:
        raise InputError(f"{label}: a file is missing on the Hub ({_first_line(e)})") from None
    except hf_errors.HfHubHTTPError as e:
        raise InputError(f"{label}: the Hugging Face Hub request failed ({_first_line(e)})") from None
    except hf_errors.HFValidationError as e:  # huggingface_hub's own id / revision checks
        raise InputError(f"{label}: {_first_line(e)}") from None
    except Exception as e:
        if _is_network_error(e):
            raise InputError(
                f"{label}: network error talking to the Hugging Face Hub ({type(e).__name__}: "
                f"{_first_line(e)}); set HF_HUB_OFFLINE=1 to use {where}"
            ) from None
        if isinstance(e, OSError):  # the cache folder: permissions, a full disk
            raise InputError(f"{label}: cannot use {where} ({_first_line(e)})") from None
        raise  # anything else is a bug and keeps its traceback
    return Path(folder)


def _is_network_error(e: BaseException) -> bool:
    # network errors come from whichever HTTP client this huggingface_hub uses (requests,
    # httpx, httpx2) or from the socket layer
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    root = type(e).__module__.split(".")[0]
    return root in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _snapshot_problem(folder: Path) -> str | None:
    """What a snapshot lacks to be a model directory, or None."""
    if not (folder / "config.json").is_file():
        return "the repository has no config.json (not a model repository?)"
    has_weights = any((folder / name).is_file() for name in WEIGHT_FILES) or any(
        folder.glob("*.safetensors")
    )
    if not has_weights:
        return f"the repository has no weights ({' or '.join(WEIGHT_FILES)} / *.safetensors)"
    return None


def _check_snapshot(folder: Path, label: str) -> None:
    problem = _snapshot_problem(folder)
    if problem is not None:
        raise InputError(f"{label}: {problem}")
