"""The distribution builds as a wheel whose packages are mamba_dna, mamba_dna.kernels and
mamba_dna.pipelines (no top-level `kernels`/`pipelines`), and installs into a fresh venv."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-isolation: the build backend (setuptools) is already in this environment, and a
    # CI machine must not fetch build tools for this.
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheels = list(out.glob("mamba_dna-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_layout(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("mamba_dna-")}
    assert tops == {"mamba_dna"}, f"unexpected top-level entries in the wheel: {tops}"
    assert "mamba_dna/kernels/__init__.py" in names
    assert "mamba_dna/kernels/reference.py" in names
    assert "mamba_dna/pipelines/__init__.py" in names
    for sub in ("score", "embed"):  # pipeline folders ship as subpackages
        assert f"mamba_dna/pipelines/{sub}/__init__.py" in names and f"mamba_dna/pipelines/{sub}/run.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "mamba-dna = mamba_dna.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_wheel_installs_into_fresh_venv(wheel: Path, tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # The fresh venv sees this environment's third-party packages (torch etc.) through a
    # .pth file, so nothing is downloaded; mamba-dna itself comes only from the wheel.
    purelib = subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "_parent_env.pth").write_text(ours + "\n")
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    code = (
        "import mamba_dna, mamba_dna.kernels, mamba_dna.pipelines, os;"
        "print(mamba_dna.__file__); print(mamba_dna.kernels.__file__);"
        "print(mamba_dna.pipelines.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    paths = r.stdout.split()
    assert len(paths) == 3
    for p in paths:
        assert p.startswith(str(env_dir)), f"{p} was not imported from the fresh venv"
    # The console script works from the fresh venv.
    r = subprocess.run(
        [str(env_dir / "bin" / "mamba-dna"), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert r.returncode == 0 and "mamba-dna" in r.stdout, r.stderr
