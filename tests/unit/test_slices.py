"""Reruns by construction: each rule's params are its stage's config slice, and a slice holds the
keys the stage reads. Every config key is either in some rule's slice or shapes the workflow itself
(the planner's keys); changing a key changes exactly the slices that hold it."""

from __future__ import annotations

import inspect
import typing

import pytest
from pydantic import BaseModel

from flanpipe.core.config import Config, parse_config
from flanpipe.workflow.planner import SLICES, Plan
from tests.conftest import REPO

# Keys that decide which jobs exist (read by the planner, rules/common.smk): a change adds or removes
# jobs rather than rerunning them. The few that are also in a slice are listed in BOTH.
PLANNER_KEYS = {
    "datasets", "heldout_clusters", "templatize.format", "tokenize.tokenizer.source",
    "tokenize.tokenizer.path", "tokenize.tokenizer.shared", "train.model.source", "train.model.path",
    "evaluate.few_shot", "evaluate.base_model", "ablations.enabled", "ablations.heldout",
    "ablations.clusters", "ablations.formats", "ablations.kinds", "all_model",
    # the registry a config names, and the sources that resolve into a dataset's download slice
    # (a cot dataset's path under the FLAN checkout) or leave an absent dataset out of the plan
    "registry.extra", "download.flan_root", "download.optional"}
BOTH = {"templatize.format", "tokenize.tokenizer.source", "tokenize.tokenizer.path",
        "tokenize.tokenizer.shared", "train.model.source", "train.model.path", "evaluate.few_shot",
        "evaluate.base_model", "ablations.clusters", "ablations.formats"}
DEMO = parse_config(__import__("yaml").safe_load((REPO / "config/config.yaml").read_text()))


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of a config model, as a dotted path (a section's own fields recursively)."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = [a for a in typing.get_args(annotation) if inspect.isclass(a)] or [annotation]
        section = next((a for a in inner if inspect.isclass(a) and issubclass(a, BaseModel)), None)
        if section is not None and typing.get_origin(annotation) is not dict:
            out += leaf_keys(section, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def holds(paths: list[str], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in paths)


def slice_rules(key: str) -> set[str]:
    return {rule for rule, cls in SLICES.items() if holds(cls.paths(), key)}


def _get(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def _set(data: dict, key: str, value) -> dict:
    parts = key.split(".")
    out = data
    for part in parts[:-1]:
        out = out.setdefault(part, {})
    out[parts[-1]] = value
    return data


def mutated(cfg: Config, key: str) -> Config | None:
    """``cfg`` with ``key`` changed to another allowed value (None if no simple change is allowed)."""
    import copy

    base = cfg.model_dump(mode="json")
    value = _get(base, key)
    if isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, int):
        candidates = [value + 1, value - 1, value * 2]
    elif isinstance(value, float):
        candidates = [value * 0.5, value * 1.5, value + 0.1]
    elif isinstance(value, str):
        candidates = ["right", "left", "dash", "letters", "none", "bpe", "unigram", "sum", "per_token",
                      "qwen2", "adamw", "adafactor", "bf16", "fp32", "eager", "sdpa", "without", "both",
                      "next_fit", "best_fit", "encoder_decoder", "no_template", "hub", "local", "text"]
    elif value is None:
        candidates = [2, 128, 0.5, True, "x"]
    elif key == "download.sources":
        candidates = [{"rte": {"kind": "local", "path": "/data/rte"}}]
    elif key == "train.model.hf_config":
        candidates = [{"rope_theta": 1000.0}]
    elif key == "train.adam_betas":
        candidates = [[0.8, 0.99]]
    elif isinstance(value, list) and value:
        candidates = [value[:-1]]
    else:
        return None
    for candidate in candidates:
        if candidate == value:
            continue
        try:
            return parse_config(_set(copy.deepcopy(base), key, candidate))
        except Exception:  # noqa: BLE001 (any refusal: try the next value)
            continue
    return None


KEYS = leaf_keys(Config)


def test_every_key_is_read_by_a_slice_or_the_planner():
    unclaimed = [k for k in KEYS if not slice_rules(k) and not holds(sorted(PLANNER_KEYS), k)]
    assert not unclaimed, f"config keys no rule's slice holds and the planner does not read: {unclaimed}"
    both = {k for k in KEYS if slice_rules(k) and holds(sorted(PLANNER_KEYS), k)}
    assert both == {k for k in KEYS if holds(sorted(BOTH), k)}


@pytest.mark.parametrize("key", KEYS)
def test_a_key_changes_exactly_the_slices_that_hold_it(key):
    changed = mutated(DEMO, key)
    if changed is None:
        pytest.skip(f"{key}: no simple allowed change")
    before, after = Plan(DEMO), Plan(changed)
    moved = {rule for rule in SLICES if before.slice(rule, dataset="rte") != after.slice(rule, dataset="rte")}
    assert moved == slice_rules(key)


def test_stage_functions_take_their_slice():
    """Each stage's entry point takes its rule's slice type, and no whole Config."""
    from flanpipe.stages import base_model, dedupe, evaluate, fingerprint, mix, pack, pool, templatize, train

    entries = {"pool": pool.write_pool, "templatize": templatize.templatize_dataset,
               "fingerprint": fingerprint.fingerprint_dataset, "dedupe": dedupe.dedupe,
               "mix": mix.build_mixture, "pack": pack.tokenize_and_pack, "train": train.train,
               "base_model": base_model.export_base_model, "evaluate": evaluate.evaluate_dataset}
    for rule, fn in entries.items():
        annotations = {p.annotation for p in inspect.signature(fn).parameters.values()}
        assert SLICES[rule].__name__ in annotations, (rule, annotations)
        assert "Config" not in annotations, rule


def test_each_rule_passes_its_slice_as_params():
    """rules/<rule>.smk hands the rule exactly ``PLAN.slice("<rule>")`` (or a get_* that returns it)."""
    for rule in SLICES:
        text = (REPO / "rules" / f"{rule}.smk").read_text()
        assert f'config=PLAN.slice("{rule}")' in text or f"config=get_{rule}_slice" in text, rule


def test_the_docs_list_each_rules_slice():
    """docs/config.md's table of slices is the code's."""
    text = (REPO / "docs/config.md").read_text()
    for rule, cls in SLICES.items():
        assert f"| `{rule}` | {', '.join(f'`{p}`' for p in cls.paths())} |" in text, rule
