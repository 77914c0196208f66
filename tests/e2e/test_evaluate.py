"""Stage 6 on the embedded default: held-out evaluations, the base model, ablations and the report.

The checks compare with independent computations: a template's accuracy recomputed with
`transformers`' own Llama and a plain forward pass per option, greedy text against
`transformers`' `generate`, contamination counts against the catalog.
"""

from __future__ import annotations

import json
import subprocess

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from flanpipe.core.config import load_config
from flanpipe.core.config.registry import load_registry
from flanpipe.core.text.templates import load_bank, render_template
from flanpipe.stages.evaluate import eval_sample
from flanpipe.workflow.planner import Plan
from tests.conftest import BIN, REPO, run_snakemake

pytestmark = pytest.mark.e2e
CFG = load_config(REPO / "config/config.yaml")
PLAN = Plan(CFG)


@pytest.fixture(scope="module")
def workdir(demo_run):
    return demo_run


def expected_results() -> list[str]:
    out = []
    for heldout in CFG.heldout_clusters:
        for d in PLAN.datasets_in([heldout]):
            out += [f"results/eval/{heldout}/{d}.json", f"results/eval/{heldout}/{d}.few_shot.json",
                    f"results/eval/base/{d}.json", f"results/eval/base/{d}.few_shot.json"]
    for d in PLAN.datasets_in(CFG.ablations.heldout):
        out += [f"results/ablations/clusters/{k}/{d}.json" for k in range(1, len(CFG.ablations.clusters) + 1)]
        # the `instructions` point is the clusters ablation's last one: its result is read, not redone
        out += [f"results/ablations/format/{f}/{d}.json"
                for f in CFG.ablations.formats if f != "instructions"]
    return out


def load(workdir, rel: str) -> dict:
    return json.loads((workdir / rel).read_text())


def test_every_evaluation_exists_and_adds_up(workdir):
    found = sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*.json"))
    assert found == sorted(expected_results())
    bank = load_bank()
    for rel in found:
        r = load(workdir, rel)
        eval_rows = pq.read_metadata(workdir / f"data/raw/{r['dataset']}/eval.parquet").num_rows
        assert r["examples"] == eval_rows
        scored = bank[r["dataset"]].eval_templates[:CFG.evaluate.max_templates]  # the first N (demo: 4)
        assert [t["template_id"] for t in r["templates"]] == [t.id for t in scored]
        values = [t["variants"][r["headline_variant"]][r["primary"]] for t in r["templates"]]
        h = r["headline"]
        assert h["mean"] == pytest.approx(np.mean(values), abs=1e-5)
        assert h["best"] == pytest.approx(max(values)) and h["worst"] == pytest.approx(min(values))
        assert values[[t["template_id"] for t in r["templates"]].index(h["best_template"])] == h["best"]
        assert h["std"] == pytest.approx(np.std(values), abs=1e-5)
        for variant in ("with_options/sum", "without_options/sum", "with_options/per_token",
                        "without_options/per_char", "with_options/pmi", "without_options/pmi"):
            assert variant in r["variants"]
        assert r["shots"] == (CFG.templatize.few_shot.k if r["few_shot"] else 0)
        # the base is scored as lm-eval scores a pretrained model, a tuned model in its training format,
        # and each in the other format too
        assert r["format"] == ("continuation" if r["model"] == "base" else "eos")
        assert set(r["by_format"]) == {"eos", "continuation"}
        assert r["by_format"][r["format"]]["headline"] == h
        for name, block in r["by_format"].items():
            # each template's per-example scores average to its headline score in that format
            per_template = [np.mean(s) for s in block["example_scores"]]
            if name == r["format"]:
                assert per_template == pytest.approx(values, abs=1e-4)
            assert block["headline"]["mean"] == pytest.approx(np.mean(per_template), abs=1e-4)
            ci = block["headline"]["interval"]
            assert ci["resamples"] == CFG.evaluate.bootstrap and ci["low"] <= ci["high"]
            assert ci["low"] - 1e-6 <= block["headline"]["mean"] <= ci["high"] + 1e-6


