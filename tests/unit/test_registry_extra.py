"""Datasets and clusters from config (``registry.extra``) and the chain-of-thought collection
(``registry.extra: [cot]``): checked like the package's entries, used like them by the planner,
the template bank, the download and templatize stages; the package's 62 stay the default."""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from flanpipe.core.config import ConfigError, SourceSpec, TemplatizeSlice, parse_config
from flanpipe.core.config.registry import active_extras, load_registry, use_extra_registries
from flanpipe.core.text.templates import load_bank, templates_digest
from flanpipe.stages.download import DownloadError, download_dataset
from flanpipe.stages.templatize import templatize_dataset
from flanpipe.workflow.planner import Plan

# A user's own dataset in a cluster of its own, written as the package's entries are.
RECIPES = {
    "clusters": {"cooking": {"name": "Cooking", "excludes": ["commonsense"]}},
    "datasets": {"recipes": {
        "paper_name": "Recipes", "cluster": "cooking", "description": "A user's recipe steps.",
        "hub": {"id": None}, "available_on_hub": False, "local_instructions": "our own files",
        "splits": {"train": "train", "eval": "test"},
        "features": {"dish": "string", "steps": "string"},
        "text_fields": ["dish"], "task": {"type": "generation", "targets": ["steps"]},
        "metric": "rouge"}},
    "templates": ["recipes_templates.yaml"],
}
RECIPE_TEMPLATES = {"recipes": {"templates": [
    {"id": 0, "input": "How do I cook {dish}?", "target": "{steps}"},
    {"id": 1, "inverted": True, "input": "What dish do these steps make?\n{steps}", "target": "{dish}"}]}}


@pytest.fixture(autouse=True)
def package_registry():
    """Every test ends with the package's registry alone active again."""
    yield
    use_extra_registries([])


def _write_registry(folder, registry=RECIPES, templates=RECIPE_TEMPLATES):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipes.yaml").write_text(yaml.safe_dump(registry))
    (folder / "recipes_templates.yaml").write_text(yaml.safe_dump(templates))
    return folder / "recipes.yaml"


def _recipe_files(folder, n_train=6):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"dish": f"dish number {i}", "steps": f"boil water, add ingredient {i}, stir"}
            for i in range(n_train)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text(json.dumps({"dish": "toast", "steps": "heat the bread"}) + "\n")
    return folder


def test_extra_dataset_and_cluster_are_used_like_the_packages(tmp_path):
    path = _write_registry(tmp_path / "reg")
    cfg = parse_config({"registry": {"extra": [str(path)]}, "datasets": ["rte", "copa", "sst2", "recipes"],
                        "heldout_clusters": ["cooking", "nli"], "download": {"sources": {
                            "recipes": {"kind": "local", "path": str(_recipe_files(tmp_path / "src"))}}}})
    reg = load_registry()
    assert reg.datasets["recipes"].cluster == "cooking"
    assert list(reg.clusters)[:12] == list(reg.clusters)[:12] and len(reg.clusters) == 13
    # the exclusion written on the new cluster is mirrored on the package's one
    assert "cooking" in reg.clusters["commonsense"].excludes
    plan = Plan(cfg)
    assert plan.mixture_datasets("cooking") == ["rte", "sst2"]  # commonsense (copa) is excluded with it
    assert plan.mixture_datasets("nli") == ["copa", "sst2", "recipes"]
    assert plan.heldout_datasets() == ["rte", "recipes"]
    assert [t.id for t in load_bank()["recipes"].templates] == [0, 1]
    # editing the user's registry entry changes the templatize param, so Snakemake reruns it
    digest = templates_digest("recipes")
    entry = {**RECIPES["datasets"]["recipes"], "text_fields": ["dish", "steps"]}
    edited = {**RECIPES, "datasets": {"recipes": entry}}
    use_extra_registries([str(_write_registry(tmp_path / "reg2", edited))])
    assert templates_digest("recipes") != digest


