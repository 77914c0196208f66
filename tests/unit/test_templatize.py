"""The templatize stage: balanced seeded assignment, every template on eval, formats, few-shot."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import FewShotConfig, SourceSpec, TemplatizeConfig, TemplatizeSlice
from flanpipe.core.config.registry import load_registry
from flanpipe.core.text.fewshot import few_shot_inputs
from flanpipe.core.text.keys import template_draws
from flanpipe.core.text.schemas import TEMPLATIZED_SCHEMA as SCHEMA
from flanpipe.core.text.templates import Template, TemplateError, load_bank
from flanpipe.stages.download import download_dataset
from flanpipe.stages.templatize import templatize_dataset, templatize_split
from tests.conftest import smollm2_folder
from tests.synthetic import load_passages, synthetic_rte

REG = load_registry()


def sliced(cfg: TemplatizeConfig, seed: int, max_input_tokens: int | None = None) -> TemplatizeSlice:
    """The templatize stage's slice: ``cfg``'s rendering keys, a seed and an input budget (none: no cut)."""
    return TemplatizeSlice(seed=seed, max_input_tokens=max_input_tokens,
                           **cfg.model_dump(exclude={"few_shot", "mix"}))


def splits(raw_dir):
    """A dataset's raw (train, eval) files, as templatize_dataset takes them."""
    return raw_dir / "train.parquet", raw_dir / "eval.parquet"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for name in ["rte", "arc_easy", "common_gen", "boolq"]:
        download_dataset(name, SourceSpec(kind="embedded"), root / name, seed=1)
    return root


def test_draws_are_balanced_within_each_pass_and_rotate_over_passes():
    keys = np.random.default_rng(0).integers(0, 2**63, 20000, dtype=np.uint64)
    d = template_draws(keys, 10, 4, "rte", seed=5)
    for p in range(4):  # each pass: every template's share within 5 binomial sd of n / T
        counts = np.bincount(d[p], minlength=10)
        assert np.abs(counts - 2000).max() < 5 * np.sqrt(20000 * 0.1 * 0.9), counts
    assert all(len(set(d[:, i].tolist())) == 4 for i in range(200))  # 4 passes, 4 phrasings
    assert (d == template_draws(keys, 10, 4, "rte", seed=5)).all()
    assert (d != template_draws(keys, 10, 4, "rte", seed=6)).any()
    assert (d != template_draws(keys, 10, 4, "cb", seed=5)).any()


def _templates_by_example(table: pa.Table) -> dict:
    return {(e, p): t for e, p, t in zip(table["example_id"].to_pylist(), table["pass"].to_pylist(),
                                         table["template_id"].to_pylist(), strict=True)}


def test_adding_or_removing_a_raw_row_changes_no_other_template():
    """Templates derive from (seed, dataset, example id, pass), never from row positions: dropping
    one raw row from the middle (and so shifting every later position) leaves every other row's
    template in every pass as it was."""
    spec, bank = REG.datasets["rte"], load_bank()["rte"]
    raw = synthetic_rte(300, seed=2)
    full = _templates_by_example(templatize_split(spec, bank, raw, "train", TemplatizeConfig(), 7))
    fewer = raw.filter(pa.compute.not_equal(raw["idx"], 100))
    rest = _templates_by_example(templatize_split(spec, bank, fewer, "train", TemplatizeConfig(), 7))
    assert len(full) == 300 * 4 and len(rest) == 299 * 4
    assert rest == {k: v for k, v in full.items() if not k[0].endswith(":100")}
    # and a row added at the front (shifting all positions) changes nothing else either
    extra = pa.concat_tables([synthetic_rte(1, seed=9).set_column(2, "idx", pa.array([5000])), raw])
    more = _templates_by_example(templatize_split(spec, bank, extra, "train", TemplatizeConfig(), 7))
    assert {k: v for k, v in more.items() if not k[0].endswith(":5000")} == full


