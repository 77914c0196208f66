"""Template lint: every template of every registry dataset renders on a row of its schema."""

import json
import re

import pyarrow as pa
import pytest

from flanpipe.core.config.registry import embedded_datasets, load_registry
from flanpipe.core.text.templates import TemplateError, as_text, load_bank, render_template
from flanpipe.core.text.validate import check_split
from flanpipe.stages.download import read_embedded_split

REG = load_registry()
BANK = load_bank()
SCALAR = {pa.string(): "Sample, {name} text.", pa.int64(): 0, pa.float64(): 2.5, pa.bool_(): True}


def _synthetic(typ: pa.DataType, name: str, spec, path: str):
    """A value of the schema, for datasets without demo rows: lists of 2, distinct strings."""
    if pa.types.is_list(typ):
        return [_synthetic(typ.value_type, f"{name} item {i}", spec, path) for i in range(2)]
    if pa.types.is_struct(typ):
        return {f.name: _synthetic(f.type, f"{name} {f.name}", spec, f"{path}.{f.name}") for f in typ}
    if spec.task.label_values is not None and path == spec.task.label_field:
        return spec.task.label_values[0]
    value = SCALAR[typ]
    return value.format(name=name) if isinstance(value, str) else value


def example_rows(name: str) -> pa.Table:
    """Real demo rows where the project ships them, else one synthetic row in the schema."""
    spec = REG.datasets[name]
    if name in embedded_datasets():
        split = spec.split_roles.get("train") or spec.split_roles["eval"]
        records, bad, _ = read_embedded_split(spec, split)
        return check_split(records, spec, split, bad).table.slice(0, 5)
    row = {f.name: _synthetic(f.type, f.name, spec, f.name) for f in spec.schema}
    if spec.task.label_in:  # the answer key must be one of the row's keys
        head, sub = spec.task.label_in.split(".")
        row[spec.task.label_field] = row[head][sub][0]
    return pa.Table.from_pylist([row], schema=spec.schema)


def _paths(placeholders):
    """Field paths a template copies into its text (a transforming filter is not a copy)."""
    return {p.partition("|")[0] for p in placeholders if not p.endswith("|nopunct")}


@pytest.mark.parametrize("name", list(REG.datasets))
def test_template_lint(name):
    spec, bank = REG.datasets[name], BANK.get(name)
    assert bank is not None, f"{name} has no templates"
    assert 7 <= len(bank.templates) <= 10
    inverted = [t for t in bank.templates if t.inverted]
    assert len(inverted) <= 3
    task = spec.task
    targets = set(task.targets or ()) | ({task.label_field} if task.label_field else set())
    rows = example_rows(name)
    for t in bank.templates:
        where = f"{name} template {t.id}"
        r = render_template(bank, t, rows)
        inputs, outs = r.inputs.to_pylist(), r.targets.to_pylist()
        assert all(s.strip() for s in inputs + outs), f"{where}: empty output"
        assert not re.search(r"\{[\w.|]+\}", " ".join(inputs)), f"{where}: unresolved placeholder"
        if not t.inverted:
            # no leaking: the input names neither the answer, the label nor a target field
            used = _paths(t.placeholders("input"))
            assert not used & (targets | {"answer"}), f"{where}: input uses {used & targets}"
            if task.type != "generation":
                assert t.target == "{answer}", where
                for opts, tgt in zip(r.options.to_pylist(), outs, strict=True):
                    assert tgt in opts, f"{where}: target {tgt!r} not among options {opts}"
            else:
                for inp, tgt in zip(inputs, outs, strict=True):
                    assert len(tgt) < 12 or tgt not in inp, f"{where}: target text appears in input"
        else:
            # turned around: the target is real text, never a label word
            labels = set(bank.answer_texts(spec, t)) if task.type == "classification" else set()
            for tgt in outs:
                assert len(tgt.split()) >= 2 and tgt not in labels, f"{where}: trivial target {tgt!r}"


def test_most_datasets_have_turned_around_templates():
    with_inverted = [n for n, b in BANK.items() if any(t.inverted for t in b.templates)]
    assert len(with_inverted) >= len(REG.datasets) - 2


def test_options_suffix_formats():
    bank, rows = BANK["rte"], example_rows("rte").slice(0, 1)
    t = bank.templates[0]
    dash = render_template(bank, t, rows, "dash").inputs[0].as_py()
    assert dash.endswith("\n\nOPTIONS:\n- yes\n- no")
    letters = render_template(bank, t, rows, "letters").inputs[0].as_py()
    assert letters.endswith("\n\nOPTIONS:\n(A) yes\n(B) no")
    none = render_template(bank, t, rows, "none").inputs[0].as_py()
    assert "OPTIONS" not in none and dash.startswith(none)


def test_multiple_choice_options_are_the_rows_choices():
    bank, rows = BANK["arc_easy"], example_rows("arc_easy")
    r = render_template(bank, bank.eval_templates[0], rows)
    for row, opts, tgt, idx in zip(rows.to_pylist(), r.options.to_pylist(), r.targets.to_pylist(),
                                   r.answer_index, strict=True):
        assert opts == row["choices"]["text"]
        assert tgt == opts[row["choices"]["label"].index(row["answerKey"])] == opts[idx]


def test_list_rendering_and_filters():
    arr = pa.array([["a", "b", "c"], ["d"], []])
    assert as_text(arr).to_pylist() == ["a, b, c", "d", ""]
    assert as_text(arr, "lines").to_pylist() == ["a\nb\nc", "d", ""]
    assert as_text(arr, "first").to_pylist() == ["a", "d", ""]
    assert as_text(arr.slice(0, 2), "numbered").to_pylist() == ["1. a\n2. b\n3. c", "1. d"]
    with pytest.raises(TemplateError, match="unknown filter"):
        as_text(arr, "upper")


def test_missing_field_names_dataset_template_and_field():
    from flanpipe.core.text.templates import Template
    bad = Template(id=42, input="{premise} {nonexistent}", target="{answer}")
    with pytest.raises(TemplateError, match=r"rte template 42: placeholder \{nonexistent\}"):
        render_template(BANK["rte"], bad, example_rows("rte"))


def test_label_without_a_name_is_an_error():
    rows = example_rows("rte").to_pylist()
    rows[1]["label"] = 7
    table = pa.Table.from_pylist(rows, schema=example_rows("rte").schema)
    with pytest.raises(TemplateError, match=r"rte template 0: field 'label' of row 1 \(7\) has no label"):
        render_template(BANK["rte"], BANK["rte"].templates[0], table)


def test_squad_v2_unanswerable_gets_the_empty_answer_text():
    spec = REG.datasets["squad_v2"]
    row = {f.name: _synthetic(f.type, f.name, spec, f.name) for f in spec.schema}
    row["answers"] = {"text": [], "answer_start": []}
    table = pa.Table.from_pylist([row], schema=spec.schema)
    bank = BANK["squad_v2"]
    r = render_template(bank, bank.eval_templates[0], table)
    assert r.targets[0].as_py() == bank.empty_answer
    assert json.dumps(bank.empty_answer)
