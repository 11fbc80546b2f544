"""The CLI frame: help lists commands, info names the backend, user mistakes are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mamba_dna.cli import main


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mamba_dna", *args], capture_output=True, text=True, env=env
    )


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "info" in r.stdout


def test_info_names_backend():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert "scan backend" in r.stdout
    assert "cpu" in r.stdout  # no GPU in CI


def test_backend_override(monkeypatch):
    import os

    env = dict(os.environ, MAMBA_DNA_BACKEND="ref")
    r = run_cli("info", env=env)
    assert r.returncode == 0
    assert "ref (forced by MAMBA_DNA_BACKEND=ref)" in r.stdout


def test_bad_backend_is_one_line():
    import os

    env = dict(os.environ, MAMBA_DNA_BACKEND="gpu-please")
    r = run_cli("info", env=env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "MAMBA_DNA_BACKEND" in r.stderr


def test_unknown_command_exit_2():
    r = run_cli("no-such-command")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_every_command_help_has_example():
    from typer.main import get_command

    from mamba_dna.cli import app

    root = get_command(app)
    missing = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + [name])
        else:
            if "Example" not in (cmd.help or ""):
                missing.append(" ".join(path))

    walk(root, [])
    assert not missing, f"commands without an Example in --help: {missing}"


def test_main_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "mamba-dna" in capsys.readouterr().out
