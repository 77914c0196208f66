import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The tests never reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def run_snakemake(workdir: Path, *args: str, config_file: Path | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run the project's Snakefile with `workdir` as working directory (outputs land there)."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(config_file or REPO / "config/config.yaml"),
           "--cores", "2", *args]
    # a guard against a hung run, not a speed test: the full demo takes ~8 min on 2 idle cores and
    # over 20 on a machine that is busy with other work
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def open_catalog(workdir: Path) -> Iterator:
    """The run's DuckDB catalog, read-only, opened from the workflow directory (its views use paths
    relative to it), which is left again afterwards."""
    import duckdb

    cwd = os.getcwd()
    os.chdir(workdir)
    con = duckdb.connect("data/catalog.duckdb", read_only=True)
    try:
        yield con
    finally:
        con.close()
        os.chdir(cwd)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny matrices gain nothing from a second one, which on a shared 2-core
    machine mostly waits (5-10x slower under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smollm2_folder(cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a local Hugging Face folder at ``cache`` (default
    ``$FLANPIPE_TEST_CACHE`` or ``~/.cache/flanpipe``, then ``smollm2-135m-instruct``): see
    :func:`flanpipe.core.model.checkpoint.smollm2_from_gguf`."""
    from flanpipe.core.model.checkpoint import smollm2_from_gguf

    root = Path(os.environ.get("FLANPIPE_TEST_CACHE", Path.home() / ".cache/flanpipe"))
    return smollm2_from_gguf(cache or root / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """A real pretrained checkpoint with its own BPE tokenizer (see :func:`smollm2_folder`)."""
    return smollm2_folder()


# The fast tier (`bash scripts/test.sh --fast`: `pytest -m "not slow and not e2e and not slurm"`) is the
# inner loop: the unit tests, without the ones below, which start torchrun or spawned ranks,
# Snakemake, mkdocs or the linters. A name here that matches no test fails the collection, so a
# renamed test cannot fall into the fast tier unnoticed.
SLOW = {
    "tests/unit/test_train_seq2seq.py": "torchrun: T5 training on two ranks",
    "tests/unit/test_train_guards.py": "torchrun: tiny Llama runs stopped on a NaN loss, killed and resumed",
    "tests/unit/test_trackers.py": "torchrun: a tiny Llama logged to MLflow and W&B",
    "tests/unit/test_publish.py": "torchrun: a tiny LoRA run to publish",
    "tests/unit/test_lint.py": "ruff, snakefmt and import-linter",
    "tests/unit/test_lora.py::test_two_ranks_": "torchrun: LoRA under ZeRO-3 on two ranks",
    "tests/unit/test_bench_checkpoint.py::test_zero3_loads_partitioned_on_two_ranks_and_exports_back_exactly":
        "torchrun: a partitioned load on two ranks",
    "tests/unit/test_optim.py::test_flat_partitions_on_two_ranks_match_whole_tensors": "two spawned ranks",
    "tests/unit/test_launch.py::test_killing_the_jobs_process_group_mid_train_leaves_no_training_rank":
        "torchrun: a two-rank train killed",
    "tests/unit/test_shards.py::test_a_shard_overwritten_with_other_tokens_of_its_size_stops_train":
        "torchrun: the train stage refuses a shard",
    "tests/unit/test_bench_scale.py::test_a_real_snakemake_run_is_read_per_job_with_its_own_peak":
        "a real Snakemake run",
    "tests/unit/test_docs.py::test_site_builds_strict": "mkdocs build --strict",
    "tests/unit/test_docs.py::test_cheap_commands_run": "the docs' commands, Snakemake's dry run among them",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "demo: uses the shared demo run (tests/e2e/conftest.py demo_run; "
                            "marked here): scripts/test.sh runs these in a pytest of their own")


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: the check sees every collected test
def pytest_collection_modifyitems(config, items):
    matched = set()
    for item in items:
        if "demo_run" in item.fixturenames:  # directly or through another fixture
            item.add_marker(pytest.mark.demo)
        for prefix in SLOW:
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.slow)
                matched.add(prefix)
    collected = {item.nodeid.split("::")[0] for item in items}
    stale = [p for p in SLOW if p not in matched and p.split("::")[0] in collected]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")