def test_output_schema_counts_and_template_use(raw, tmp_path):
    out = tmp_path / "rte.parquet"
    manifest = templatize_dataset("rte", *splits(raw / "rte"), out, sliced(TemplatizeConfig(), seed=3))
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == SCHEMA
    bank = load_bank()["rte"]
    train = table.filter(pa.compute.equal(table["split"], "train")).to_pylist()
    evals = table.filter(pa.compute.equal(table["split"], "eval")).to_pylist()
    # train: one template per example and pass, a different one in each pass; grouped by template
    n_train = pq.read_table(raw / "rte/train.parquet").num_rows
    passes = TemplatizeConfig().passes
    assert len(train) == n_train * passes
    for p in range(passes):
        rows = [r for r in train if r["pass"] == p]
        assert sorted(r["example_id"] for r in rows) == sorted(f"rte:train:{i}" for i in range(n_train))
        assert [r["template_id"] for r in rows] == sorted(r["template_id"] for r in rows)
    phrasings = {}
    for r in train:
        phrasings.setdefault(r["example_id"], set()).add(r["template_id"])
    assert all(len(t) == passes for t in phrasings.values())
    # eval: every non-inverted template on every example
    n_eval = pq.read_table(raw / "rte/eval.parquet").num_rows
    assert len(evals) == n_eval * len(bank.eval_templates)
    assert not any(r["inverted"] for r in evals)
    assert manifest["outputs"]["eval"]["rows"] == len(evals)
    for r in train + evals:
        assert r["cluster"] == "nli" and r["format"] == "instructions"
        if not r["inverted"]:
            t = next(t for t in bank.templates if t.id == r["template_id"])
            assert r["options"] == bank.answer_texts(REG.datasets["rte"], t)
            assert r["targets"] == r["options"][r["answer_index"]]


def test_rerun_is_byte_identical_and_seed_matters(raw, tmp_path):
    for name in ["a", "b"]:
        templatize_dataset("arc_easy", *splits(raw / "arc_easy"), tmp_path / f"{name}.parquet",
                           sliced(TemplatizeConfig(), seed=3))
    templatize_dataset("arc_easy", *splits(raw / "arc_easy"), tmp_path / "c.parquet",
                       sliced(TemplatizeConfig(), seed=4))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    ta, tc = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "c.parquet")
    assert _templates_by_example(ta) != _templates_by_example(tc)


@pytest.mark.parametrize("fmt", ["no_template", "dataset_name"])
def test_ablation_formats(raw, tmp_path, fmt):
    templatize_dataset("rte", *splits(raw / "rte"), tmp_path / "x.parquet",
                       sliced(TemplatizeConfig(format=fmt), 3))
    rows = pq.read_table(tmp_path / "x.parquet").to_pylist()
    premise = pq.read_table(raw / "rte/train.parquet").to_pylist()[0]
    first = rows[0]
    body = f"{premise['premise']}\n{premise['hypothesis']}\n\nOPTIONS:\n- yes\n- no"
    assert first["inputs"] == (body if fmt == "no_template" else f"[Task: RTE]\n{body}")
    assert {r["format"] for r in rows} == {fmt} and {r["template_id"] for r in rows} == {0}
    n_eval = pq.read_table(raw / "rte/eval.parquet").num_rows
    assert sum(r["split"] == "eval" for r in rows) == n_eval  # one "template" per eval example


def test_generation_targets_and_no_options(raw, tmp_path):
    templatize_dataset("common_gen", *splits(raw / "common_gen"), tmp_path / "g.parquet",
                       sliced(TemplatizeConfig(), 3))
    rows = pq.read_table(tmp_path / "g.parquet").to_pylist()
    raw_rows = {f"common_gen:train:{r['row_index']}": r
                for r in pq.read_table(raw / "common_gen/train.parquet").to_pylist()}
    for r in rows:
        assert r["options"] == [] and r["answer_index"] == -1 and "OPTIONS" not in r["inputs"]
        if r["split"] == "train" and not r["inverted"]:
            assert r["targets"] == raw_rows[r["example_id"]]["target"]


def test_bad_template_writes_nothing(raw, tmp_path, monkeypatch):
    import flanpipe.stages.templatize as tz
    bank = load_bank()["boolq"]
    broken = bank.model_copy(update={"templates": (
        *bank.templates[:-1], Template(id=99, input="{passage} {colour}", target="{answer}"))})
    monkeypatch.setitem(tz.load_bank(), "boolq", broken)
    out = tmp_path / "boolq.parquet"
    with pytest.raises(TemplateError, match=r"boolq template 99: placeholder \{colour\}"):
        templatize_dataset("boolq", *splits(raw / "boolq"), out, sliced(TemplatizeConfig(), seed=3))
    assert list(tmp_path.iterdir()) == []


