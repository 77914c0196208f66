"""``flanpipe bench``: it runs the checkout's bench/ from any folder, and says in one line what is
missing where bench/ is not beside the package (an installed wheel) or a peer of the dev extra does
not import."""

import os
import re
import shutil
import subprocess
import sys

import tomllib
from setuptools import find_namespace_packages

from tests.conftest import BIN, REPO


def _flanpipe(*args: str, cwd, pythonpath=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "flanpipe.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_runs_the_checkouts_benchmark_from_another_folder(tmp_path):
    """From a folder outside the checkout, the editable install's ``flanpipe`` finds bench/ beside its
    source and runs the templatize benchmark, whose rows equal the peer's."""
    command = [str(BIN / "flanpipe"), "bench", "templatize", "--rows", "3000", "--peer-rows", "300"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical output on the peer's rows: yes" in proc.stdout
    assert re.search(r"flanpipe \(Arrow, 1 thread\) +3,000 rows in", proc.stdout), proc.stdout


def test_a_package_without_bench_beside_it_says_it_needs_a_checkout(tmp_path):
    """The package's files alone in a site folder, as a wheel installs them (no bench/ beside them)."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "flanpipe", site / "flanpipe", ignore=shutil.ignore_patterns("__pycache__"))
    proc = _flanpipe("bench", "templatize", cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    needs = ("flanpipe bench needs a checkout of flanpipe: bench/ is not installed with the package "
             "(clone the repository and pip install -e '.[dev]' in it)")
    assert proc.stderr.strip() == needs, proc.stderr
    assert proc.stdout == ""


def test_a_missing_peer_says_which_and_how_to_get_it(tmp_path):
    """datasketch hidden (a module of that name first on the path that fails to import, as a missing
    one does): ``bench dedup`` stops before any work, naming it; the peers present are not named."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "datasketch.py").write_text(
        'raise ModuleNotFoundError("No module named \'datasketch\'", name="datasketch")\n')
    proc = _flanpipe("bench", "dedup", cwd=tmp_path, pythonpath=hide)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    needs = "flanpipe bench dedup needs the dev extra: pip install -e '.[dev]' (missing: datasketch)"
    assert proc.stderr.strip() == needs, proc.stderr
    assert proc.stdout == ""


def test_the_wheel_holds_the_package_and_not_the_benchmarks():
    """setuptools' package discovery with pyproject's own settings (what a wheel is built from) finds
    flanpipe and its subpackages, and neither bench nor tests."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_namespace_packages(str(REPO), include=find["include"])
    assert "flanpipe" in packages and "flanpipe.core.train" in packages
    assert not [p for p in packages if not p.startswith("flanpipe")], packages