def test_extra_dataset_downloads_and_templatizes(tmp_path):
    path = _write_registry(tmp_path / "reg")
    source = SourceSpec(kind="local", path=str(_recipe_files(tmp_path / "src")))
    cfg = parse_config({"registry": {"extra": [str(path)]}, "datasets": ["rte", "recipes"],
                        "heldout_clusters": ["nli"], "ablations": {"enabled": False},
                        "download": {"sources": {"recipes": source.model_dump()}}})
    manifest = download_dataset("recipes", source, tmp_path / "raw", seed=1)
    assert manifest["cluster"] == "cooking" and manifest["splits"]["train"]["rows"] == 6
    out = tmp_path / "recipes.parquet"
    templatize_dataset("recipes", tmp_path / "raw/train.parquet", tmp_path / "raw/eval.parquet", out,
                       TemplatizeSlice.model_validate(Plan(cfg).slice("templatize", dataset="recipes")))
    rows = pq.read_table(out).to_pylist()
    zero = [r for r in rows if r["template_id"] == 0 and r["split"] == "eval"]
    assert zero and zero[0]["inputs"] == "How do I cook toast?" and zero[0]["targets"] == "heat the bread"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["datasets"]["recipes"].update(cluster="baking"), "unknown cluster 'baking'"),
    (lambda r: r["datasets"]["recipes"].update(text_fields=["title"]), "field path 'title' is not among"),
    (lambda r: r["datasets"]["recipes"].update(metric="bleurt"), "metric"),
    (lambda r: r["datasets"].update(rte=r["datasets"]["recipes"]), "datasets ['rte'] are already in"),
    (lambda r: r.update(templates=["nowhere.yaml"]), "no such file(s) ['nowhere.yaml']"),
    (lambda r: r.update(tasks={}), "holds the keys"),
])
def test_a_bad_extra_registry_is_refused_naming_the_file_and_entry(tmp_path, edit, message):
    registry = json.loads(json.dumps(RECIPES))
    edit(registry)
    path = _write_registry(tmp_path / "reg", registry)
    with pytest.raises(ConfigError) as err:
        parse_config({"registry": {"extra": [str(path)]}})
    assert "registry.extra" in str(err.value) and message in str(err.value)
    assert active_extras() == ()  # a bad file never becomes the active registry


def test_a_missing_registry_file_and_the_default(tmp_path):
    with pytest.raises(ConfigError, match="no such registry file"):
        parse_config({"registry": {"extra": [str(tmp_path / "none.yaml")]}})
    parse_config({"registry": {"extra": ["cot"]}})
    assert "cot" in load_registry().clusters
    parse_config({})  # a config without extras is the package's 62 in 12 clusters again
    assert len(load_registry().clusters) == 12 and "cot_gsm8k" not in load_registry().datasets


# --- chain-of-thought ------------------------------------------------------------------------------

COT_LINES = [
    b"Natalia sold 48 clips in April and half as many in May. How many in all?\\nThink first.\t72\t"
    b"In May she sold 48 / 2 = 24 clips.\\nSo 48 + 24 = 72.\n",
    b"What is 3 + 4?\t7\t3 plus 4 is 7.\n",
    b"A row cut short\t5\n",  # two fields
    b"What is 2 * 5?\t10\t\n",  # an empty rationale
    b"Caf\xe9 bill?\t4\tbad bytes.\n",  # not UTF-8
    b"\n",  # a blank line is no row
    b"What is 9 - 1?\t8\tNine minus one is eight.\n",
]


def _cot_folder(tmp_path, stem="gsm8k"):
    folder = tmp_path / "cot_data"
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}_train.tsv").write_bytes(b"".join(COT_LINES))
    return folder


def test_cot_tsv_rows_their_newlines_and_quarantine(tmp_path):
    parse_config({"registry": {"extra": ["cot"]}})
    source = SourceSpec(kind="cot", path=str(_cot_folder(tmp_path)))
    manifest = download_dataset("cot_gsm8k", source, tmp_path / "raw", seed=1)
    train = pq.read_table(tmp_path / "raw/train.parquet").to_pylist()
    assert [r["answer"] for r in train] == ["72", "7", "8"]
    assert train[0]["question"].endswith("How many in all?\nThink first.")
    assert train[0]["rationale"] == "In May she sold 48 / 2 = 24 clips.\nSo 48 + 24 = 72."
    split = manifest["splits"]["train"]
    assert (split["rows_read"], split["rows"], split["rejected"]) == (6, 3, 3)
    assert split["rejected_by_kind"] == {"ragged_row": 1, "empty_text": 1, "invalid_utf8": 1}
    rejected = pq.read_table(tmp_path / "raw/rejected.parquet").to_pylist()
    assert "expected 3 (question, answer, rationale)" in rejected[0]["reason"]
    assert manifest["splits"]["eval"]["rows"] == 0  # the CoT data has no eval split


