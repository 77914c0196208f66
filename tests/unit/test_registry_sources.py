"""The registry against its audit (flanpipe/data/registry/audit.yaml).

The audit records, per entry, the published loading script it was checked against: the script's
features (in the registry's type language), ClassLabel names, split names and configs. These
tests fail when the registry drifts from what the scripts declare, or from the recorded fixes.
"""

from importlib import resources

import pytest
import yaml

from flanpipe.core.config.registry import load_registry

REG = load_registry()
AUDIT = yaml.safe_load(
    resources.files("flanpipe").joinpath("data/registry/audit.yaml").read_text("utf-8"))["audit"]
CHECKED = [name for name, entry in AUDIT.items() if entry["script"]]


def test_audit_lists_every_registry_entry_in_registry_order():
    assert list(AUDIT) == list(REG.datasets)


def test_64_entries_checked_against_a_script_and_the_rest_say_why_not():
    assert len(CHECKED) == 64
    for name, entry in AUDIT.items():
        if name in CHECKED:
            assert entry["verdict"] in ("matched", "fixed"), name
            assert entry["verdict"] == "matched" or entry["fixed"], name
        else:
            assert entry["verdict"] in ("no_script", "not_found") and entry["note"], name
        if entry["verdict"] == "no_script":
            spec = REG.datasets[name]
            assert spec.hub.id is None and not spec.available_on_hub and spec.local_instructions


@pytest.mark.parametrize("name", CHECKED)
def test_fields_types_splits_and_configs_match_the_script(name):
    entry, spec = AUDIT[name], REG.datasets[name]
    assert spec.hub.id == entry["hub_id"]
    assert spec.features == entry["features"]  # names (nested too) and types, in any order
    for role, split in spec.split_roles.items():
        assert split in entry["splits"], f"{name}: {role} split {split!r} is not one of the script's"
    configs = entry["configs"]
    if configs is not None:
        if spec.hub.config is not None:
            assert spec.hub.config in configs
        else:  # the registry names no config: the script must have none or exactly one
            assert len(configs) <= 1, configs


@pytest.mark.parametrize("name", CHECKED)
def test_labels_follow_the_script_class_order(name):
    entry, spec = AUDIT[name], REG.datasets[name]
    task = spec.task
    class_labels = entry.get("class_labels", {})
    for field in class_labels:  # a ClassLabel is stored as its index
        assert spec.features[field] in ("int", "list<int>"), field
    names = class_labels.get(task.label_field) if task.label_field else None
    if task.type == "classification":
        if names is not None:
            assert len(task.labels) == len(names)
            assert list(task.labels) == entry["registry_labels"]
            assert task.label_values is None  # the class index is the label
        else:
            assert list(task.label_values) == entry["label_values"]
    elif task.type == "multiple_choice" and names is not None and isinstance(task.choices, tuple):
        assert len(names) == len(task.choices)
    if "label_values" in entry:
        assert list(task.label_values) == entry["label_values"]


def test_script_only_repositories_are_read_from_the_parquet_branch():
    marked = {name for name, spec in REG.datasets.items() if spec.hub.parquet_branch}
    recorded = {name for name, entry in AUDIT.items()
                if "hub.parquet_branch" in entry.get("fixed", "") + entry.get("note", "")}
    assert marked == recorded
    assert {"samsum", "trec", "xsum", "math_dataset"} <= marked
    assert REG.datasets["wsc273"].hub.id == "lighteval/winograd_wsc"
    assert not REG.datasets["wsc273"].hub.parquet_branch
    bytes_reprs = {name: spec.hub.bytes_repr_fields for name, spec in REG.datasets.items()
                   if spec.hub.bytes_repr_fields}
    assert bytes_reprs == {"math_dataset": ("question", "answer")}


def test_newsroom_instructions_say_to_extract_the_jsonl_files():
    text = REG.datasets["newsroom"].local_instructions
    assert "gunzip train.jsonl.gz dev.jsonl.gz" in text and "unextracted" not in text
    assert "validation.jsonl" in text and "kind: local" in text
