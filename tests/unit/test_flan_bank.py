"""FLAN's own templates (templatize.bank: flan2021 | flan2022), read from a FLAN checkout as data.

Every test runs on the small checkout of tests/data/flan (templates written for these tests, in FLAN's
file format) and, where ../shared/flan holds FLAN's own files beside the project, on those too. The
expected strings are worked out here by hand: FLAN's pattern text (read with a plain ast literal
evaluation, not the bank's reader) with each placeholder replaced by the row's value, as FLAN's own
formatter does (``str.replace`` over whole placeholders), never through the code under test.
"""

import ast
import hashlib
import json
import re
import subprocess

import pyarrow.parquet as pq
import pytest

from flanpipe.cli import main as flanpipe_main
from flanpipe.core.config import SourceSpec, TemplatizeConfig, TemplatizeSlice, parse_config
from flanpipe.core.config.registry import embedded_datasets, load_registry
from flanpipe.core.io import read_parquet_metadata
from flanpipe.core.text.flan import (
    BANK_FILES,
    FlanBankError,
    checkout_identity,
    field_maps,
    git_commit,
    read_patterns,
)
from flanpipe.core.text.templates import load_bank, render_template
from flanpipe.stages.catalog import template_banks
from flanpipe.stages.download import download_dataset
from flanpipe.stages.templatize import templatize_dataset
from tests.conftest import REPO
from tests.unit.test_templates import example_rows

REG = load_registry()
FIXTURE = REPO / "tests/data/flan"
SHARED = REPO.parent / "shared/flan"  # FLAN's own files, where the project's checkout has them beside it
ROOTS = [FIXTURE] + ([SHARED] if (SHARED / BANK_FILES["flan2021"]).is_file() else [])
CHECKOUTS = [(bank, root) for root in ROOTS for bank in BANK_FILES if (root / BANK_FILES[bank]).is_file()]


def patterns_by_hand(root, bank="flan2021"):
    """The file's PATTERNS as the test reads it: the last top-level ``PATTERNS = ...``, literal-evaluated."""
    tree = ast.parse((root / BANK_FILES[bank]).read_text())
    node = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "PATTERNS"][-1]
    return ast.literal_eval(node.value)