def test_cot_targets_carry_the_rationale_then_the_answer(tmp_path):
    cfg = parse_config({"registry": {"extra": ["cot"]}, "datasets": ["rte", "cot_gsm8k"],
                        "heldout_clusters": ["nli"], "ablations": {"enabled": False},
                        "download": {"flan_root": str(tmp_path / "flan")}})
    folder = tmp_path / "flan/flan/v2"
    folder.mkdir(parents=True)
    _cot_folder(folder)
    assert cfg.download.source_for("cot_gsm8k").path == str(folder / "cot_data")
    download_dataset("cot_gsm8k", cfg.download.source_for("cot_gsm8k"), tmp_path / "raw", seed=1)
    out = tmp_path / "cot.parquet"
    templatize_dataset("cot_gsm8k", tmp_path / "raw/train.parquet", tmp_path / "raw/eval.parquet", out,
                       TemplatizeSlice.model_validate(Plan(cfg).slice("templatize", dataset="cot_gsm8k")))
    rows = pq.read_table(out).to_pylist()
    bank = load_bank()["cot_gsm8k"]
    inverted = {t.id for t in bank.templates if t.inverted}
    forward = [r for r in rows if r["template_id"] not in inverted]
    assert forward and len(rows) == 3 * 4  # 3 rows x 4 passes
    raw = {r["answer"]: r for r in pq.read_table(tmp_path / "raw/train.parquet").to_pylist()}
    for r in forward:
        first_line = r["inputs"].split("\n")[0]
        source = next(s for s in raw.values() if s["question"].split("\n")[0] in r["inputs"] or
                      first_line in s["question"])
        at_rationale = r["targets"].find(source["rationale"])
        at_answer = r["targets"].rfind(source["answer"])
        assert 0 <= at_rationale < at_answer, r["targets"]
    assert all(t.inverted for t in bank.templates if t.id in inverted) and inverted


def test_a_missing_cot_file_is_named_or_left_out_when_optional(tmp_path):
    folder = _cot_folder(tmp_path)
    sources = {"cot_gsm8k": {"kind": "cot", "path": str(folder)},
               "cot_qed": {"kind": "cot", "path": str(folder)}}
    cfg = parse_config({"registry": {"extra": ["cot"]}, "datasets": ["rte", "cot_gsm8k", "cot_qed"],
                        "heldout_clusters": ["nli"], "download": {"sources": sources}})
    with pytest.raises(DownloadError, match=r"no CoT file .*qed_train\.tsv.*optional: true"):
        download_dataset("cot_qed", cfg.download.source_for("cot_qed"), tmp_path / "raw", seed=1)
    sources["cot_qed"]["optional"] = True
    cfg = parse_config({"registry": {"extra": ["cot"]}, "datasets": ["rte", "cot_gsm8k", "cot_qed"],
                        "heldout_clusters": ["nli"], "download": {"sources": sources}})
    assert cfg.dataset_names() == ["rte", "cot_gsm8k"]
    assert cfg.left_out() == {"cot_qed": [str(folder / "qed_train.tsv")]}


def test_esnli_counts_in_nli_for_held_out_models():
    cfg = parse_config({"registry": {"extra": ["cot"]},
                        "datasets": ["rte", "copa", "sst2", "cot_esnli", "cot_gsm8k"],
                        "heldout_clusters": ["nli", "commonsense", "cot"], "ablations": {"enabled": False},
                        "download": {"sources": {d: {"kind": "cot", "path": "/x"}
                                                 for d in ["cot_esnli", "cot_gsm8k"]}}})
    plan = Plan(cfg)
    assert plan.mixture_datasets("nli") == ["copa", "sst2", "cot_gsm8k"]  # e-SNLI leaves with SNLI's cluster
    assert plan.mixture_datasets("commonsense") == ["rte", "sst2", "cot_esnli", "cot_gsm8k"]
    assert plan.mixture_datasets("cot") == ["rte", "copa", "sst2"]
    assert load_registry().clusters_of("cot_esnli") == ("cot", "nli")


# --- Super-NaturalInstructions ----------------------------------------------------------------------

def _task(source, definition, positives, instances):
    return {"Contributors": ["x"], "Source": [source], "URL": [], "Categories": ["Question Answering"],
            "Definition": definition, "Input_language": ["English"], "Output_language": ["English"],
            "Positive Examples": [{"input": i, "output": o, "explanation": "because"} for i, o in positives],
            "Negative Examples": [], "Instances": instances, "Instance License": ["Unknown"]}


