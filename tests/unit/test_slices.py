"""Reruns by construction: each rule's params are its stage's config slice, and a slice holds the
keys the stage reads. Every config key is either in some rule's slice or shapes the workflow itself
(the planner's keys); changing a key changes exactly the slices that hold it."""

from __future__ import annotations

import copy
import inspect
import typing

import pytest
from pydantic import BaseModel

from flanpipe.core.config import Config, ConfigError, parse_config
from flanpipe.core.config.registry import embedded_datasets
from flanpipe.workflow.planner import SLICES, Plan
from tests.conftest import REPO

FLAN_FIXTURE = REPO / "tests/data/flan"

# Keys that decide which jobs exist (read by the planner, rules/common.smk): a change adds or removes
# jobs rather than rerunning them. The few that are also in a slice are listed in BOTH.
PLANNER_KEYS = {
    "datasets", "heldout_clusters", "templatize.format", "tokenize.tokenizer.source",
    "tokenize.tokenizer.path", "tokenize.tokenizer.shared", "train.model.source", "train.model.path",
    "evaluate.few_shot", "evaluate.base_model", "ablations.enabled", "ablations.heldout",
    "ablations.clusters", "ablations.formats", "ablations.kinds", "all_model",
    # the registry a config names, and the sources that resolve into a dataset's download slice
    # (a cot dataset's path under the FLAN checkout) or leave an absent dataset out of the plan
    "registry.extra", "download.flan_root", "download.optional",
    # one training per seed: the train slice's `seed` is each training's (Plan.slice("train", seed=...))
    "experiment.seeds"}
BOTH = {"templatize.format", "tokenize.tokenizer.source", "tokenize.tokenizer.path",
        "tokenize.tokenizer.shared", "train.model.source", "train.model.path", "evaluate.few_shot",
        "evaluate.base_model", "ablations.clusters", "ablations.formats"}
DEMO = parse_config(__import__("yaml").safe_load((REPO / "config/config.yaml").read_text()))