def test_few_shot_uses_train_exemplars_never_the_query(raw):
    spec, bank = REG.datasets["rte"], load_bank()["rte"]
    template = bank.eval_templates[0]
    ev = pq.read_table(raw / "rte/eval.parquet")
    tr = pq.read_table(raw / "rte/train.parquet")
    cfg = FewShotConfig(k=2, delimiter="\n\n###\n\n", max_tokens=4096)
    prompts = few_shot_inputs(spec, bank, template, ev, tr, cfg, seed=1)
    assert len(prompts) == ev.num_rows
    for prompt, row in zip(prompts, ev.to_pylist(), strict=True):
        shots = prompt.split(cfg.delimiter)
        assert len(shots) == 3 and row["premise"] in shots[-1]
        assert all(row["premise"] not in s for s in shots[:-1])
        assert all(s.endswith(("\nyes", "\nno")) for s in shots[:-1])
    # the same example drawn from train as query: it is never its own exemplar
    own = few_shot_inputs(spec, bank, template, tr, tr, FewShotConfig(k=39, max_tokens=10**6), 1)
    for prompt, row in zip(own, tr.to_pylist(), strict=True):
        assert sum(row["premise"] in s for s in prompt.split("\n\n")) >= 1
        assert len(prompt.split(FewShotConfig().delimiter)) > 1
    # the budget drops whole exemplars
    tight = few_shot_inputs(spec, bank, template, ev, tr, FewShotConfig(k=3, max_tokens=120), 1)
    assert all(len(p.split()) <= 120 or "\n\n" not in p for p in tight)
    assert prompts == few_shot_inputs(spec, bank, template, ev, tr, cfg, seed=1)


def long_documents(n: int, per: int = 10) -> list[str]:
    """News-length documents of real English: ``per`` passages each (~6,000 characters)."""
    passages = load_passages()
    return [" ".join(passages[(i * per + j) % len(passages)] for j in range(per)) for i in range(n)]


@pytest.fixture(scope="module")
def bpe():
    """SmolLM2's BPE tokenizer (49k pieces), a real one the estimate must hold for; read straight
    from the cached folder when it is there (building it loads torch and transformers)."""
    import os
    from pathlib import Path

    from tokenizers import Tokenizer

    root = Path(os.environ.get("FLANPIPE_TEST_CACHE", Path.home() / ".cache/flanpipe"))
    cached = root / "smollm2-135m-instruct/tokenizer.json"
    return Tokenizer.from_file(str(cached if cached.exists() else smollm2_folder() / "tokenizer.json"))


@pytest.mark.parametrize(("name", "field", "extra"), [
    ("cnn_dailymail", "article", {"highlights": "A short highlight.", "id": "x"}),
    ("imdb", "text", {"label": 1})])
def test_a_long_input_is_cut_inside_its_long_field_so_the_instruction_survives(bpe, name, field, extra):
    """CNN/DM templates that end with the instruction, and IMDB's OPTIONS list: with 256 input tokens
    the document is cut before rendering, so every input fits the budget with a real BPE tokenizer
    and still ends with the template's own text after the field; without the cut the tokenizer's
    right truncation would take the instruction (and the OPTIONS) off."""
    spec, bank = REG.datasets[name], load_bank()[name]
    docs = long_documents(24)
    raw = pa.table({field: docs, **{k: [v] * len(docs) for k, v in extra.items()},
                    "row_index": np.arange(len(docs))})
    budget = 256
    out = templatize_split(spec, bank, raw, "train", TemplatizeConfig(passes=2), 3, max_input_tokens=budget)
    whole = templatize_split(spec, bank, raw, "train", TemplatizeConfig(passes=2, cut_long_field=False), 3,
                             max_input_tokens=budget)
    by_id = {t.id: t for t in bank.templates}
    checked = 0
    for r, w in zip(out.to_pylist(), whole.to_pylist(), strict=True):
        template = by_id[r["template_id"]]
        if "{" + field + "}" not in template.input:
            assert r["input_cut"] == 0
            continue
        head, tail = template.input.split("{" + field + "}")
        tail = tail.replace("{answer}", "")  # turned-around templates name the answer after the field
        assert r["input_cut"] > 0 and r["inputs"].startswith(head.split("{")[0])
        assert tail.rstrip() in r["inputs"][-len(tail) - 80:]
        if not template.inverted and spec.task.type == "classification":
            assert "\n\nOPTIONS:\n- " in r["inputs"]
        assert len(bpe.encode(r["inputs"]).ids) < budget  # fits, EOS included: nothing is truncated
        assert len(bpe.encode(w["inputs"]).ids) > budget  # uncut, the end would be truncated away
        checked += 1
    assert checked >= 25


