"""Held-out accuracy over training (``train.eval_every``) and checkpoint selection
(``train.select: best_val``), on a tiny Llama trained under torchrun (CPU, gloo, ZeRO-3, two ranks)
on sst2's rendered rows, RTE held out: the curve's points are what a separate evaluation of the
exported checkpoint scores on the same rows; the chosen step is the one with the best validation
score in ``metrics.csv``; a run killed and resumed writes the same curve; a held-out dataset as
validation set is refused; the report draws the curve from ``metrics.csv``."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from flanpipe.core.config import ConfigError, EvaluateSlice, PackSlice, TokenizerSource, parse_config
from flanpipe.core.eval.ranking import eval_sample, prompts_for
from flanpipe.core.text.templates import load_bank, long_field, render_template
from flanpipe.core.tokens.formats import Format
from flanpipe.core.tokens.tokenizers import load_tokenizer, train_spm
from flanpipe.stages.download import download_dataset
from flanpipe.stages.evaluate import evaluate_dataset
from flanpipe.stages.pack import tokenize_and_pack
from flanpipe.stages.report import curve_section, heldout_curves
from flanpipe.stages.train import FAIL_AT_STEP
from tests.conftest import REPO
from tests.unit import curve_train
from tests.unit.test_tokenizer import write_mixture

STEPS, EVERY, ROWS = 10, 2, 7


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """RTE's and sst2's embedded splits, sst2's train rows rendered with its first two templates,
    a SentencePiece model and the packed rows."""
    tmp = tmp_path_factory.mktemp("curve")
    cfg = curve_train.config()
    for name in ("rte", "sst2"):
        download_dataset(name, cfg.download.source_for(name), tmp / "raw" / name, cfg.seed)
    bank = load_bank()["sst2"]
    train_raw = pq.read_table(tmp / "raw/sst2/train.parquet")
    inputs, targets = [], []
    for template in bank.eval_templates[:2]:
        rendered = render_template(bank, template, train_raw, "dash")
        inputs += rendered.inputs.to_pylist()
        targets += rendered.targets.to_pylist()
    shards = write_mixture(tmp / "mixture", inputs, targets, rows_per_shard=50)
    rte = pq.read_table(tmp / "raw/rte/eval.parquet").to_pylist()
    texts = inputs + targets + [" ".join(str(v) for v in r.values()) for r in rte]
    model, _ = train_spm(texts, TokenizerSource(vocab_size=400), seed=1)
    (tmp / "spm.model").write_bytes(model)
    tokenize_and_pack("m", shards, tmp / "spm.model", tmp / "packed", PackSlice.of(cfg))
    return tmp


def launch(prepared, out, ranks=2, env=None, check=True, **train_keys):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={ranks}", "-m", "tests.unit.curve_train", str(prepared / "packed"),
           str(prepared / "spm.model"), str(prepared / "raw"), str(out), json.dumps(train_keys)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"} | (env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(prepared):
    out = prepared / "run"
    launch(prepared, out)
    return out


def curve(out) -> list[dict]:
    """The curve's rows of ``metrics.csv``, read here with the csv module."""
    with open(out / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["eval_split"]]


def score_at(rows, split, dataset, step) -> float:
    (found,) = [float(r["eval_score"]) for r in rows
                if (r["eval_split"], r["eval_dataset"], int(r["step"])) == (split, dataset, step)]
    return found


def best_step(rows) -> int:
    """The step of the best mean validation score, the earliest of ties."""
    steps = sorted({int(r["step"]) for r in rows})
    means = [np.mean([float(r["eval_score"]) for r in rows
                      if r["eval_split"] == "validation" and int(r["step"]) == s]) for s in steps]
    return steps[int(np.argmax(means))]


def test_the_curve_has_one_point_per_dataset_at_the_base_every_n_steps_and_the_last(run):
    rows = curve(run)
    expected = [(s, split, d) for s in range(0, STEPS + 1, EVERY)
                for split, d in (("heldout", "rte"), ("validation", "sst2"))]
    assert [(int(r["step"]), r["eval_split"], r["eval_dataset"]) for r in rows] == expected
    assert all(r["loss"] == "" for r in rows)  # the training columns stay empty in a curve row
    scores = {float(r["eval_score"]) for r in rows if r["eval_dataset"] == "rte"}
    assert len(scores) > 1, "the fixture's curve must move, or the checks below could not fail"