def test_the_models_are_the_ones_that_never_saw_the_cluster(workdir):
    for heldout in CFG.heldout_clusters:
        for d in PLAN.datasets_in([heldout]):
            r = load(workdir, f"results/eval/{heldout}/{d}.json")
            assert r["model"] == heldout and r["cluster"] == heldout
            mixture = json.loads((workdir / f"data/mixtures/{heldout}/manifest.json").read_text())
            assert d not in mixture["datasets"]
    n = len(CFG.ablations.clusters)
    points = {(point, d): path for point, d, path in PLAN.ablation_points("format")}
    assert points[("instructions", "rte")] == f"results/ablations/clusters/{n}/rte.json"
    assert load(workdir, points[("instructions", "rte")])["model"] == f"clusters_{n}"
    assert not (workdir / "models/format_instructions").exists()  # reused, not trained again
    assert not (workdir / "results/ablations/format/instructions").exists()  # nor scored again
    assert load(workdir, "results/eval/base/rte.json")["model"] == "base"


def test_contamination_counts_match_the_catalog(workdir):
    con = duckdb.connect(str(workdir / "data/catalog.duckdb"), read_only=True)
    for heldout in CFG.heldout_clusters:
        for d in PLAN.datasets_in([heldout]):
            r = load(workdir, f"results/eval/{heldout}/{d}.json")
            matched, removed = con.execute(
                "SELECT coalesce(sum(rows), 0), coalesce(sum(removed), 0) FROM contamination_report "
                "WHERE mixture = ? AND eval_dataset = ?", [heldout, d]).fetchone()
            counts = r["contamination"]
            assert (counts["matched_rows"], counts["removed_rows"]) == (matched, removed)
    # the demo plants a BoolQ passage that quotes an RTE eval premise
    assert load(workdir, "results/eval/nli/rte.json")["contamination"]["removed_rows"] >= 1
    assert load(workdir, "results/eval/base/rte.json")["contamination"]["removed_rows"] == 0


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).eval()


def test_rank_classification_equals_transformers_scoring_each_option_from_scratch(workdir):
    """RTE, template 0, OPTIONS suffix, summed log-likelihood: recomputed with transformers' Llama,
    one full forward pass per (prompt, option)."""
    import sentencepiece as spm

    folder = workdir / "models/nli/hf"
    model = hf_model(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    eos = sp.eos_id()
    bank = load_bank()["rte"]
    template = bank.eval_templates[0]
    raw = pq.read_table(workdir / "data/raw/rte/eval.parquet")
    rendered = render_template(bank, template, raw, CFG.templatize.options)
    correct, chosen = 0, []
    for prompt, options, gold in zip(rendered.inputs.to_pylist(), rendered.options.to_pylist(),
                                     rendered.answer_index, strict=True):
        p = sp.encode(prompt)[:CFG.tokenize.max_input_tokens - 1] + [eos]
        scores = []
        for option in options:
            o = sp.encode(option) + [eos]
            with torch.no_grad():
                logp = model(torch.tensor([p + o])).logits.log_softmax(-1)[0]
            scores.append(sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(o)))
        chosen.append(int(np.argmax(scores)))
        correct += chosen[-1] == gold
    r = load(workdir, "results/eval/nli/rte.json")
    assert r["headline_variant"] == "with_options/sum"
    assert r["templates"][0]["predictions"] == chosen  # the same choice on every example
    ours = r["templates"][0]["variants"]["with_options/sum"]["accuracy"]
    assert ours == pytest.approx(100 * correct / raw.num_rows)