def test_rendering_in_batches_gives_the_rows_of_one_whole_rendering(tmp_path):
    """templatize_dataset reads, renders and writes a split a few rows at a time: the rows it writes
    (every pass, template, cut) are those of one templatize_split call over the whole split, for
    long documents whose long field is cut (the field is the split's, not each batch's)."""
    spec, bank = REG.datasets["cnn_dailymail"], load_bank()["cnn_dailymail"]
    docs = long_documents(30)
    raw = pa.table({"article": docs, "highlights": [f"Highlight {i}." for i in range(30)],
                    "id": [f"doc{i}" for i in range(30)], "row_index": np.arange(30)})
    pq.write_table(raw.slice(0, 23), tmp_path / "train.parquet")
    pq.write_table(raw.slice(23), tmp_path / "eval.parquet")
    cfg = TemplatizeConfig(passes=3)
    manifest = templatize_dataset("cnn_dailymail", *splits(tmp_path), tmp_path / "out.parquet",
                                  sliced(cfg, 5, max_input_tokens=256), batch_rows=4)
    got = pq.read_table(tmp_path / "out.parquet").replace_schema_metadata(None)
    whole = pa.concat_tables([
        templatize_split(spec, bank, raw.slice(0, 23), "train", cfg, 5, max_input_tokens=256),
        templatize_split(spec, bank, raw.slice(23), "eval", cfg, 5, max_input_tokens=256)])
    keys = [("split", "ascending"), ("row_index", "ascending"), ("pass", "ascending"),
            ("template_id", "ascending")]
    assert got.num_rows == whole.num_rows == 23 * 3 + 7 * len(bank.eval_templates)
    assert got.sort_by(keys).equals(whole.sort_by(keys))
    assert pq.ParquetFile(tmp_path / "out.parquet").num_row_groups == 1
    assert manifest["outputs"]["train"]["inputs_cut"] > 0
    assert manifest["outputs"]["train"]["long_field"] == "article"


def test_few_shot_exemplars_come_from_keys_not_positions(raw):
    """Exemplars derive from (seed, dataset, template, example keys): reordering the train split
    changes no prompt, removing an eval row changes no other prompt, and removing one train row
    changes only the prompts that showed it."""
    spec, bank = REG.datasets["rte"], load_bank()["rte"]
    template = bank.eval_templates[0]
    ev = pq.read_table(raw / "rte/eval.parquet")
    tr = pq.read_table(raw / "rte/train.parquet")
    cfg = FewShotConfig(k=2, max_tokens=10**6)
    base = few_shot_inputs(spec, bank, template, ev, tr, cfg, seed=1)
    shuffled = tr.take(pa.array(np.random.default_rng(0).permutation(tr.num_rows)))
    assert few_shot_inputs(spec, bank, template, ev, shuffled, cfg, seed=1) == base
    assert few_shot_inputs(spec, bank, template, ev.slice(1), tr, cfg, seed=1) == base[1:]
    gone = tr.slice(7, 1).column("premise")[0].as_py()
    fewer = few_shot_inputs(spec, bank, template, ev, pa.concat_tables([tr.slice(0, 7), tr.slice(8)]), cfg, 1)
    changed = [a != b for a, b in zip(base, fewer, strict=True)]
    assert all(gone in a for a, c in zip(base, changed, strict=True) if c)
    assert few_shot_inputs(spec, bank, template, ev, tr, cfg, seed=2) != base