def fill(text, values):
    """FLAN's formatting by hand: each ``{name}`` replaced by its value."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    assert not re.search(r"\{\w*\}", text), f"a placeholder is left in {text!r}"
    return text


def options(*items):
    return "OPTIONS:\n- " + "\n- ".join(items)


ANLI_ROW = {"uid": "a1", "premise": "The Osprey Bridge opened in 1961 and carries two lanes of traffic over "
            "the river Tay near the village of Kinfauns.", "hypothesis": "The bridge is older than 1970.",
            "label": 0, "reason": ""}


def first_row(name):
    if name == "anli_r1":  # no embedded demo rows: one written here, in the hub's schema
        import pyarrow as pa
        return pa.Table.from_pylist([ANLI_ROW], schema=REG.datasets[name].schema)
    assert name in embedded_datasets()
    return example_rows(name).slice(0, 1)


def flan_values(name, row):
    """FLAN's fields of one row, worked out by hand from the hub schema, and FLAN's target field."""
    if name == "rte":
        return {"premise": row["premise"], "hypothesis": row["hypothesis"], "options_": options("yes", "no"),
                "answer": ["yes", "no"][row["label"]]}, "answer"
    if name == "anli_r1":
        return {"context": row["premise"], "hypothesis": row["hypothesis"],
                "options_": options("Yes", "It's impossible to say", "No"),
                "answer": ["Yes", "It's impossible to say", "No"][row["label"]]}, "answer"
    if name == "boolq":
        return {"text": row["passage"], "question": row["question"], "options_": options("no", "yes"),
                "answer": "yes" if row["answer"] else "no"}, "answer"
    if name == "arc_easy":
        texts, labels = row["choices"]["text"], row["choices"]["label"]
        return {"question": row["question"], "options_": options(*texts),
                "answer": texts[labels.index(row["answerKey"])]}, "answer"
    if name == "copa":
        return {"premise": row["premise"], "question": row["question"],
                "options_": options(row["choice1"], row["choice2"]),
                "answer": [row["choice1"], row["choice2"]][row["label"]]}, "answer"
    if name == "wmt16_de_en":  # FLAN's sent1 is the English side: here the target
        return {"lang1": "English", "lang2": "German", "sent1": row["translation"]["en"],
                "sent2": row["translation"]["de"]}, "sent1"
    if name == "common_gen":
        return {"concepts": ", ".join(row["concepts"]), "concepts_newline": "\n".join(row["concepts"]),
                "target": row["target"]}, "target"
    if name == "samsum":
        return {"dialogue": row["dialogue"], "summary": row["summary"]}, "summary"
    raise KeyError(name)


@pytest.mark.parametrize("bank,root", CHECKOUTS, ids=lambda x: str(x))
@pytest.mark.parametrize("name", ["rte", "anli_r1", "boolq", "arc_easy", "copa", "wmt16_de_en", "common_gen",
                                  "samsum"])
def test_a_row_renders_exactly_the_string_flans_template_gives(name, bank, root):
    key = field_maps()[name].key
    patterns = patterns_by_hand(root, bank).get(key)
    if patterns is None:
        assert not load_bank(bank, str(root))[name].templates  # the fixture's 2022 file has rte alone
        return
    table = first_row(name)
    values, target_field = flan_values(name, table.to_pylist()[0])
    # the first of FLAN's templates that poses the dataset's own task and names only fields the row has
    index = next(i for i, (source, target) in enumerate(patterns) if target == "{" + target_field + "}"
                 and set(re.findall(r"\{(\w*)\}", source)) <= set(values))
    source, target = patterns[index]
    if bank == "flan2022":
        source = source.replace("{hypothesis}n\n", "{hypothesis}\n\n")
    flan = load_bank(bank, str(root))[name]
    template = next(t for t in flan.templates if t.id == index)
    assert not template.inverted
    rendered = render_template(flan, template, table, "dash")
    assert rendered.inputs[0].as_py() == fill(source, values)
    assert rendered.targets[0].as_py() == fill(target, values)


def test_fixture_strings_written_out():
    """The same on the fixture, with the expected strings written out in full (the fixture's sentences
    are this project's): OPTIONS at the template's own place, the 2021 slip kept, the 2022 bank's fixed."""
    table = first_row("rte")
    row = table.to_pylist()[0]
    p, h, answer = row["premise"], row["hypothesis"], ["yes", "no"][row["label"]]
    b21, b22 = load_bank("flan2021", str(FIXTURE))["rte"], load_bank("flan2022", str(FIXTURE))["rte"]
    assert render_template(b21, b21.templates[0], table).inputs[0].as_py() == \
        f'{p}\n\nDoes it follow that "{h}"?\n\nOPTIONS:\n- yes\n- no'
    assert render_template(b21, b21.templates[1], table).inputs[0].as_py() == \
        f"Passage: {p}\n\nClaim: {h}n\nOPTIONS:\n- yes\n- no"
    assert render_template(b22, b22.templates[1], table).inputs[0].as_py() == \
        f"Passage: {p}\n\nClaim: {h}\n\nOPTIONS:\n- yes\n- no"
    assert render_template(b21, b21.templates[0], table).targets[0].as_py() == answer
    arc = load_bank("flan2021", str(FIXTURE))["arc_easy"]
    rows = first_row("arc_easy")
    q = rows.to_pylist()[0]["question"]
    texts = rows.to_pylist()[0]["choices"]["text"]
    listed = "\n".join(f"- {t}" for t in texts)
    lettered = "\n".join(f"({chr(65 + i)}) {t}" for i, t in enumerate(texts))
    t0 = arc.templates[0]
    assert render_template(arc, t0, rows, "dash").inputs[0].as_py() == f"Q: {q}\nOPTIONS:\n{listed}\nA:"
    assert render_template(arc, t0, rows, "letters").inputs[0].as_py() == f"Q: {q}\nOPTIONS:\n{lettered}\nA:"
    assert render_template(arc, t0, rows, "none").inputs[0].as_py() == f"Q: {q}\nA:"


def test_flans_derived_fields_by_hand():
    """The filters the field map derives FLAN's fields with, against hand-worked values."""
    import pyarrow as pa

    from flanpipe.core.text.templates import as_text

    assert as_text(pa.array(["Well, it's 5 p.m. -- isn't it?"]), "unpunctuated").to_pylist() == \
        ["Well its 5 pm  isnt it"]
    assert as_text(pa.array([0.4, 2.5, 3.5, 4.6]), "round").to_pylist() == ["0", "2", "4", "5"]
    assert as_text(pa.array([["Paris", "Rome"]]), "options").to_pylist() == ["OPTIONS:\n- Paris\n- Rome"]


def test_options_are_listed_in_flans_order(tmp_path):
    """TREC's OPTIONS in FLAN's order (not the registry's label order); the answer is the row's own."""
    (tmp_path / "flan").mkdir()
    patterns = 'PATTERNS = {"trec": [("{text}\\n\\n{options_}", "{answer}")]}\n'
    (tmp_path / "flan/templates.py").write_text(patterns)
    bank = load_bank("flan2021", str(tmp_path))["trec"]
    rows = example_rows("trec")
    r = render_template(bank, bank.templates[0], rows, "dash")
    row = rows.to_pylist()[0]
    assert r.inputs[0].as_py() == row["text"] + "\n\n" + options(
        "description", "entity", "abbreviation", "human", "numeric", "location")
    flan_names = ["abbreviation", "entity", "description", "human", "location", "numeric"]  # label order
    assert r.targets[0].as_py() == flan_names[row["coarse_label"]] == r.options[0].as_py()[r.answer_index[0]]


def test_a_target_other_than_the_answer_is_turned_around_and_never_evaluated():
    bank = load_bank("flan2021", str(FIXTURE))
    assert [(t.id, t.inverted) for t in bank["rte"].templates] == [(0, False), (1, False), (2, True)]
    assert [(t.id, t.inverted) for t in bank["arc_easy"].templates] == [(0, False), (1, True)]
    # wmt16_de_en translates German to English: FLAN's English-to-German template turns it around
    assert [(t.id, t.inverted) for t in bank["wmt16_de_en"].templates] == [(0, False), (1, True)]
    assert [(t.id, t.inverted) for t in bank["samsum"].templates] == [(0, False), (1, True)]
    for entry in bank.values():
        assert not any(t.inverted for t in entry.eval_templates)
    # a turned-around FLAN template shows no OPTIONS (it has no {options_}) and asks for real text
    inverted = render_template(bank["rte"], bank["rte"].templates[2], first_row("rte"))
    assert inverted.inputs[0].as_py() == "Write a passage and a claim it supports."
    assert inverted.targets[0].as_py().endswith("\n\nClaim: " + first_row("rte").to_pylist()[0]["hypothesis"])


def test_patterns_that_are_not_a_literal_are_refused_and_never_run(tmp_path):
    mark = tmp_path / "ran.txt"
    cases = {
        "call": f'def make():\n    open({str(mark)!r}, "w").write("ran")\n    return "x"\n\n'
                f'PATTERNS = {{"rte": [(make(), "{{answer}}")]}}\n',
        "name": f'open({str(mark)!r}, "w").write("ran")\nTEMPLATES = [("{{premise}}", "{{answer}}")]\n'
                'PATTERNS = {"rte": TEMPLATES}\n',
        "comprehension": 'PATTERNS = {k: [("{premise}", "{answer}")] for k in ["rte"]}\n',
    }
    for what, text in cases.items():
        path = tmp_path / f"{what}.py"
        path.write_text(text)
        with pytest.raises(FlanBankError, match=re.escape(str(path)) + ".*not a literal"):
            read_patterns(path)
    # a literal PATTERNS beside code that would leave a mark: read, and the code never runs
    path = tmp_path / "flan/templates.py"
    path.parent.mkdir()
    path.write_text(f'import os\nopen({str(mark)!r}, "w").write("ran")\n'
                    'PATTERNS = {"rte": [("{premise}", "{answer}")]}\n')
    assert read_patterns(path) == {"rte": [("{premise}", "{answer}")]}
    assert [t.input for t in load_bank("flan2021", str(tmp_path))["rte"].templates] == ["{premise}"]
    assert not mark.exists()
    (tmp_path / "no.py").write_text("PATTERNS = {'rte': ['one string, not a pair']}\n")
    with pytest.raises(FlanBankError, match="no.py.*not a list of"):
        read_patterns(tmp_path / "no.py")


def expected_split(name, patterns):
    """Which of FLAN's templates a registry entry renders, and which it skips, worked out by hand: a
    template is skipped when it names a field the entry's map gives no value for (``{answer}`` and
    ``{options_}`` are the renderer's own; a generation task has no options of its own to list)."""
    fmap = field_maps()[name]
    rendered, skipped = [], []
    for i, (source, target) in enumerate(patterns):
        needs = set(re.findall(r"\{(\w*)\}", source + target)) - set(fmap.fields) - {"answer", "options_"}
        lists_options = "{options_}" in source and "options_" not in fmap.fields
        if needs or (lists_options and REG.datasets[name].task.type == "generation"):
            skipped.append(i)
        else:
            rendered.append(i)
    return rendered, skipped


@pytest.mark.parametrize("bank,root", CHECKOUTS, ids=lambda x: str(x))
def test_every_registry_entry_renders_all_it_can_and_the_cli_lists_the_rest(bank, root, capsys):
    patterns = patterns_by_hand(root, bank)
    flan = load_bank(bank, str(root))
    assert set(flan) == set(REG.datasets)
    total_rendered = total_skipped = 0
    for name, spec in REG.datasets.items():
        entry = flan[name]
        rendered, skipped = expected_split(name, patterns.get(entry.key, []))
        assert [t.id for t in entry.templates] == rendered, name
        assert sorted(entry.skipped) == skipped, name
        for i in skipped:
            assert entry.skipped[i].why and entry.skipped[i].needs, (name, i)
        total_rendered, total_skipped = total_rendered + len(rendered), total_skipped + len(skipped)
        rows = example_rows(name)
        for t in entry.templates:
            for style in ("dash", "none"):
                r = render_template(entry, t, rows, style)
                texts = r.inputs.to_pylist() + r.targets.to_pylist()
                assert all(s.strip() for s in texts), (name, t.id)
                assert not any(re.search(r"\{\w+\}", s) for s in texts), (name, t.id)
                shown = (style == "dash" and "{options_}" in t.input) or "OPTIONS:" in t.input \
                    or "|options}" in t.input  # STS-B's constant scores, ReCoRD's entities
                assert ("OPTIONS:" in r.inputs[0].as_py()) == shown, (name, t.id)
                if not t.inverted and spec.task.type != "generation":
                    assert all(tgt in opts for tgt, opts in zip(r.targets.to_pylist(), r.options.to_pylist(),
                                                                strict=True)), (name, t.id)
    assert flanpipe_main(["datasets", "--bank", bank, "--flan-root", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["rendered"], listed["skipped"]) == (total_rendered, total_skipped)
    assert {n: len(v["skipped"]) for n, v in listed["datasets"].items()} == \
        {n: len(flan[n].skipped) for n in REG.datasets}
    assert listed["bank"]["sha256"] == hashlib.sha256((root / BANK_FILES[bank]).read_bytes()).hexdigest()
    if root == SHARED and bank == "flan2021":  # FLAN's own: BoolQ's {title} template is skipped, named
        assert listed["datasets"]["boolq"]["skipped"] == {
            "8": {"needs": "title", "why": "the hub's BoolQ rows have no passage title"}}
        assert total_rendered + total_skipped == 680  # 68 entries x 10


@pytest.mark.skipif(SHARED not in ROOTS, reason="FLAN's own files are not beside the project")
def test_flan2022_is_the_2021_text_corrected():
    old = load_bank("flan2021", str(SHARED))
    new = load_bank("flan2022", str(SHARED))
    slips = [(n, t.id) for n, e in old.items() for t in e.templates if "}n\n" in t.input]
    assert len({(old[n].key, i) for n, i in slips}) == 9
    assert not [(n, t.id) for n, e in new.items() for t in e.templates if "}n\n" in t.input]


def test_a_flan_bank_needs_its_checkout_and_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"templatize[\s\S]*flan_root"):
        parse_config({"templatize": {"bank": "flan2021"}})
    with pytest.raises(ValueError, match=r"templatize[\s\S]*flan_root is only read with a FLAN bank"):
        parse_config({"templatize": {"flan_root": str(FIXTURE)}})
    cfg = parse_config({"templatize": {"bank": "flan2022", "flan_root": str(FIXTURE)}})
    assert cfg.templatize.bank == "flan2022"
    with pytest.raises(FlanBankError, match=r"templatize.flan_root: .* holds no flan/templates.py"):
        load_bank("flan2021", str(tmp_path))
    assert flanpipe_main(["datasets", "--bank", "flan2021"]) == 2


def test_the_checkout_identity_is_its_git_commit_or_the_files_sha256(tmp_path):
    clone = tmp_path / "FLAN"
    (clone / "flan").mkdir(parents=True)
    (clone / "flan/templates.py").write_text('PATTERNS = {"rte": [("{premise}", "{answer}")]}\n')
    plain = checkout_identity("flan2021", clone)
    assert plain["git_commit"] is None
    assert plain["sha256"] == hashlib.sha256((clone / "flan/templates.py").read_bytes()).hexdigest()
    git = ["git", "-C", str(clone), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    head = head.stdout.strip()
    assert git_commit(clone) == head == checkout_identity("flan2021", clone)["git_commit"]
    subprocess.run([*git, "pack-refs", "--all"], check=True)  # the branch now in packed-refs only
    assert git_commit(clone) == head
    assert git_commit(clone / "flan") is None  # a folder inside a clone is not a clone


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for name in ["rte", "samsum"]:
        download_dataset(name, SourceSpec(kind="embedded"), root / name, seed=1)
    return root


def sliced(**values):
    cfg = TemplatizeConfig(**values)
    return TemplatizeSlice(seed=3, max_input_tokens=None, **cfg.model_dump(exclude={"few_shot", "mix"}))


def test_templatize_with_a_flan_bank_records_it_and_evaluates_no_turned_around_template(raw, tmp_path):
    out = tmp_path / "rte.parquet"
    cfg = sliced(bank="flan2021", flan_root=str(FIXTURE))
    manifest = templatize_dataset("rte", raw / "rte/train.parquet", raw / "rte/eval.parquet", out, cfg)
    table = pq.read_table(out).to_pylist()
    assert {r["template_id"] for r in table if r["split"] == "train"} == {0, 1, 2}
    assert {r["template_id"] for r in table if r["split"] == "eval"} == {0, 1}
    assert {r["targets"] for r in table if r["split"] == "eval"} == {"yes", "no"}
    file = FIXTURE / "flan/templates.py"
    expected = {"bank": "flan2021", "flan_root": str(FIXTURE), "file": "flan/templates.py",
                "git_commit": None,
                "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    assert manifest["bank"] == expected
    assert read_parquet_metadata(out)["bank"] == expected
    # the catalog's template_banks table: this file's bank, and flanpipe's for a file of the default
    own = tmp_path / "own.parquet"
    templatize_dataset("rte", raw / "rte/train.parquet", raw / "rte/eval.parquet", own, sliced())
    assert "bank" not in read_parquet_metadata(own)
    assert template_banks([out, own]).to_pylist() == [
        {"dataset": "rte", **expected},
        {"dataset": "rte", "bank": "flanpipe", "flan_root": None, "file": None, "git_commit": None,
         "sha256": None}]
    # the report's line on the prompts, from the evaluation results that carry the bank
    from flanpipe.stages.report import prompt_banks
    assert prompt_banks([{"bank": expected}, {"bank": expected}]) == [
        "Prompts: FLAN's own templates (`templatize.bank: flan2021`), read from "
        f"`{FIXTURE}/flan/templates.py` (sha256 `{expected['sha256'][:16]}`).", ""]
    assert prompt_banks([{}])[0].startswith("Prompts: flanpipe's own templates")


@pytest.mark.parametrize("fmt", ["no_template", "dataset_name"])
def test_the_ablation_formats_apply_on_a_flan_bank(raw, tmp_path, fmt):
    """The same plain inputs as on flanpipe's bank, OPTIONS included; the answers are FLAN's."""
    for bank, values in [("flanpipe", {}), ("flan2021", {"bank": "flan2021", "flan_root": str(FIXTURE)})]:
        templatize_dataset("rte", raw / "rte/train.parquet", raw / "rte/eval.parquet",
                           tmp_path / f"{bank}.parquet", sliced(format=fmt, **values))
    own, flan = (pq.read_table(tmp_path / f"{b}.parquet").to_pylist() for b in ("flanpipe", "flan2021"))
    row = pq.read_table(raw / "rte/train.parquet").to_pylist()[0]
    body = f"{row['premise']}\n{row['hypothesis']}\n\nOPTIONS:\n- yes\n- no"
    assert flan[0]["inputs"] == (body if fmt == "no_template" else f"[Task: RTE]\n{body}")
    assert [r["inputs"] for r in flan] == [r["inputs"] for r in own]
    assert {r["format"] for r in flan} == {fmt} and {r["template_id"] for r in flan} == {0}
    # summarization: no OPTIONS, FLAN or not
    templatize_dataset("samsum", raw / "samsum/train.parquet", raw / "samsum/eval.parquet",
                       tmp_path / "s.parquet", sliced(format=fmt, bank="flan2021", flan_root=str(FIXTURE)))
    assert not any("OPTIONS" in r["inputs"] for r in pq.read_table(tmp_path / "s.parquet").to_pylist())


def test_the_bank_moves_the_templatize_and_evaluate_params_alone():
    """Training and evaluation read the same bank; a run on flanpipe's bank keeps the params it had
    before banks existed (the keys are left out at their defaults), so it reruns nothing."""
    from flanpipe.workflow.planner import SLICES, Plan

    before = Plan(parse_config({}))
    after = Plan(parse_config({"templatize": {"bank": "flan2021", "flan_root": str(FIXTURE)}}))
    moved = {rule for rule in SLICES if before.slice(rule, dataset="rte") != after.slice(rule, dataset="rte")}
    assert moved == {"templatize", "evaluate"}
    assert "bank" not in before.slice("templatize", dataset="rte") and "bank" not in before.slice("evaluate")
    for rule in ("templatize", "evaluate"):
        assert {k: after.slice(rule, dataset="rte")[k] for k in ("bank", "flan_root")} == \
            {"bank": "flan2021", "flan_root": str(FIXTURE)}
