"""Lint as tests: ruff on the package, snakefmt on the workflow files, import-linter on the layers,
and which tests may import the benchmarks."""

import ast
import re
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
    """import-linter's contracts in pyproject.toml, every one kept: the CLI above the workflow, above
    the stages, above the core; no stage importing another stage; the core's groups in order; the
    package never importing the benchmarks (bench/)."""
    contracts = (REPO / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    proc = _run("lint-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{contracts} kept, 0 broken" in proc.stdout, proc.stdout


def test_only_the_benchmarks_tests_import_the_benchmarks():
    """A test module imports bench/ only if it tests a benchmark (test_bench_*.py): the data the other
    tests share is tests/synthetic.py's, which imports no benchmark."""
    importers = set()
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "bench" or n.startswith("bench.") for n in names):
                importers.add(path.relative_to(REPO).as_posix())
    assert importers and all(re.fullmatch(r"tests/unit/test_bench_\w+\.py", p) for p in importers), importers