def test_tensorboard_holds_the_curve_of_metrics_csv(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = curve(run)
    for split, dataset in (("heldout", "rte"), ("validation", "sst2")):
        for key in ("score", "loss"):
            logged = [(e.step, e.value) for e in events.Scalars(f"{split}/{dataset}/{key}")]
            written = [(int(r["step"]), float(r[f"eval_{key}"])) for r in rows
                       if r["eval_dataset"] == dataset]
            assert [s for s, _ in logged] == [s for s, _ in written]
            assert [v for _, v in logged] == pytest.approx([v for _, v in written], rel=1e-5)


def test_best_val_exports_the_step_of_the_best_validation_score_in_metrics_csv(run):
    rows = curve(run)
    chosen = best_step(rows)
    manifest = json.loads((run / "run.json").read_text())
    record = json.loads((run / "hf/flanpipe.json").read_text())
    assert manifest["selected"]["rule"] == "best_val"
    assert manifest["selected"]["step"] == chosen == record["step"]
    assert chosen not in (0, STEPS), "the fixture's choice is a middle step, unlike last or the base"
    assert not (run / "best").exists()


def evaluate_of(run, prepared, dataset, tmp_path, **evaluate_keys):
    """``flanpipe evaluate``'s function on the exported model, ``max_examples`` the curve's rows."""
    cfg = curve_train.config()
    data = cfg.model_dump(mode="json")
    data["evaluate"].update(max_examples=ROWS, **evaluate_keys)
    return evaluate_dataset(dataset, run / "hf", prepared / "raw" / dataset, tmp_path / f"{dataset}.json",
                            EvaluateSlice.of(parse_config(data)), few_shot=False, model_name="nli")


@pytest.mark.parametrize("split, dataset", [("heldout", "rte"), ("validation", "sst2")])
def test_a_curve_point_equals_a_separate_evaluate_of_that_steps_checkpoint(run, prepared, split, dataset,
                                                                           tmp_path):
    """The exported model is the chosen step's: evaluate scores it as the curve did at that step
    (exactly), and not as at the last step."""
    rows = curve(run)
    chosen = best_step(rows)
    result = evaluate_of(run, prepared, dataset, tmp_path)
    assert result["examples"] == ROWS
    assert result["headline"]["mean"] == score_at(rows, split, dataset, chosen)
    if dataset == "rte":
        assert score_at(rows, split, dataset, STEPS) != result["headline"]["mean"]


def test_max_templates_by_dataset_scores_the_named_dataset_on_more_templates(run, prepared, tmp_path):
    """``max_templates: 1`` with ``{rte: 2}``: RTE is scored on its first two eval templates, the
    very score the curve (``max_templates: 2``) gave the chosen step; sst2 on its first one only."""
    keys = {"max_templates": 1, "max_templates_by_dataset": {"rte": 2}}
    rte = evaluate_of(run, prepared, "rte", tmp_path, **keys)
    sst2 = evaluate_of(run, prepared, "sst2", tmp_path, **keys)
    bank = load_bank("flanpipe", None)
    assert [t["template_id"] for t in rte["templates"]] == [t.id for t in bank["rte"].eval_templates[:2]]
    assert [t["template_id"] for t in sst2["templates"]] == [bank["sst2"].eval_templates[0].id]
    assert rte["headline"]["mean"] == score_at(curve(run), "heldout", "rte", best_step(curve(run)))


def test_best_val_with_lora_exports_the_chosen_steps_adapter_and_merged_weights(prepared, tmp_path):
    """LoRA on the same run: the exported (merged) model and its ``adapter/`` are the chosen step's;
    ``flanpipe evaluate`` of the merged model scores RTE as the curve did at that step, and ``peft``
    loading the adapter onto its saved base gives the merged model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    launch(prepared, out, adapter={"kind": "lora", "rank": 4, "alpha": 8.0, "target_modules": "auto"})
    rows = curve(out)
    chosen = best_step(rows)
    selected = json.loads((out / "run.json").read_text())["selected"]["step"]
    assert selected == chosen == json.loads((out / "hf/flanpipe.json").read_text())["step"]
    result = evaluate_of(out, prepared, "rte", tmp_path)
    assert result["headline"]["mean"] == score_at(rows, "heldout", "rte", chosen)
    merged = AutoModelForCausalLM.from_pretrained(out / "hf", torch_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(out / "adapter/base", torch_dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)


def test_the_curve_loss_is_the_gold_options_nll_per_token_by_transformers(run, prepared):
    """The held-out loss at the chosen step: the gold option's tokens (and EOS) after each prompt,
    summed by a plain ``transformers`` forward pass of prompt + option, per token."""
    from transformers import AutoModelForCausalLM

    rows = curve(run)
    chosen = best_step(rows)
    cfg = EvaluateSlice.of(curve_train.config())
    model = AutoModelForCausalLM.from_pretrained(str(run / "hf"), dtype=torch.float64).eval()
    fmt = Format.of(load_tokenizer(run / "hf"), cfg, name="eos")
    bank = load_bank()["rte"]
    from flanpipe.core.config.registry import load_registry

    table = eval_sample(pq.read_table(prepared / "raw/rte/eval.parquet"), ROWS, cfg.seed, "rte")
    field = long_field(load_registry().datasets["rte"], table)
    nll, tokens = 0.0, 0
    for template in bank.eval_templates[:2]:
        rendered = render_template(bank, template, table, "dash")
        prompts = prompts_for(bank, template, table, None, "dash", fmt.counts, field, cfg.max_input_tokens)
        options = rendered.options.to_pylist()
        gold = [[opts[g]] for opts, g in zip(options, rendered.answer_index, strict=True)]
        for ptoks, (otoks,) in zip(fmt.inputs(prompts), fmt.options(prompts, gold), strict=True):
            ids = torch.tensor([ptoks + otoks])
            with torch.no_grad():
                logp = model(input_ids=ids).logits.log_softmax(-1)[0, len(ptoks) - 1:-1]
            nll -= float(logp.gather(-1, ids[0, len(ptoks):, None]).sum())
            tokens += len(otoks)
    (logged,) = [float(r["eval_loss"]) for r in rows
                 if (r["eval_dataset"], int(r["step"])) == ("rte", chosen)]
    assert logged == pytest.approx(nll / tokens, rel=1e-5)


def test_a_run_killed_and_resumed_writes_the_same_curve(run, prepared, tmp_path):
    """Rank 0 dies before step 7 (the last checkpoint: step 6); the rerun resumes there, keeps the
    points up to step 6 once and scores the rest: the curve and the choice are the straight run's."""
    out = tmp_path / "resumed"
    proc = launch(prepared, out, check=False, env={FAIL_AT_STEP: "7"})
    assert proc.returncode != 0
    assert max(int(r["step"]) for r in curve(out)) == 6
    launch(prepared, out)
    assert curve(out) == curve(run)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["resumed_from_step"] == 6
    assert manifest["selected"]["step"] == json.loads((run / "run.json").read_text())["selected"]["step"]


def test_one_rank_under_zero_1_writes_the_curve_of_two_ranks_under_zero_3(run, prepared, tmp_path):
    """The same steps on one rank with whole parameters: the same scores, the losses to float
    precision (the two runs' weights differ only in the order of their sums)."""
    out = tmp_path / "zero1"
    launch(prepared, out, ranks=1, zero_stage=1)
    one, two = curve(out), curve(run)
    key = ("step", "eval_split", "eval_dataset", "eval_score")
    assert [tuple(r[k] for k in key) for r in one] == [tuple(r[k] for k in key) for r in two]
    assert [float(r["eval_loss"]) for r in one] == pytest.approx([float(r["eval_loss"]) for r in two],
                                                                 rel=1e-4)


def test_without_eval_every_metrics_csv_is_as_before(prepared, tmp_path):
    """The default (no curve) writes the metrics.csv columns, run.json keys and model record that runs
    wrote before the curve existed."""
    out = tmp_path / "plain"
    launch(prepared, out, ranks=1, steps=2, eval_every=None, select="last")
    with open(out / "metrics.csv", newline="") as f:
        assert next(csv.reader(f)) == ["step", "loss", "lr", "grad_norm", "target_tokens", "tokens",
                                       "tokens_per_s", "elapsed_s"]
    manifest = json.loads((out / "run.json").read_text())
    assert "curve" not in manifest and "selected" not in manifest
    assert "step" not in json.loads((out / "hf/flanpipe.json").read_text())


def test_the_report_draws_the_curve_from_metrics_csv(run, tmp_path):
    lines = curve_section([str(run / "metrics.csv")], tmp_path)
    assert (tmp_path / "heldout_curve.png").stat().st_size > 1000
    drawn = heldout_curves([str(run / "metrics.csv")])
    rows = curve(run)
    assert drawn == {(run.name, "rte"): [(int(r["step"]), float(r["eval_score"])) for r in rows
                                         if r["eval_split"] == "heldout"]}
    assert "![held-out curve](heldout_curve.png)" in lines
    assert f"| {run.name} | rte | {score_at(rows, 'heldout', 'rte', 0):.1f} |" in "\n".join(lines)


@pytest.mark.parametrize("config, message", [
    ({"heldout_clusters": ["nli"], "train": {"val_datasets": ["rte"]}},
     "train.val_datasets: rte is in held-out cluster nli"),
    ({"heldout_clusters": ["nli"], "ablations": {"enabled": True, "heldout": ["commonsense"]},
      "train": {"val_datasets": ["sst2", "copa"]}},
     "train.val_datasets: copa is in held-out cluster commonsense"),
    ({"train": {"select": "best_val"}}, "train.select: best_val chooses among the scored steps"),
    ({"train": {"val_datasets": ["common_gen"]}}, "train.val_datasets: common_gen has no eval split with"),
])
def test_a_heldout_validation_dataset_is_refused_naming_the_key(config, message):
    train = {"eval_every": 5, "select": "best_val", **config.get("train", {})}
    if config.get("train", {}).get("select") == "best_val":
        train.pop("eval_every")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config({**config, "train": train})


def test_max_templates_by_dataset_refuses_a_name_outside_the_registry_naming_the_key():
    """A typo is refused; a registry dataset the run leaves out is unused (a narrower `datasets`
    keeps an experiment's config valid)."""
    message = (r"evaluate\.max_templates_by_dataset: unknown dataset\(s\) \['arc-easy'\]; "
               r"allowed: registry names")
    with pytest.raises(ConfigError, match=message):
        parse_config({"evaluate": {"max_templates_by_dataset": {"arc-easy": 2}}})
    cfg = parse_config({"datasets": ["rte", "sst2"], "heldout_clusters": ["nli"],
                        "evaluate": {"max_templates": 1, "max_templates_by_dataset": {"piqa": 2}}})
    assert (cfg.evaluate.templates_for("piqa"), cfg.evaluate.templates_for("rte")) == (2, 1)
