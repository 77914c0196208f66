import os
import subprocess
import sys
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