def test_generate_cli_equals_transformers_greedy(workdir):
    import sentencepiece as spm

    prompt = "Premise: A man is playing a guitar.\nHypothesis: A person makes music.\n\nDoes it follow?"
    cmd = [str(BIN / "flanpipe"), "generate", "--model", str(workdir / "models/all"), "--prompt", prompt,
           "--max-new-tokens", "12"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert first == subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    folder = workdir / "models/all/hf"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = sp.encode(prompt) + [sp.eos_id()]
    with torch.no_grad():
        out = hf_model(folder).generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                        eos_token_id=sp.eos_id(), pad_token_id=sp.pad_id())
    new = out[0, len(ids):].tolist()
    new = new[:new.index(sp.eos_id())] if sp.eos_id() in new else new
    assert first.rstrip("\n") == sp.decode(new)


def test_base_model_is_the_untrained_initialisation(workdir):
    """The base model's weights are, exactly, a new model that `transformers` builds from the base's
    config.json under the run's initialisation seed (seed + crc32("train/init"), as the train stage
    seeds it), with no training step; every trained model has moved away from them."""
    import zlib

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = workdir / "models/base/hf"
    base = load_file(str(folder / "model.safetensors"))
    torch.manual_seed((CFG.seed + zlib.crc32(b"train/init")) % 2**32)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    untrained = AutoModelForCausalLM.from_config(config, dtype=torch.float32).state_dict()
    assert base.keys() == untrained.keys()
    assert [k for k in base if not torch.equal(base[k], untrained[k])] == []
    for mixture in PLAN.mixtures():
        tuned = load_file(str(workdir / f"models/{mixture}/hf/model.safetensors"))
        assert tuned.keys() == base.keys()
        assert any(not torch.equal(base[k], tuned[k]) for k in base), mixture


def test_evaluation_rerun_is_byte_identical(workdir):
    rel = "results/eval/commonsense/copa.few_shot.json"
    before = (workdir / rel).read_bytes()
    run_snakemake(workdir, rel, "--forcerun", "evaluate_few_shot")
    assert (workdir / rel).read_bytes() == before


