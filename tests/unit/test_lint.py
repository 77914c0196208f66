"""Lint as tests: ruff on the package, snakefmt on the workflow files, import-linter on the layers."""

import subprocess

from tests.conftest import BIN, REPO


def _run(*cmd):
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=REPO, capture_output=True, text=True)


def test_ruff():
    proc = _run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt():
    proc = _run("snakefmt", "--check", "Snakefile", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_layers():
    """import-linter's contracts in pyproject.toml: cli and bench above the stages, the stages above
    the core, and no stage importing another stage."""
    proc = _run("lint-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout
