"""The whole workflow with a tiny T5 (`train.model.architecture: t5`, `tokenize.model_kind:
encoder_decoder`) on a small config of its own: five embedded datasets, two held-out clusters
(classification and generation), 2 steps under DeepSpeed ZeRO-3 on 2 gloo ranks, evaluation and the
the format ablation (one more model, `no_template`; no `all` model) and the report. The embedded
demo's config is untouched (it gains no jobs)."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from flanpipe.core.config import load_config
from tests.conftest import REPO, run_snakemake

pytestmark = pytest.mark.e2e
LI, LT = 128, 32
CONFIG = {
    "seed": 1234, "datasets": ["rte", "copa", "sst2", "common_gen", "cola"],
    "heldout_clusters": ["nli", "struct_to_text"], "all_model": False,
    "tokenize": {"tokenizer": {"vocab_size": 800}, "max_input_tokens": LI, "max_target_tokens": LT,
                 "model_kind": "encoder_decoder"},
    "train": {"steps": 2, "tokens_per_batch": 2 * (LI + LT), "checkpoint_every": 2, "log_every": 1,
              "precision": "fp32",  # the losses are checked against a float forward, on every CPU
              "model": {"architecture": "t5", "hidden_size": 32, "num_layers": 2, "num_heads": 4}},
    "evaluate": {"max_examples": 4, "generation": {"max_new_tokens": 8}, "precision": "fp32"},
    # the format ablation on nli: its `instructions` point is the nli model (the same clusters)
    "ablations": {"enabled": True, "kinds": ["format"], "heldout": ["nli"],
                  "clusters": ["commonsense", "sentiment", "struct_to_text", "misc"],
                  "formats": ["instructions", "no_template"]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("t5")
    config = wd / "t5.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run_snakemake(wd, "all", config_file=config)
    return wd, load_config(config)


def step_examples(run_dir, mixture, cfg, world):
    """The examples of the run's first step (all ranks), unpacked from the packed rows it read."""
    from flanpipe.core.tokens.shards import PackedShards, unpack_row
    from flanpipe.stages.train import BatchPlan, step_rows

    data = PackedShards(run_dir / f"data/packed/{mixture}")
    plan = BatchPlan.from_tokens(cfg.train.tokens_per_batch, LI + LT, cfg.train.micro_batch_rows, world)
    return [pair for row in data.take(step_rows(0, plan, len(data), cfg.seed)) for pair in unpack_row(row)]


def test_a_t5_trains_on_paired_rows_and_its_first_loss_is_its_own(run):
    """Each mixture's T5 trained under ZeRO-3 on 2 ranks; the first step's loss equals the base
    model's (the same initial weights) mean target loss over the step's examples, each run alone
    through transformers' own T5."""
    from transformers import AutoModelForSeq2SeqLM

    wd, cfg = run
    base = AutoModelForSeq2SeqLM.from_pretrained(str(wd / "models/base/hf"), local_files_only=True).eval()
    for mixture in ("nli", "struct_to_text"):
        trained = json.loads((wd / f"models/{mixture}/run.json").read_text())
        assert trained["model"]["model_type"] == "t5" and trained["world_size"] == 2
        assert trained["deepspeed"]["zero_optimization"]["stage"] == 3
        packed = json.loads((wd / f"data/packed/{mixture}/manifest.json").read_text())
        assert packed["model_kind"] == "encoder_decoder"
        with open(wd / f"models/{mixture}/metrics.csv", newline="") as f:
            metrics = list(csv.DictReader(f))
        assert [int(m["step"]) for m in metrics] == [1, 2]
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in step_examples(wd, mixture, cfg, trained["world_size"]):
                x, y = (torch.from_numpy(a.astype(np.int64))[None] for a in (x, y))
                logits = base(input_ids=x, labels=y).logits[0].double()
                total += float(torch.nn.functional.cross_entropy(logits, y[0], reduction="sum"))
                count += y.shape[1]
        assert int(metrics[0]["target_tokens"]) == count
        assert float(metrics[0]["loss"]) == pytest.approx(total / count, rel=1e-4)


def test_the_export_loads_with_auto_classes_and_encodes_as_training_did(run):
    import sentencepiece as spm
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    wd, _ = run
    folder = wd / "models/nli/hf"
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder), local_files_only=True)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert json.loads((folder / "flanpipe.json").read_text())["format"] == "eos"
    sp = spm.SentencePieceProcessor(model_file=str(wd / "models/tokenizer/spm.model"))
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "Premise: the cat sat.\nHypothesis: a cat sat.\nOPTIONS:\n- yes\n- no"
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


@pytest.mark.parametrize("result, method, format_from", [
    ("nli/rte.json", "rank_classification", "trained"),
    ("nli/rte.few_shot.json", "rank_classification", "trained"),
    ("struct_to_text/common_gen.json", "generation", "trained"),
    ("base/rte.json", "rank_classification", "encoder_decoder"),  # the untuned T5: eos all the same
    ("base/common_gen.json", "generation", "encoder_decoder"),
])
def test_every_t5_is_evaluated_in_the_eos_format_and_reported(run, result, method, format_from):
    wd, _ = run
    r = json.loads((wd / "results/eval" / result).read_text())
    assert (r["method"], r["format"], r["format_from"]) == (method, "eos", format_from)
    assert list(r["by_format"]) == ["eos"] and r["examples"] == 4
    assert "rte" in (wd / "results/report/index.md").read_text()


def test_the_format_ablation_trains_a_t5_and_the_report_shows_it(run):
    wd, _ = run
    trained = json.loads((wd / "models/format_no_template/run.json").read_text())
    assert trained["model"]["model_type"] == "t5"
    r = json.loads((wd / "results/ablations/format/no_template/rte.json").read_text())
    assert (r["method"], r["format"], r["examples"]) == ("rank_classification", "eos", 4)
    assert not (wd / "models/all").exists()
    report = (wd / "results/report/index.md").read_text()
    table = report[report.index("## Ablation: instruction format"):]
    assert "| instructions |" in table and "| no_template |" in table


def test_the_demo_config_gains_no_jobs():
    """The embedded demo's dry run plans no encoder-decoder work: its config trains a Llama."""
    demo = load_config(REPO / "config/config.yaml")
    assert demo.tokenize.model_kind == "decoder_only" and demo.train.model.architecture == "llama"
