"""Reruns by construction, seen by Snakemake itself: on the finished demo run, changing one config key
makes `snakemake -n` schedule exactly the jobs of the rules whose slice holds the key, and the jobs
downstream of them; the same jobs `--forcerun <those rules>` schedules with the config unchanged."""

from __future__ import annotations

import re

import pytest
import yaml

from flanpipe.core.config import SLICES
from tests.conftest import REPO, run_snakemake
from tests.unit.test_slices import DEMO, KEYS, PLANNER_KEYS, holds, mutated, slice_rules

pytestmark = pytest.mark.e2e

# The rules that run a stage's code under another name (`use rule X as Y`).
VARIANTS = {
    "templatize": ["templatize", "templatize_format"],
    "tokenizer": ["tokenizer", "tokenizer_per_mixture"],
    "evaluate": ["evaluate", "evaluate_few_shot", "evaluate_base", "evaluate_base_few_shot",
                 "evaluate_ablation_clusters", "evaluate_ablation_format"],
}


def representatives() -> list[str]:
    """One key for each set of rules a key can rerun (a slice's keys all rerun the same rules), of
    the keys that change no job's existence."""
    seen, keys = set(), []
    for key in KEYS:
        rules = frozenset(slice_rules(key))
        if not rules or holds(sorted(PLANNER_KEYS), key) or rules in seen or mutated(DEMO, key) is None:
            continue
        seen.add(rules)
        keys.append(key)
    return keys


def scheduled(workdir, *args, config_file=None) -> dict[str, int]:
    proc = run_snakemake(workdir, "all", "-n", *args, config_file=config_file)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text[text.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.mark.parametrize("key", representatives())
def test_a_changed_key_reruns_its_rules_and_what_follows(demo_run, tmp_path, key):
    changed = mutated(DEMO, key)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(changed.model_dump(mode="json")))
    rules = [v for rule in sorted(slice_rules(key)) for v in VARIANTS.get(rule, [rule])]
    expected = scheduled(demo_run, "--forcerun", *rules, config_file=REPO / "config/config.yaml")
    got = scheduled(demo_run, config_file=config)
    assert expected, key
    assert got == expected, (key, rules)


def test_every_slice_is_exercised():
    """The representatives cover every rule that has a slice (but the report: its keys are the
    ablations' points, which also decide which jobs exist)."""
    covered = {rule for key in representatives() for rule in slice_rules(key)}
    assert covered == set(SLICES) - {"report"}  # the report's keys (the ablations') shape the DAG too
