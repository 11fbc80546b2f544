"""Where the demo's data is: --data, $MAMBA_DNA_DATA, ../shared/data beside the checkout or
the working directory; otherwise how to download it."""

from __future__ import annotations

import os
from pathlib import Path

from mamba_dna.errors import InputError

from .config import CORPUS_EXCLUDE, CORPUS_GLOBS, REQUIRED

REPO = Path(__file__).resolve().parents[2]  # the checkout (pipelines/demo/ -> repo)


def data_candidates(explicit: str | None) -> list[tuple[Path, str]]:
    """(folder, why it is looked at), in the order find_data tries them."""
    if explicit:
        return [(Path(explicit).expanduser(), "--data")]
    out = []
    env = os.environ.get("MAMBA_DNA_DATA")
    if env:
        out.append((Path(env).expanduser(), "$MAMBA_DNA_DATA"))
    out.append((REPO.parent / "shared" / "data", "beside the checkout"))
    out.append((Path.cwd().parent / "shared" / "data", "beside the working directory"))
    return out


def find_data(explicit: str | None = None) -> Path:
    """The data folder: --data, $MAMBA_DNA_DATA, ../shared/data (repository, then cwd)."""
    looked = []
    for path, why in data_candidates(explicit):
        if not path.is_dir():
            looked.append(f"{path} ({why}: absent)")
            continue
        missing = [r for r in REQUIRED if not (path / r).is_file()]
        if not missing:
            return path.resolve()
        looked.append(f"{path} ({why}: lacks {', '.join(missing)})")
    fetch = REPO / "data" / "fetch.py"
    raise InputError(
        "demo: no data folder with the demo's files; looked at " + "; ".join(looked),
        hint=f"download the public records (checksummed) with `python {fetch} fetch "
             "~/mamba-dna-data`, then `mamba-dna demo --data ~/mamba-dna-data` "
             "(or export MAMBA_DNA_DATA=~/mamba-dna-data)",
    )


def corpus_files(data: Path) -> list[Path]:
    """The pretraining corpus: one reference genome per virus species + mitochondrial genomes."""
    files: list[Path] = []
    for pat in CORPUS_GLOBS:
        for p in sorted(data.glob(pat)):
            if p.is_file() and p not in files and not any(x in p.name for x in CORPUS_EXCLUDE):
                files.append(p)
    return files

