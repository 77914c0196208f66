"""Reruns by construction, seen by Snakemake itself: on the finished demo run, changing one config key
makes `snakemake -n` schedule exactly the jobs of the rules whose slice holds the key, and the jobs
downstream of them; the same jobs `--forcerun <those rules>` schedules with the config unchanged."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from flanpipe.workflow.planner import SLICES
from tests.conftest import run_snakemake
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
    """A key for each rule that has a slice, held by that rule alone where one is (the rest are
    held by several rules: one key for each such set), of the keys that change no job's existence.
    A slice's keys all rerun the same rules (the unit test `test_slices` checks every key against
    every slice), so one key stands for its slice."""
    usable = [k for k in KEYS if slice_rules(k) and not holds(sorted(PLANNER_KEYS), k)
              and mutated(DEMO, k) is not None]
    keys, covered = [], set()
    for key in usable:  # the rules' own keys first
        rules = slice_rules(key)
        if len(rules) == 1 and not rules <= covered:
            keys.append(key)
            covered |= rules
    for key in usable:  # then keys shared by rules that have no key of their own
        rules = slice_rules(key)
        if not rules <= covered:
            keys.append(key)
            covered |= rules
    return keys


def job_graph(workdir) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Snakemake's own job graph of the run (``--forceall --dag``): each job's rule, and its jobs
    downstream (the jobs that take its outputs)."""
    proc = run_snakemake(workdir, "--forceall", "--dag", "dot", "--", "all")
    rule = {m[1]: m[2] for m in re.finditer(r'^\s*(\d+)\[label = "(\w+)', proc.stdout, re.M)}
    after: dict[str, set[str]] = {job: set() for job in rule}
    for m in re.finditer(r"^\s*(\d+) -> (\d+)", proc.stdout, re.M):
        after[m[1]].add(m[2])
    return rule, after


def downstream_counts(rule: dict[str, str], after: dict[str, set[str]], rules: set[str]) -> dict[str, int]:
    """Jobs per rule of ``rules``' jobs and everything downstream of them."""
    todo = [job for job, r in rule.items() if r in rules]
    seen = set(todo)
    while todo:
        for nxt in after[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return dict(Counter(rule[job] for job in seen))


def scheduled(workdir, config_file) -> dict[str, int]:
    """The jobs per rule ``snakemake -n`` schedules on the finished run with ``config_file``."""
    proc = run_snakemake(workdir, "all", "-n", "--nolock", config_file=config_file)  # two at a time
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text[text.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def graph(demo_run):
    return job_graph(demo_run)


def test_a_changed_key_reruns_its_rules_and_what_follows(demo_run, graph, tmp_path):
    """One dry run per representative key, two at a time (each is one single-threaded Snakemake)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(key: str) -> tuple[str, dict, dict]:
        config = tmp_path / f"{key}.yaml"
        config.write_text(yaml.safe_dump(mutated(DEMO, key).model_dump(mode="json")))
        rules = {v for rule in slice_rules(key) for v in VARIANTS.get(rule, [rule])}
        return key, downstream_counts(*graph, rules), scheduled(demo_run, config)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(check, representatives()))
    for key, expected, got in results:
        assert expected, key
        assert got == expected, (key, sorted(slice_rules(key)))


def test_an_unchanged_config_reruns_nothing(demo_run, tmp_path):
    """The control: the same config written anew schedules no job."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(DEMO.model_dump(mode="json")))
    assert scheduled(demo_run, config) == {}


def test_every_slice_is_exercised():
    """The representatives cover every rule that has a slice (the report's through
    `evaluate.bootstrap`, which it shares with evaluate: its other keys, the ablations' points, also
    decide which jobs exist)."""
    covered = {rule for key in representatives() for rule in slice_rules(key)}
    assert covered == set(SLICES)