def test_report_has_every_figure_and_dataset(workdir):
    report = workdir / "results/report"
    text = (report / "index.md").read_text()
    for png in ("heldout_clusters.png", "datasets.png", "ablation_clusters.png", "ablation_format.png",
                "mixture_composition.png", "training_loss.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png
        assert f"({png})" in text
    for d in PLAN.datasets_in(CFG.heldout_clusters):
        assert f"| {d} |" in text
    # tuned against base on the same rows, with the paired interval, in own formats and both in eos
    paired = text.split("## Tuned against base, paired")[1].split("\n## ")[0]
    for d in PLAN.datasets_in(CFG.heldout_clusters):
        line = next(x for x in paired.splitlines() if f"| {d} | zero-shot |" in x)
        assert "(continuation)" in line and "(eos)" in line and line.count("[") == 2, line
    # the power table: each dataset's sd of the per-row difference, recomputed from the eval JSON
    import statistics

    power = paired.split("### Power")[1]
    for d in PLAN.datasets_in(CFG.heldout_clusters):
        model = load_registry().datasets[d].cluster  # a held-out model is named after its cluster
        rows = [json.loads((workdir / f"results/eval/{name}/{d}.json").read_text())
                for name in (model, "base")]
        tuned, base = ([statistics.fmean(t) for t in zip(*r["by_format"][r["format"]]["example_scores"],
                                                             strict=True)] for r in rows)
        sd = statistics.stdev([t - b for t, b in zip(tuned, base, strict=True)])
        line = next(x for x in power.splitlines() if x.startswith(f"| {d} | zero-shot |"))
        assert line.split(" | ")[2:4] == [str(len(tuned)), f"{sd:.1f}"], line
    registry = load_registry()
    for c in {registry.datasets[d].cluster for d in CFG.dataset_names()} & set(CFG.heldout_clusters):
        assert f"| {c} |" in text


def test_the_demo_models_card_loads_and_carries_the_held_out_table(workdir, tmp_path):
    """The card train wrote (the mixture's datasets, no evaluation yet), then the card rewritten
    from the evaluation (into a scratch folder: ``hf/`` is the train rule's output): the Hub's card
    classes read it back, its model-index holds each held-out result's mean, its table the intervals."""
    from huggingface_hub import ModelCard

    from flanpipe.core.model.card import write_card

    card = ModelCard.load(workdir / "models/nli/hf/README.md", ignore_metadata_errors=False)
    mixture = json.loads((workdir / "data/mixtures/nli/manifest.json").read_text())
    for s in mixture["stats"]:
        assert f"| {s['dataset']} | {s['cluster']} | {s['sampled']} |" in card.text
    assert "Not evaluated yet" in card.text and card.data.library_name == "transformers"
    # licences as the registry records them (the original datasets' own, e.g. BoolQ's CC BY-SA 3.0)
    assert "| boolq | google/boolq | cc-by-sa-3.0 |" in card.text
    assert "| copa | aps/super_glue | bsd-2-clause |" in card.text
    assert "| rte |" not in card.text  # nli is held out of this model
    write_card(workdir / "models/nli", hf_dir=tmp_path)
    card = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    results = [json.loads(p.read_text()) for p in sorted((workdir / "results/eval/nli").glob("*.json"))]
    assert results
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got == {(e["paper_name"], f"{e['primary']} ({'few' if e['few_shot'] else 'zero'}-shot)"):
                   round(e["headline"]["mean"], 2) for e in results}
    for e in results:
        ci = e["headline"]["interval"]
        assert f"| {e['headline']['mean']:.1f} | [{ci['low']:.1f}, {ci['high']:.1f}] |" in card.text


def test_evaluate_cli_on_a_pretrained_bpe_checkpoint(tmp_path, smollm2_dir):
    """`flanpipe evaluate` on SmolLM2-135M-Instruct (Llama architecture, BPE tokenizer.json, no
    tokenizer.model) and ARC-Easy: every template is scored, in the continuation format (flanpipe
    did not train it), and template 0's choices equal `transformers`' own tokenizer and model, one
    plain forward pass per option."""
    from transformers import AutoTokenizer

    raw = tmp_path / "raw/arc_easy"
    subprocess.run([str(BIN / "flanpipe"), "download", "--dataset", "arc_easy", "--out", str(raw)],
                   check=True, capture_output=True, cwd=REPO)
    config = tmp_path / "config.yaml"
    config.write_text("evaluate:\n  max_examples: 2\n")
    out = tmp_path / "arc_easy.json"
    subprocess.run([str(BIN / "flanpipe"), "evaluate", "--model", str(smollm2_dir), "--dataset", "arc_easy",
                    "--raw", str(raw), "--config", str(config), "--out", str(out), "--threads", "1"],
                   check=True, capture_output=True, cwd=REPO)
    r = json.loads(out.read_text())
    bank = load_bank()["arc_easy"]
    assert r["method"] == "rank_classification" and r["examples"] == 2
    assert (r["format"], r["format_from"]) == ("continuation", "untrained")  # flanpipe did not train it
    assert [t["template_id"] for t in r["templates"]] == [t.id for t in bank.eval_templates]

    cfg = load_config(config)
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = hf_model(smollm2_dir)
    eos = tok.eos_token_id
    table = pq.read_table(raw / "eval.parquet")
    table = eval_sample(table, 2, cfg.seed, "arc_easy")
    rendered = render_template(bank, bank.eval_templates[0], table, cfg.templatize.options)
    chosen = []
    for prompt, options in zip(rendered.inputs.to_pylist(), rendered.options.to_pylist(), strict=True):
        # the continuation format, by hand: the option's tokens are those the joined text adds; no EOS
        p = tok.encode(prompt, add_special_tokens=False)
        assert eos not in p
        scores = []
        for option in options:
            o = tok.encode(prompt + " " + option, add_special_tokens=False)[len(p):]
            with torch.no_grad():
                logp = model(torch.tensor([p + o])).logits.log_softmax(-1)[0]
            scores.append(sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(o)))
        chosen.append(int(np.argmax(scores)))
    assert r["templates"][0]["predictions"] == chosen
