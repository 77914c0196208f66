"""Fine-tuning a pretrained checkpoint with its own BPE tokenizer, through Snakemake: SmolLM2-135M
(Llama architecture, ``tokenizer.json``), 2 steps under DeepSpeed ZeRO-3 on 2 gloo ranks; no
tokenizer config beyond ``train.model``. The demo run's mixtures are reused (packing and training
are what this tests)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, run_snakemake
from tests.unit.test_tokenizer_seam import adversarial, real_texts

pytestmark = pytest.mark.e2e
LI, LT = 96, 32


def pretrained_config(tmp_path, checkpoint, **tokenizer) -> Path:
    """The demo config with the checkpoint as the model, short rows and 2 steps of 2 rows."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["tokenize"].update(max_input_tokens=LI, max_target_tokens=LT)
    cfg["tokenize"]["tokenizer"] = {"source": "auto", **tokenizer}
    cfg["train"].update(steps=2, tokens_per_batch=2 * (LI + LT), lr=1e-4, checkpoint_every=2, log_every=1,
                        model={"source": "pretrained", "path": str(checkpoint)})
    path = tmp_path / "pretrained.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run(smollm2_dir, demo_run, tmp_path_factory):
    """The demo run's mixtures (copied with their times), packed with SmolLM2's tokenizer and
    trained on: Snakemake reruns what is missing or older than its inputs (pack and train)."""
    wd = tmp_path_factory.mktemp("pretrained")
    shutil.copytree(demo_run / "data", wd / "data", ignore=shutil.ignore_patterns("packed", "catalog.duckdb"))
    run_snakemake(wd, "models/nli/run.json", "--rerun-triggers", "mtime",
                  config_file=pretrained_config(wd, smollm2_dir))
    return wd


def reference_loss(checkpoint, rows) -> float:
    """The checkpoint's mean target-token loss on packed rows, by ``transformers`` alone: each
    example of a row run as its own sequence (no packing, no segment mask)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True,
                                                 dtype=torch.float32).eval()
    total, count = 0.0, 0
    for row in rows:
        for segment in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
            where = row["segment_ids"] == segment
            tokens = torch.from_numpy(row["tokens"][where].astype(np.int64))[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(tokens).logits[0, :-1].double(), -1)
            target = torch.from_numpy(row["loss_mask"][where][1:].astype(bool))
            picked = logp[torch.arange(len(target)), tokens[0, 1:]]
            total -= float(picked[target].sum())
            count += int(target.sum())
    return total / count


def test_snakemake_fine_tunes_smollm2_with_its_own_tokenizer(run, smollm2_dir):
    from flanpipe.core.tokens.shards import PackedShards
    from flanpipe.stages.train import BatchPlan, step_rows

    packed = json.loads((run / "data/packed/nli/manifest.json").read_text())
    assert packed["tokenizer"]["kind"] == "hf" and packed["tokenizer"]["vocab_size"] == 49152
    assert packed["tokenizer"]["path"] == str(smollm2_dir / "tokenizer.json")
    assert packed["tokenizer"]["bos_added"] is False
    assert not (run / "models/tokenizer").exists()  # no tokenizer was trained
    trained = json.loads((run / "models/nli/run.json").read_text())
    assert trained["world_size"] == 2 and trained["deepspeed"]["zero_optimization"]["stage"] == 3
    with open(run / "models/nli/metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    assert [int(m["step"]) for m in metrics] == [1, 2]
    # step 1's loss is the checkpoint's own, before any update: a model that misread the weights,
    # or ids that meant nothing to it, would be far from transformers' figure (and near ln 49152)
    data = PackedShards(run / "data/packed/nli")
    plan = BatchPlan.from_tokens(2 * (LI + LT), LI + LT, 1, 2)
    rows = data.take(step_rows(0, plan, len(data), 1234))
    assert float(metrics[0]["loss"]) == pytest.approx(reference_loss(smollm2_dir, rows), rel=1e-4)


def test_packed_examples_are_the_checkpoints_own_token_ids(run, smollm2_dir):
    """A pretrained checkpoint trains in the ``text`` format (``tokenize.format: auto``): every packed
    example is ``inputs \\n targets EOS`` as SmolLM2's tokenizer in ``transformers`` encodes the
    mixture's texts (cut to the budgets), with its EOS, ``<|im_end|>``, at the end only; the model
    folder records the format, so evaluation scores the tuned model in it."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from flanpipe.core.tokens.shards import PackedShards

    peer = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    mixture = pq.read_table(sorted((run / "data/mixtures/nli/shards").glob("*.parquet"))).to_pylist()
    data = PackedShards(run / "data/packed/nli")
    index = pq.read_table(run / "data/packed/nli/index.parquet").to_pylist()
    assert len(index) == len(mixture)
    [newline] = peer("\n", add_special_tokens=False)["input_ids"]
    assert json.loads((run / "data/packed/nli/manifest.json").read_text())["format"] == "text"
    for entry in index[::7]:
        example = mixture[entry["position"]]
        inputs = peer(example["inputs"], add_special_tokens=False)["input_ids"][:LI - 1]
        targets = peer(example["targets"], add_special_tokens=False)["input_ids"][:LT - 1]
        row = data[entry["row"]]
        tokens = row["tokens"][row["segment_ids"] == entry["segment"]].tolist()
        assert tokens == [*inputs, newline, *targets, 2], example["example_id"]
    record = json.loads((run / "models/nli/hf/flanpipe.json").read_text())
    assert record["format"] == "text" and record["separator"] == "\n"


def test_the_exported_folder_loads_and_encodes_exactly_as_the_checkpoint(run, smollm2_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = run / "models/nli/hf"
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    assert model.config.vocab_size == 49152 and model.config.eos_token_id == 2
    base = load_file(str(smollm2_dir / "model.safetensors"))
    tuned = model.state_dict()
    moved = [k for k, v in base.items() if k in tuned and not torch.equal(v, tuned[k])]
    assert moved and all(torch.isfinite(tuned[k]).all() for k in moved)  # fine-tuned, not replaced
    exported = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    original = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    texts = adversarial(real_texts(), seed=2)
    assert len(texts) > 1000
    assert exported(texts, add_special_tokens=False)["input_ids"] == original(
        texts, add_special_tokens=False)["input_ids"]
    assert (folder / "tokenizer.json").read_bytes() == (smollm2_dir / "tokenizer.json").read_bytes()


def test_a_new_tokenizer_with_a_pretrained_checkpoint_is_refused_before_any_job(smollm2_dir, tmp_path):
    proc = run_snakemake(tmp_path, "-n", "models/nli/run.json", check=False,
                         config_file=pretrained_config(tmp_path, smollm2_dir, source="train"))
    assert proc.returncode != 0
    said = proc.stderr + proc.stdout
    assert "tokenize.tokenizer.source: 'train' with train.model.source 'pretrained'" in said
    assert not (tmp_path / "data").exists()
