"""Row checks against the registry schema: each kind of bad row, and nothing lost."""

import json

import pyarrow as pa
import pytest

from flanpipe.core.config.registry import load_registry
from flanpipe.core.text.validate import BadLine, SchemaError, check_split

REG = load_registry()


def rte(premise="A cat sat on the mat.", hypothesis="A cat sat.", idx=0, label=0):
    return {"premise": premise, "hypothesis": hypothesis, "idx": idx, "label": label}


def check(records, name="rte", bad_lines=None):
    res = check_split(records, REG.datasets[name], "train", bad_lines)
    assert res.table.num_rows + res.rejected.num_rows == res.rows_read == len(records)
    return res


def test_clean_rows_pass_with_their_positions():
    res = check([rte(idx=0), rte(idx=1, label=1)])
    assert res.rejected.num_rows == 0
    assert res.table.column_names == ["premise", "hypothesis", "idx", "label", "row_index"]
    assert res.table.column("row_index").to_pylist() == [0, 1]


@pytest.mark.parametrize("row, kind, words", [
    ({"premise": "p", "hypothesis": "h", "idx": 1}, "missing_field", "'label' is missing"),
    (rte(label="entailment"), "wrong_type", "'label' is not of type int"),
    (rte(label=True), "wrong_type", "'label' is not of type int"),
    (rte(premise=7), "wrong_type", "'premise' is not of type string"),
    (rte(hypothesis="   "), "empty_text", "'hypothesis' is empty"),
    (rte(label=2), "label_out_of_range", "one of [0, 1]"),
    (rte(label=-1), "label_out_of_range", "one of [0, 1]"),
])
def test_each_kind_of_bad_row_is_quarantined_with_its_reason(row, kind, words):
    res = check([rte(), row, rte(idx=2)])
    assert res.table.column("row_index").to_pylist() == [0, 2]
    rej = res.rejected.to_pylist()
    assert [(r["row_index"], r["kind"]) for r in rej] == [(1, kind)]
    assert words in rej[0]["reason"]
    assert json.loads(rej[0]["row"]) == row  # the original content is kept


def test_invalid_json_line_is_kept_verbatim():
    res = check([rte(), None],
                bad_lines={1: BadLine("invalid_json", "line is not valid JSON", "{not json")})
    rej = res.rejected.to_pylist()
    assert rej == [{"split": "train", "row_index": 1, "kind": "invalid_json",
                    "reason": "line is not valid JSON", "row": "{not json"}]


def test_numeric_strings_parse_as_in_csv_cells():
    res = check([rte(idx="3", label="1")])
    assert res.rejected.num_rows == 0 and res.table.column("label").to_pylist() == [1]


def test_bool_labels_with_label_values():
    rows = [{"question": "q", "answer": True, "passage": "p"},
            {"question": "q", "answer": "maybe", "passage": "p"},
            {"question": "q", "answer": None, "passage": "p"}]
    res = check(rows, "boolq")
    assert res.rejected.column("kind").to_pylist() == ["wrong_type", "missing_field"]


def test_string_labels_with_label_values():
    row = {"sentence": "The _ fell.", "option1": "a", "option2": "b", "answer": "1"}
    res = check([row, {**row, "answer": "3"}], "winogrande")
    assert res.rejected.column("kind").to_pylist() == ["label_out_of_range"]


def test_answer_key_must_be_one_of_the_row_choice_labels():
    base = {"id": "a", "question": "Which is a metal?",
            "choices": {"text": ["iron", "wood", "glass"], "label": ["A", "B", "C"]}, "answerKey": "A"}
    rows = [base, {**base, "id": "b", "answerKey": "D"},
            {**base, "id": "c", "choices": {"text": ["iron", ""], "label": ["A", "B"]}}]
    res = check(rows, "arc_easy")
    kinds = dict(zip(res.rejected.column("row_index").to_pylist(),
                     res.rejected.column("kind").to_pylist(), strict=True))
    assert kinds == {1: "label_out_of_range", 2: "empty_text"}


def test_multiple_choice_over_fields():
    base = {"premise": "It rained.", "choice1": "The street got wet.", "choice2": "The sun set.",
            "question": "effect", "idx": 0, "label": 0}
    res = check([base, {**base, "label": 2}, {**base, "choice2": ""}], "copa")
    assert res.rejected.column("kind").to_pylist() == ["label_out_of_range", "empty_text"]


def test_nested_text_fields_and_generation_targets():
    ok = {"translation": {"de": "Guten Morgen.", "en": "Good morning."}}
    res = check([ok, {"translation": {"de": "Hallo.", "en": ""}}, {"translation": "Hallo"}],
                "wmt16_de_en")
    assert res.rejected.column("kind").to_pylist() == ["empty_text", "wrong_type"]
    concepts = {"concept_set_idx": 0, "concepts": ["dog", "ball"], "target": "A dog chases a ball."}
    res = check([concepts, {**concepts, "concepts": []}, {**concepts, "concepts": ["dog", ""]}],
                "common_gen")
    assert res.rejected.column("row_index").to_pylist() == [1, 2]


def test_arrow_source_with_castable_and_uncastable_columns():
    table = pa.table({"premise": ["a", "b"], "hypothesis": ["c", "d"],
                      "idx": pa.array([0, 1], pa.int32()), "label": ["0", "x"], "extra": [1, 2]})
    res = check_split(table, REG.datasets["rte"], "validation")
    assert res.table.column("label").type == pa.int64()
    assert res.rejected.column("row_index").to_pylist() == [1]
    assert res.extra_columns == ["extra"]


def test_a_source_without_the_schema_is_an_error_not_a_reject():
    with pytest.raises(SchemaError, match=r"no column\(s\) \['hypothesis'"):
        check_split([{"premise": "p", "idx": 0, "label": 0}], REG.datasets["rte"], "train")


def test_bytes_repr_column_decodes_as_python_does():
    """Values made by str(bytes) of real file lines, decoded by bytes.decode: the independent side."""
    import numpy as np

    from flanpipe.core.text.validate import decode_bytes_repr_column

    lines = [b"Solve 24 = 1601*c - 1605*c for c.\n", b"-4\n", b"What's x if 2*x = 4?\n",
             b'Let "k" be 3.\n', b"caf\xc3\xa9 \xe2\x88\x9a2\n", b"tab\there\n", b"back\\slash\n",
             b"no line break", b"\n", b"two\nlines\n"]
    values = [str(line) for line in lines] + ["already text", None, "b'\\xff\\n'", "b'cut off"]
    decoded, n_decoded, bad = decode_bytes_repr_column(pa.array(values))
    expected = [line.decode("utf-8").removesuffix("\n") for line in lines]
    assert decoded.to_pylist() == [*expected, "already text", None, "b'\\xff\\n'", "b'cut off"]
    assert n_decoded == len(lines)
    assert np.flatnonzero(bad).tolist() == [len(lines) + 2]  # not UTF-8; "b'cut off" is no repr


def test_bytes_reprs_in_jsonl_records_are_decoded_and_counted():
    res = check([{"question": "b'Solve 2*a = 4 for a.\\n'", "answer": "b'2\\n'"},
                 {"question": "b'Solve b = 1 for b.\\n'", "answer": "1"}], name="math_dataset")
    assert res.table.column("question").to_pylist() == ["Solve 2*a = 4 for a.", "Solve b = 1 for b."]
    assert res.table.column("answer").to_pylist() == ["2", "1"]
    assert res.bytes_reprs_decoded == {"question": 2, "answer": 1}
