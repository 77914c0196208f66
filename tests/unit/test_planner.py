"""The planner's mixtures: which models a config trains, and which ablation point reuses which."""

from __future__ import annotations

import yaml

from flanpipe.core.config import parse_config
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO


def plan_of(**cfg) -> Plan:
    return Plan(parse_config(cfg))


def test_the_demo_trains_what_it_did_and_scores_the_instructions_point_once():
    demo = Plan(parse_config(yaml.safe_load((REPO / "config/config.yaml").read_text())))
    assert demo.mixtures() == ["nli", "commonsense", "all"]
    assert demo.ablation_mixtures() == ["clusters_1", "format_no_template"]
    points = demo.ablation_points("format")
    assert ("instructions", "rte", "results/ablations/clusters/1/rte.json") in points
    assert ("no_template", "rte", "results/ablations/format/no_template/rte.json") in points


def test_a_point_with_a_held_out_models_training_set_is_that_model():
    """Held out: commonsense (COPA). Its model trains on BoolQ, WinoGrande and ARC-Easy, the three
    clusters the ablations add, so their last point is that model; one cluster fewer is not."""
    abl = {"enabled": True, "heldout": ["commonsense"], "kinds": ["clusters", "format"],
           "clusters": ["reading_comprehension", "coreference", "closed_book_qa"]}
    plan = plan_of(datasets=["boolq", "copa", "winogrande", "arc_easy"], heldout_clusters=["commonsense"],
                   all_model=False, ablations=abl)
    assert plan.mixtures() == ["commonsense"]
    assert plan.model_of("clusters_3") == "commonsense" and plan.model_of("clusters_2") == "clusters_2"
    assert plan.ablation_mixtures() == ["clusters_1", "clusters_2", "format_no_template",
                                        "format_dataset_name"]
    assert [p for p in plan.ablation_points("clusters") if p[0] == "3"] == [
        ("3", "copa", "results/eval/commonsense/copa.json")]
    assert [p for p in plan.ablation_points("format") if p[0] == "instructions"] == [
        ("instructions", "copa", "results/eval/commonsense/copa.json")]
    # another held-out set is another training set (decontaminated against other eval data)
    other = plan_of(datasets=["boolq", "copa", "winogrande", "arc_easy"],
                    heldout_clusters=["commonsense", "closed_book_qa"],
                    ablations={**abl, "heldout": ["commonsense", "closed_book_qa"],
                               "clusters": ["reading_comprehension", "coreference"]})
    assert other.model_of("clusters_2") == "clusters_2"


def test_the_format_ablation_alone_still_trains_its_instructions_point():
    abl = {"enabled": True, "heldout": ["nli"], "kinds": ["format"], "clusters": ["sentiment"],
           "formats": ["instructions", "dataset_name"]}
    plan = plan_of(datasets=["rte", "sst2", "copa"], heldout_clusters=["commonsense"], ablations=abl)
    assert plan.ablation_mixtures() == ["format_dataset_name", "clusters_1"]
    assert plan.ablation_points("clusters") == []
    assert plan.ablation_points("format") == [
        ("instructions", "rte", "results/ablations/format/instructions/rte.json"),
        ("dataset_name", "rte", "results/ablations/format/dataset_name/rte.json")]
    assert plan.format_mixture("instructions") == "clusters_1"


def test_training_seeds_plan_a_model_and_a_result_per_seed_on_one_mixture():
    """experiment.seeds: every main mixture trained per seed on the same data (its mixture and packed
    folders, and every other slice, are the run's), with the seed in the train slice alone; the
    headline seed's results stand for the model where one model is read (the ablation's reused point)."""
    abl = {"enabled": True, "heldout": ["commonsense"], "kinds": ["clusters"],
           "clusters": ["reading_comprehension", "coreference", "closed_book_qa"]}
    data = dict(datasets=["boolq", "copa", "winogrande", "arc_easy"], heldout_clusters=["commonsense"],
                ablations=abl)
    plain, seeded = plan_of(**data), plan_of(**data, experiment={"seeds": [5, 3]})
    assert seeded.model_folders() == ["models/commonsense/seed-5", "models/commonsense/seed-3",
                                      "models/all/seed-5", "models/all/seed-3"]
    assert plain.model_folders() == ["models/commonsense", "models/all"]
    assert [(s, path) for s, _, _, path in seeded.seed_results()] == [
        (5, "results/eval/commonsense/seed-5/copa.json"), (3, "results/eval/commonsense/seed-3/copa.json")]
    assert plain.seed_results() == []
    assert seeded.eval_results() == ["results/eval/commonsense/seed-5/copa.json",
                                     "results/eval/base/copa.json"]
    assert ("3", "copa", "results/eval/commonsense/seed-5/copa.json") in seeded.ablation_points("clusters")
    assert seeded.all_mixtures() == plain.all_mixtures()
    for rule in ("mix", "pack", "tokenizer", "evaluate", "base_model", "train"):
        assert seeded.slice(rule) == plain.slice(rule), rule
    assert seeded.slice("train", seed=3) == {**plain.slice("train"), "seed": 3}
