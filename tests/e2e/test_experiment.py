"""The held-out experiment's config (config/experiments/heldout_smollm2.yaml) plans the paper's
protocol on a real checkpoint: a dry run, with SmolLM2 in place and no real data (the download jobs
read it; a dry run does not)."""

from __future__ import annotations

import re

import pytest

from flanpipe.core.config import load_config
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO, run_snakemake

pytestmark = pytest.mark.e2e
EXPERIMENT = REPO / "config/experiments/heldout_smollm2.yaml"
CHAT = REPO / "config/experiments/heldout_smollm2_chat.yaml"
FLAN = REPO / "config/experiments/heldout_smollm2_flan.yaml"


def test_the_experiment_plans_one_model_per_held_out_cluster_on_every_eval_row(tmp_path, smollm2_dir):
    """Sized for power: three held-out clusters (reading comprehension among them), every eval row,
    one template, the headline variant alone, no ablation; `precision: auto` in both stages."""
    cfg = load_config(EXPERIMENT)
    assert cfg.train.model.source == "pretrained"
    assert set(cfg.heldout_clusters) == {"commonsense", "closed_book_qa", "reading_comprehension"}
    assert cfg.evaluate.max_examples is None and cfg.evaluate.variants == "headline"
    assert not cfg.evaluate.cross_formats and not cfg.ablations.enabled
    assert cfg.train.precision == cfg.evaluate.precision == "auto"
    assert {cfg.download.source_for(d).path.rsplit("/", 1)[-1] for d in cfg.dataset_names()} == \
        set(cfg.dataset_names())
    (tmp_path / "models/pretrained").mkdir(parents=True)
    (tmp_path / "models/pretrained/smollm2").symlink_to(smollm2_dir)
    proc = run_snakemake(tmp_path, "all", "-n", config_file=EXPERIMENT)
    text = proc.stdout + proc.stderr
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", text, re.M)}
    plan = Plan(cfg)
    assert counts["train"] == len(plan.all_mixtures()) == 3 and "all" not in plan.all_mixtures()
    assert counts["download"] == len(cfg.dataset_names())
    assert "tokenizer" not in counts  # the checkpoint's own tokenizer, read in place
    heldout = plan.datasets_in(cfg.heldout_clusters)
    assert sorted(heldout) == ["arc_easy", "boolq", "copa", "piqa"]
    assert counts["evaluate"] == counts["evaluate_base"] == len(heldout)
    assert not {"evaluate_few_shot", "evaluate_ablation_format"} & set(counts) and counts["report"] == 1


def test_the_eos_comparison_plans_the_held_out_models_alone(tmp_path, smollm2_dir):
    """heldout_smollm2_eos.yaml on top of the experiment: the three held-out models in the `eos`
    format, no ablation, no base."""
    (tmp_path / "models/pretrained").mkdir(parents=True)
    (tmp_path / "models/pretrained/smollm2").symlink_to(smollm2_dir)
    eos = REPO / "config/experiments/heldout_smollm2_eos.yaml"
    proc = run_snakemake(tmp_path, "all", "-n", "--configfile", str(EXPERIMENT), str(eos),
                         config_file=EXPERIMENT)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}
    assert counts["train"] == 3 and counts["evaluate"] == 4
    assert not {"evaluate_base", "evaluate_ablation_format", "templatize_format"} & set(counts)
    import yaml
    from snakemake.utils import update_config

    from flanpipe.core.config import PackSlice, parse_config

    merged = yaml.safe_load(EXPERIMENT.read_text())
    update_config(merged, yaml.safe_load(eos.read_text()))  # as Snakemake merges its config files
    assert PackSlice.of(parse_config(merged)).format == "eos"


def test_the_chat_comparison_plans_the_held_out_models_and_the_base_in_chat(tmp_path, smollm2_dir):
    """heldout_smollm2_chat.yaml on top of the experiment: the three held-out models in the `chat`
    format beside the base, no ablation."""
    import yaml
    from snakemake.utils import update_config

    from flanpipe.core.config import PackSlice, parse_config

    (tmp_path / "models/pretrained").mkdir(parents=True)
    (tmp_path / "models/pretrained/smollm2").symlink_to(smollm2_dir)
    proc = run_snakemake(tmp_path, "all", "-n", "--configfile", str(EXPERIMENT), str(CHAT),
                         config_file=EXPERIMENT)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}
    assert counts["train"] == 3 and counts["evaluate"] == counts["evaluate_base"] == 4
    assert not {"evaluate_ablation_format", "templatize_format"} & set(counts)
    merged = yaml.safe_load(EXPERIMENT.read_text())
    update_config(merged, yaml.safe_load(CHAT.read_text()))
    chat = parse_config(merged)
    assert PackSlice.of(chat).format == "chat" and chat.evaluate.cross_formats  # lm-eval's beside it