def _niv2_folder(tmp_path):
    """Three tasks as allenai/natural-instructions writes them: one built on RTE (held out with nli),
    one on SVAMP (no FLAN dataset), one MMLU-derived (skipped as FLAN did)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    rte = _task("rte", ["Decide whether the second sentence follows from the first.", "Answer 1 or 0."],
                [("A man sleeps. A person rests.", "1"), ("It rains. It is dry.", "0")],
                [{"id": f"task1344-{i}", "input": f"Premise {i}. Hypothesis {i}.", "output": [str(i % 2)]}
                 for i in range(5)])
    svamp = _task("svamp", ["Subtract the numbers in the problem."], [("Tom had 5 and gave 2.", "3")],
                  [{"id": "task751-0", "input": "Ann had 9 pens and lost 4.", "output": ["5"]},
                   {"id": "task751-1", "output": ["1"]},  # no input: quarantined
                   {"id": "task751-2", "input": "Bo had 7 cards and sold 7.", "output": ["0", "zero"]}])
    mmlu = _task("measuring_massive_multitask_language_understanding", ["Answer the question."], [],
                 [{"id": "task698-0", "input": "Global facts?", "output": ["A"]}])
    for name, task in (("task1344_glue_entailment_classification", rte),
                       ("task751_svamp_subtraction_question_answering", svamp),
                       ("task698_mmmlu_answer_generation_global_facts", mmlu)):
        (folder / f"{name}.json").write_text(json.dumps(task, indent=4))
    return folder


def test_niv2_folder_is_one_dataset_with_a_task_column(tmp_path):
    parse_config({"registry": {"extra": ["niv2"]}})
    source = SourceSpec(kind="niv2", path=str(_niv2_folder(tmp_path)), per_task_cap=3)
    manifest = download_dataset("niv2", source, tmp_path / "raw", seed=1)
    rows = pq.read_table(tmp_path / "raw/train.parquet").to_pylist()
    assert [r["task"] for r in rows] == ["task1344_glue_entailment_classification"] * 3 + \
        ["task751_svamp_subtraction_question_answering"] * 2  # rte capped at 3 of 5; one svamp row bad
    assert rows[0]["definition"] == ("Decide whether the second sentence follows from the first. "
                                     "Answer 1 or 0.")
    assert rows[0]["exemplars"] == ("Input: A man sleeps. A person rests.\nOutput: 1\n\n"
                                    "Input: It rains. It is dry.\nOutput: 0")
    assert rows[0]["shots"] == 2 and rows[4]["output"] == ["0", "zero"] and rows[0]["source"] == "rte"
    train = manifest["splits"]["train"]
    assert train["niv2"] == {"tasks": 2, "instances": 6, "capped": 2, "excluded_tasks": {
        "task698_mmmlu_answer_generation_global_facts": "measuring_massive_multitask_language_understanding"}}
    assert train["rejected_by_kind"] == {"invalid_instance": 1}


def test_niv2_few_shot_prompts_say_the_definition_once(tmp_path):
    folder = _niv2_folder(tmp_path)
    mix = {"zs_opt": 0.0, "zs_noopt": 0.5, "fs_opt": 0.0, "fs_noopt": 0.5}
    cfg = parse_config({"registry": {"extra": ["niv2"]}, "datasets": ["rte", "niv2"],
                        "heldout_clusters": ["nli"], "ablations": {"enabled": False},
                        "templatize": {"mix": mix, "passes": 8},
                        "download": {"sources": {"niv2": {"kind": "niv2", "path": str(folder)}}}})
    download_dataset("niv2", cfg.download.source_for("niv2"), tmp_path / "raw", seed=1)
    out = tmp_path / "niv2.parquet"
    templatize_dataset("niv2", tmp_path / "raw/train.parquet", tmp_path / "raw/eval.parquet", out,
                       TemplatizeSlice.model_validate(Plan(cfg).slice("templatize", dataset="niv2")))
    rows = pq.read_table(out).to_pylist()
    few = [r for r in rows if r["prompt_type"] == "fs_noopt"]
    zero = [r for r in rows if r["prompt_type"] == "zs_noopt"]
    assert few and zero
    definition = "Decide whether the second sentence follows from the first."
    for r in few:
        if definition in r["inputs"]:
            assert r["inputs"].count(definition) == 1 and r["shots"] == 2
            assert "Input: It rains. It is dry.\nOutput: 0" in r["inputs"]
        else:
            assert r["inputs"].count("Subtract the numbers") == 1 and r["shots"] == 1
    assert all(r["shots"] == 0 and "Output: 1\n\n" not in r["inputs"] for r in zero)


def test_niv2_tasks_built_on_a_heldout_dataset_are_matched_by_source():
    from flanpipe.core.text.sources import niv2_sources, source_matches

    parse_config({"registry": {"extra": ["niv2"]}})
    reg = load_registry()
    mapped = {d for names in niv2_sources()["datasets"].values() for d in names}
    assert mapped <= set(reg.datasets), mapped - set(reg.datasets)  # the map names registry datasets
    clusters = {d: s.cluster for d, s in reg.datasets.items()}
    matches = source_matches(["rte", "svamp", "anli", "rte"], clusters)
    assert [(rows, name, cluster) for rows, name, cluster in matches] == [
        ([2], "source:anli_r1", "nli"), ([2], "source:anli_r2", "nli"), ([2], "source:anli_r3", "nli"),
        ([0, 3], "source:rte", "nli")]


# --- published Flan Collection dumps ----------------------------------------------------------------

def _dump_rows():
    rows = []
    for i in range(6):
        rows.append({"inputs": f"Premise {i}. Does it follow?\n\nOPTIONS:\n- yes\n- no", "targets": "yes",
                     "_task_source": "Flan2021", "_task_name": "rte:2.0.0" if i < 4 else "copa:1.0.0",
                     "_template_type": ["zs_opt", "fs_noopt", "zs_noopt"][i % 3], "_template_idx": i % 10})
    rows.append({"inputs": "Definition: add.\n\nInput: 1+1\nOutput:", "targets": "2", "_task_source": "NIv2",
                 "_task_name": "task751_svamp", "_template_type": "zs_noopt", "_template_idx": 0})
    return rows


def test_a_dump_keeps_its_prompt_types_and_mixes_by_task_source(tmp_path):
    import pyarrow as pa

    dump = tmp_path / "flan.parquet"
    pq.write_table(pa.Table.from_pylist(_dump_rows()), dump)
    jsonl = tmp_path / "flan.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in _dump_rows()))
    sources = {"dump_flan2021": {"kind": "flan_dump", "path": str(dump), "per_task_cap": 3},
               "dump_niv2": {"kind": "flan_dump", "path": str(jsonl)}}
    cfg = parse_config({"registry": {"extra": ["flan_dump"]},
                        "datasets": ["rte", "dump_flan2021", "dump_niv2"],
                        "heldout_clusters": ["nli"], "ablations": {"enabled": False},
                        "download": {"sources": sources},
                        "mix": {"submixtures": {"flan2021": {"datasets": ["dump_flan2021"], "weight": 0.4},
                                                "niv2": {"datasets": ["dump_niv2"], "weight": 0.2},
                                                "rest": {"datasets": "all"}}}})
    manifest = download_dataset("dump_flan2021", cfg.download.source_for("dump_flan2021"), tmp_path / "a",
                                seed=1)
    raw = pq.read_table(tmp_path / "a/train.parquet").to_pylist()
    # the Flan2021 rows only; rte's 4 capped at 3, copa's 2 kept
    assert [r["task_name"] for r in raw] == ["rte:2.0.0"] * 3 + ["copa:1.0.0"] * 2
    assert manifest["splits"]["train"]["flan_dump"]["capped"] == 1
    download_dataset("dump_niv2", cfg.download.source_for("dump_niv2"), tmp_path / "b", seed=1)
    assert pq.read_table(tmp_path / "b/train.parquet").column("targets").to_pylist() == ["2"]
    out = tmp_path / "dump.parquet"
    templatize_dataset("dump_flan2021", tmp_path / "a/train.parquet", tmp_path / "a/eval.parquet", out,
                       TemplatizeSlice.model_validate(Plan(cfg).slice("templatize", dataset="dump_flan2021")))
    rendered = pq.read_table(out).to_pylist()
    by_row = {r["row_index"]: r for r in rendered if r["pass"] == 0}
    for r in raw:  # rendered as they are, each in its own prompt type, in every pass
        assert by_row[r["row_index"]]["inputs"] == r["inputs"]
        assert by_row[r["row_index"]]["prompt_type"] == r["template_type"]
    assert {r["prompt_type"] for r in rendered} == {"zs_opt", "fs_noopt", "zs_noopt"}
    assert cfg.mix.submixture_of("dump_niv2") == "niv2"


def test_a_file_in_another_schema_is_refused_naming_the_missing_columns(tmp_path):
    import pyarrow as pa

    parse_config({"registry": {"extra": ["flan_dump"]}})
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"inputs": ["x"], "targets": ["y"], "task": ["t"]}), other)
    with pytest.raises(DownloadError, match=r"lacks the column\(s\) \['_task_source', '_task_name', "
                                            r"'_template_type', '_template_idx'\]"):
        download_dataset("dump_t0", SourceSpec(kind="flan_dump", path=str(other)), tmp_path / "raw", seed=1)