def _section(annotation) -> type[BaseModel] | None:
    """The config section a field's annotation holds (a model, or an optional one), or None for a
    leaf (a dict of models is a leaf: its keys are the user's)."""
    if typing.get_origin(annotation) is dict:
        return None
    inner = [a for a in typing.get_args(annotation) if inspect.isclass(a)] or [annotation]
    return next((a for a in inner if inspect.isclass(a) and issubclass(a, BaseModel)), None)


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of a config model, as a dotted path (a section's own fields recursively)."""
    out = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            out += leaf_keys(section, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def annotation(key: str):
    """The type annotation of a dotted config key: ``annotation("train.optimizer")`` is
    ``Literal['adafactor', 'adamw']``."""
    model: type[BaseModel] = Config
    *sections, name = key.split(".")
    for section in sections:
        model = _section(model.model_fields[section].annotation)
    return model.model_fields[name].annotation


def literal_values(annotation) -> list:
    """The values a ``Literal`` allows, also inside a union: ``['auto']`` for
    ``Literal['auto'] | list[str]``; [] where there is no ``Literal``."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [value for arg in typing.get_args(annotation) for value in literal_values(arg)]


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


# The change tried for each key whose type suggests none (containers), or none that changes what
# the key means: the dataset list (of its Literal values, 'all' is refused and 'embedded' is the
# demo's; cola is in cluster misc, neither held out nor ablated, so the run stays valid without it),
# tokenize.format ('eos' is what 'auto' means for a model trained from scratch), and the ablation's
# clusters (dropping the last of one cluster leaves none, which is refused: translation has a demo
# dataset, is not held out, and differs from the demo's list of one or two clusters).
CHANGES = {
    "datasets": [d for d in embedded_datasets() if d != "cola"],
    "tokenize.format": "text",
    "ablations.clusters": ["translation"],
    "download.sources": {"rte": {"kind": "local", "path": "/data/rte"}},
    "templatize.mix.overrides": {"rte": {"zs_opt": 0.5, "fs_opt": 0.5}},
    "evaluate.max_templates_by_dataset": {"rte": 2},
    "mix.submixtures": {"flan2021": {}, "mine": {"datasets": ["rte"], "cap": 64}},  # pool: the largest cap
    "train.model.hf_config": {"rope_theta": 1000.0},
    "train.adam_betas": [0.8, 0.99],
    "train.adapter.target_modules": ["q_proj", "v_proj"],
    "templatize.flan_root": str(FLAN_FIXTURE / "copy"),
    "registry.extra": ["cot"],
    "train.val_datasets": ["sst2"],
    "experiment.seeds": [1, 2],
}
# Keys that a slice reads only through another key, changed on the demo config with that key set:
# templatize reads rte's submixture only to look up its rates in `templatize.mix.overrides`.
# The FLAN checkout's path is read only with a FLAN bank (the tests' own checkout, in FLAN's format).
# train.select's best_val chooses among the curve's points: it needs train.eval_every.
SETTING = {"train.select": {"train.eval_every": 2},
           "mix.submixtures": {"templatize.mix.overrides": {"flan2021": {"zs_opt": 0.5, "fs_opt": 0.5}}},
           "templatize.flan_root": {"templatize.bank": "flan2021", "templatize.flan_root": str(FLAN_FIXTURE)}}
# The keys no value of which the config allows while every other key keeps its demo value: each is
# read only together with another key, which would have to change with it.
NO_SINGLE_CHANGE = {
    "download.local_root": "read with download.default_source 'local' only",
    "templatize.mix.zs_opt": "the four rates must sum to 1",
    "templatize.mix.zs_noopt": "the four rates must sum to 1",
    "templatize.mix.fs_opt": "the four rates must sum to 1",
    "templatize.mix.fs_noopt": "the four rates must sum to 1",
    "tokenize.tokenizer.path": "read with tokenize.tokenizer.source 'file' only",
    "tokenize.model_kind": "'encoder_decoder' needs an encoder-decoder train.model.architecture",
    "train.model.source": "'pretrained' needs train.model.path",
    "train.model.path": "read with train.model.source 'pretrained' only",
    "templatize.bank": "a FLAN bank needs templatize.flan_root, which is refused with flanpipe's bank",
}


def candidates(key: str, value) -> list:
    """The values tried for ``key``, in order: its entry in ``CHANGES``, else values of its type
    (for a string, the other values of its ``Literal``)."""
    if key in CHANGES:
        return [CHANGES[key]]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    if isinstance(value, float):
        return [value * 0.5, value * 1.5, value + 0.1]
    if isinstance(value, str):
        return literal_values(annotation(key)) or [value + "|"]
    if value is None:
        return [2, 128, 0.5, True, "x"]
    if isinstance(value, list) and value:
        return [value[:-1]]
    raise AssertionError(f"{key}: no change to try for {value!r}; give it one in CHANGES")


def with_values(cfg: Config, values: dict[str, object]) -> Config:
    """``cfg`` with each dotted key of ``values`` set to its value."""
    data = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set(data, key, value)
    return parse_config(data)


def mutated(cfg: Config, key: str) -> Config | None:
    """``cfg`` with ``key`` changed to the first of its :func:`candidates` that the config allows;
    None where it refuses them all (with a ``ConfigError``: any other error is raised)."""
    base = cfg.model_dump(mode="json")
    value = _get(base, key)
    for candidate in candidates(key, value):
        if candidate == value:
            continue
        try:
            return parse_config(_set(copy.deepcopy(base), key, candidate))
        except ConfigError:
            continue
    return None


KEYS = leaf_keys(Config)


def test_every_key_is_read_by_a_slice_or_the_planner():
    unclaimed = [k for k in KEYS if not slice_rules(k) and not holds(sorted(PLANNER_KEYS), k)]
    assert not unclaimed, f"config keys no rule's slice holds and the planner does not read: {unclaimed}"
    both = {k for k in KEYS if slice_rules(k) and holds(sorted(PLANNER_KEYS), k)}
    assert both == {k for k in KEYS if holds(sorted(BOTH), k)}


def test_the_keys_without_an_allowed_change_are_the_listed_ones():
    """Every other key can be changed alone, so a parsing regression that refuses an allowed value
    fails here (and in the key's own test below) instead of leaving the key unchecked."""
    unchangeable = {k for k in KEYS if mutated(with_values(DEMO, SETTING.get(k, {})), k) is None}
    assert unchangeable == set(NO_SINGLE_CHANGE)


@pytest.mark.parametrize("key", [k for k in KEYS if k not in NO_SINGLE_CHANGE])
def test_a_key_changes_exactly_the_slices_that_hold_it(key):
    base = with_values(DEMO, SETTING.get(key, {}))
    changed = mutated(base, key)
    tried = candidates(key, _get(base.model_dump(mode="json"), key))
    assert changed is not None, f"{key}: the config refuses every value tried: {tried}"
    before, after = Plan(base), Plan(changed)
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