def test_the_flan_prompts_comparison_plans_the_held_out_models_and_the_base(tmp_path, smollm2_dir):
    """heldout_smollm2_flan.yaml on top of the experiment: the three held-out models and the base,
    trained and scored with FLAN's 2021 templates read from the checkout the overlay names (relative
    to the working directory: FLAN's own files, or the tests' small checkout in their place), no
    ablation."""
    import yaml
    from snakemake.utils import update_config

    from flanpipe.core.config import EvaluateSlice, TemplatizeSlice, parse_config

    run = tmp_path / "main/runs/heldout_smollm2_flan"
    (run / "models/pretrained").mkdir(parents=True)
    (run / "models/pretrained/smollm2").symlink_to(smollm2_dir)
    overlay = yaml.safe_load(FLAN.read_text())
    assert overlay["templatize"] == {"bank": "flan2021", "flan_root": "../../../shared/flan"}
    (tmp_path / "shared").mkdir()
    shared = REPO.parent / "shared/flan"  # FLAN's own files where they are beside the project
    (tmp_path / "shared/flan").symlink_to(shared if shared.is_dir() else REPO / "tests/data/flan")
    proc = run_snakemake(run, "all", "-n", "--configfile", str(EXPERIMENT), str(FLAN), config_file=EXPERIMENT)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}
    assert counts["train"] == 3 and counts["evaluate"] == counts["evaluate_base"] == 4
    assert counts["templatize"] == 5
    assert not {"evaluate_ablation_format", "templatize_format"} & set(counts)
    merged = yaml.safe_load(EXPERIMENT.read_text())
    update_config(merged, overlay)
    cfg = parse_config(merged)
    for sliced in (TemplatizeSlice.of(cfg, dataset="copa"), EvaluateSlice.of(cfg)):
        assert (sliced.bank, sliced.flan_root) == ("flan2021", "../../../shared/flan")
    assert cfg.templatize.few_shot.k == 3  # the experiment's own keys stay


def test_the_base_checkpoint_overlay_changes_only_the_checkpoint():
    """heldout_smollm2_base.yaml on top of the experiment: the same experiment, its model read from a
    base (not instruct) checkpoint's folder."""
    import yaml
    from snakemake.utils import update_config

    from flanpipe.core.config import parse_config

    merged = yaml.safe_load(EXPERIMENT.read_text())
    update_config(merged, yaml.safe_load((REPO / "config/experiments/heldout_smollm2_base.yaml").read_text()))
    base, instruct = parse_config(merged), load_config(EXPERIMENT)
    model = base.train.model
    assert (model.source, model.path) == ("pretrained", "models/pretrained/smollm2-base")
    assert base.model_copy(update={"train": instruct.train}) == instruct
    assert base.train.model_copy(update={"model": instruct.train.model}) == instruct.train


def tiny_pretrained(folder, smollm2_dir):
    """A 'pretrained' checkpoint small enough for the e2e suite: a random 2-layer Llama with
    SmolLM2's own tokenizer files (a real byte-level BPE, so the ``text`` format's newline is real)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                                         pad_token_id=2, tie_word_embeddings=True))
    model.save_pretrained(folder)
    for f in smollm2_dir.iterdir():
        names = ("tokenizer", "special_tokens", "vocab", "merges", "chat_template")
        if f.is_file() and f.name.startswith(names):
            shutil.copy(f, folder / f.name)
    return folder


def test_a_scaled_down_experiment_runs_end_to_end_on_embedded_data(tmp_path, smollm2_dir):
    """The experiment's own config and command with the chat overlay's format, scaled down (2
    steps, 6 rows, 1 template, one held-out cluster, two formats, two datasets: BoolQ trained on,
    COPA held out) and on the embedded data (no PIQA there): the held-out model beside the base, the
    format ablation, the report. Two models are trained: no `all`, and the format ablation's
    `instructions` point is the commonsense model, whose results it reads. Every model trains in
    SmolLM2's chat template; the base is scored in it beside lm-eval's continuation."""
    import json

    import yaml

    cfg = yaml.safe_load(EXPERIMENT.read_text())
    cfg["datasets"] = ["boolq", "copa"]  # one to train on, one held out
    cfg["download"] = {"default_source": "embedded"}
    cfg["templatize"]["few_shot"]["max_tokens"] = None
    cfg["tokenize"].update(max_input_tokens=128, max_target_tokens=16)
    cfg["tokenize"]["format"] = yaml.safe_load(CHAT.read_text())["tokenize"]["format"]
    checkpoint = tiny_pretrained(tmp_path / "tiny", smollm2_dir)
    cfg["train"].update(steps=2, tokens_per_batch=288, checkpoint_every=2, log_every=1,
                        model={"source": "pretrained", "path": str(checkpoint)})
    cfg["evaluate"].update(max_examples=6, max_templates=1, bootstrap=50, cross_formats=True)
    cfg["heldout_clusters"] = ["commonsense"]
    cfg["ablations"].update(enabled=True, clusters=["reading_comprehension"],
                            formats=["instructions", "no_template"])
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = run_snakemake(run, "all", "--set-resources", "train:tasks_per_node=1", config_file=config)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}
    assert counts["train"] == 2
    assert sorted(p.name for p in (run / "models").iterdir() if (p / "run.json").exists()) == [
        "commonsense", "format_no_template"]
    for model in ("commonsense",):
        record = json.loads((run / f"models/{model}/hf/flanpipe.json").read_text())
        assert record["format"] == "chat"
        assert json.loads((run / f"models/{model}/run.json").read_text())["world_size"] == 1
    for heldout, dataset in (("commonsense", "copa"),):
        tuned = json.loads((run / f"results/eval/{heldout}/{dataset}.json").read_text())
        base = json.loads((run / f"results/eval/base/{dataset}.json").read_text())
        assert (tuned["format"], tuned["format_from"]) == ("chat", "trained")
        assert (base["format"], base["format_from"]) == ("continuation", "untrained")
        for r in (tuned, base):
            assert set(r["by_format"]) == {"chat", "continuation"} and r["examples"] == 6
            assert len(r["templates"]) == 1 and r["headline"]["interval"] is not None
    assert not (run / "results/ablations/format/instructions").exists()
    assert {p.name for p in (run / "results/ablations/format").iterdir()} == {"no_template"}
    report = (run / "results/report/index.md").read_text()
    assert "## Tuned against base, paired" in report and "tuned - base, tuned's format" in report
    table = report[report.index("## Ablation: instruction format"):]
    for point in ("instructions", "no_template"):
        assert re.search(rf"^\| {point} \| [\d.]+ \| [\d.]+ \| \[[\d.]+, [\d.]+\] \|$", table, re.M), point
    assert (run / "results/report/ablation_format.png").stat().st_size > 0


def test_a_scaled_down_run_trains_and_scores_with_flans_prompts(tmp_path, smollm2_dir):
    """The experiment's own config with the FLAN-prompts overlay, scaled down as the test above (2
    steps, 6 rows, 1 template, one held-out cluster, BoolQ and COPA) on the embedded data: the
    held-out model is trained on FLAN's 2021 templates and it and the base are scored with them;
    every manifest, result and the report name the bank and the checkout's file."""
    import hashlib
    import json

    import yaml
    from snakemake.utils import update_config

    from flanpipe.core.text.templates import load_bank

    shared = REPO.parent / "shared/flan"  # FLAN's own files where they are beside the project
    root = shared if shared.is_dir() else REPO / "tests/data/flan"
    cfg = yaml.safe_load(EXPERIMENT.read_text())
    update_config(cfg, yaml.safe_load(FLAN.read_text()))
    cfg["templatize"]["flan_root"] = str(root)
    cfg["datasets"] = ["boolq", "copa"]  # one to train on, one held out
    cfg["download"] = {"default_source": "embedded"}
    cfg["templatize"]["few_shot"]["max_tokens"] = None
    cfg["tokenize"].update(max_input_tokens=128, max_target_tokens=16)
    checkpoint = tiny_pretrained(tmp_path / "tiny", smollm2_dir)
    cfg["train"].update(steps=2, tokens_per_batch=288, checkpoint_every=2, log_every=1,
                        model={"source": "pretrained", "path": str(checkpoint)})
    cfg["evaluate"].update(max_examples=6, max_templates=1, bootstrap=50)
    cfg["heldout_clusters"] = ["commonsense"]
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = run_snakemake(run, "all", "--set-resources", "train:tasks_per_node=1", config_file=config)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}
    assert counts["train"] == 1 and counts["evaluate"] == counts["evaluate_base"] == 1
    identity = {"bank": "flan2021", "flan_root": str(root), "file": "flan/templates.py", "git_commit": None,
                "sha256": hashlib.sha256((root / "flan/templates.py").read_bytes()).hexdigest()}
    flan = load_bank("flan2021", str(root))
    for dataset in cfg["datasets"]:
        manifest = json.loads((run / f"data/templatized/{dataset}.manifest.json").read_text())
        assert manifest["bank"] == identity
        used = {int(t) for t in manifest["outputs"]["train"]["per_template"]}
        assert used <= {t.id for t in flan[dataset].templates}
    from flanpipe.core.model.precision import resolve

    auto = resolve("auto", "cpu").record()  # the experiment's `precision: auto`, on this machine
    assert {k: json.loads((run / "models/commonsense/run.json").read_text())[k] for k in auto} == auto
    for model in ("commonsense", "base"):
        result = json.loads((run / f"results/eval/{model}/copa.json").read_text())
        assert result["bank"] == identity
        assert {k: result[k] for k in auto} == auto
        # `evaluate.variants: headline`: the OPTIONS variant alone, no PMI pass (the headline sums)
        assert set(result["variants"]) == {f"with_options/{n}" for n in ("sum", "per_token", "per_char")}
        assert [t["template_id"] for t in result["templates"]] == [flan["copa"].eval_templates[0].id]
    report = (run / "results/report/index.md").read_text()
    assert "Prompts: FLAN's own templates (`templatize.bank: flan2021`)" in report
