"""The typed config: defaults, errors that name the key and what is allowed, the JSON schema."""

import json
import re

import jsonschema
import pytest
import yaml

from flanpipe.core.config import Config, ConfigError, json_schema, json_schema_text, load_config, parse_config
from flanpipe.core.config.registry import embedded_datasets, load_registry
from flanpipe.workflow.planner import Plan


def test_embedded_default_parses(repo):
    cfg = load_config(repo / "config/config.yaml")
    assert cfg.dataset_names() == embedded_datasets()
    assert cfg.download.source_for("rte").kind == "embedded"


@pytest.mark.parametrize("data, key, allowed", [
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"seed": "abc"}, "seed", "valid integer"),
    ({"sed": 1}, "sed", "unknown key"),
    ({"datasets": ["rte", "nope"]}, "datasets", "registry names"),
    ({"datasets": "some"}, "datasets", "'embedded' or 'all'"),
    ({"heldout_clusters": ["astrology"]}, "heldout_clusters", "'nli'"),
    ({"download": {"default_source": "ftp"}}, "download.default_source",
     "'embedded', 'hub' or 'local'"),
    ({"download": {"sources": {"rte": {"kind": "ftp"}}}}, "download.sources.rte.kind",
     "'embedded', 'hub', 'local', 'cot', 'niv2' or 'flan_dump'"),
    ({"download": {"sources": {"rte": {"kind": "local"}}}}, "download.sources.rte",
     "needs 'path'"),
    ({"download": {"sources": {"nope": {"kind": "hub"}}}}, "download.sources", "unknown dataset"),
    ({"datasets": ["mnli"]}, "download.sources.mnli.kind", "no embedded demo data"),
])
def test_bad_value_names_key_and_allowed(data, key, allowed):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    msg = str(err.value)
    assert f"- {key}:" in msg, msg
    assert allowed in msg, msg


@pytest.mark.parametrize("old, new, expect", [
    ({"tokenize": {"layout": "encoder_decoder"}, "train": {"model": {"architecture": "t5"}}},
     {"tokenize": {"model_kind": "encoder_decoder"}, "train": {"model": {"architecture": "t5"}}},
     "tokenize.layout: renamed to tokenize.model_kind"),
    ({"evaluate": {"cross_layouts": False}}, {"evaluate": {"cross_formats": False}},
     "evaluate.cross_layouts: renamed to evaluate.cross_formats"),
    ({"dedup": {"exact": False}}, {"dedupe": {"exact": False}}, "dedup: renamed to dedupe"),
])
def test_an_old_key_is_refused_naming_its_new_key(old, new, expect):
    with pytest.raises(ConfigError) as err:
        parse_config(old)
    assert f"- {expect}" in str(err.value)
    # the same value under the new key is taken
    (section, values), = ((k, v) for k, v in new.items() if k != "train")
    (key, value), = values.items()
    default = getattr(getattr(parse_config({}), section), key)
    assert getattr(getattr(parse_config(new), section), key) == value != default


def test_hub_source_for_a_dataset_without_demo_data_is_fine():
    cfg = parse_config({"datasets": ["mnli"], "heldout_clusters": [], "download": {"default_source": "hub"}})
    assert cfg.dataset_names() == ["mnli"]


def test_committed_schema_is_the_generated_one(repo):
    assert (repo / "config/config.schema.json").read_text() == json_schema_text()


def test_schema_accepts_default_and_rejects_what_the_model_rejects(repo):
    default = yaml.safe_load((repo / "config/config.yaml").read_text())
    validator = jsonschema.Draft202012Validator(json_schema())
    validator.validate(default)
    for bad in [{"seed": -1}, {"sed": 1}, {"download": {"default_source": "ftp"}}]:
        assert list(validator.iter_errors(bad)), json.dumps(bad)


@pytest.mark.parametrize("data, expect", [
    ({"decontaminate": {"ngram": 10, "min_ngram": 12}},
     "decontaminate.min_ngram (12) must be <= decontaminate.ngram (10)"),
    ({"dedupe": {"near": {"num_perm": 16, "bands": 32}}},
     "dedupe.near.bands: 32 bands need at least as many permutations"),
    ({"dedupe": {"near": {"threshold": 1.5}}},
     "dedupe.near.threshold: Input should be less than or equal to 1"),
    ({"mix": {"cap": 0}}, "mix.cap: Input should be greater than or equal to 1 (got 0)"),
])
def test_stage3_values_are_checked_with_the_key_named(data, expect):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expect in str(err.value)


@pytest.mark.parametrize("data, expect", [
    ({"tokenize": {"tokenizer": {"source": "file"}}},
     "tokenize.tokenizer.path: source 'file' needs the path of a SentencePiece .model file, a "
     "tokenizer.json or a folder holding one"),
    ({"tokenize": {"tokenizer": {"path": "/x/spm.model"}}},
     "tokenize.tokenizer.path is only used with source 'file', not 'auto'"),
    ({"tokenize": {"tokenizer": {"vocab_size": 100}}},
     "tokenize.tokenizer.vocab_size: Input should be greater than or equal to 300 (got 100)"),
    ({"tokenize": {"model_kind": "prefix_lm"}},
     "tokenize.model_kind: Input should be 'decoder_only' or 'encoder_decoder' (got 'prefix_lm')"),
    ({"tokenize": {"packer": "first_fit"}},
     "tokenize.packer: Input should be 'best_fit', 'next_fit' or 'none'"),
    ({"tokenize": {"max_input_tokens": 65_000, "max_target_tokens": 1_000}},
     "a decoder-only row of max_input_tokens + max_target_tokens = 66000 tokens is too long"),
])
def test_stage4_values_are_checked_with_the_key_named(data, expect):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expect in str(err.value)


def test_mixtures_leave_out_the_heldout_and_excluded_clusters():
    cfg = parse_config({})
    reg = load_registry()
    assert Plan(cfg).mixtures() == ["nli", "commonsense", "closed_book_qa", "all"]
    assert Plan(cfg).mixture_datasets("all") == cfg.dataset_names()
    for m in cfg.heldout_clusters:
        kept = {reg.datasets[d].cluster for d in Plan(cfg).mixture_datasets(m)}
        assert kept and not kept & set(reg.excluded_clusters(m))


def test_ablation_mixtures_follow_the_cluster_order():
    cfg = parse_config({"ablations": {"enabled": True, "heldout": ["nli"],
                                      "clusters": ["sentiment", "summarization"],
                                      "formats": ["instructions", "no_template"]}})
    assert Plan(cfg).ablation_mixtures() == ["clusters_1", "clusters_2", "format_no_template"]
    reg = load_registry()
    assert {reg.datasets[d].cluster for d in Plan(cfg).mixture_datasets("clusters_1")} == {"sentiment"}
    assert {reg.datasets[d].cluster for d in Plan(cfg).mixture_datasets("format_no_template")} == {
        "sentiment", "summarization"}
    assert Plan(cfg).format_mixture("instructions") == "clusters_2"  # reused, not trained twice
    assert Plan(cfg).mixture_format("format_no_template") == "no_template"
    assert Plan(cfg).heldout_for("clusters_2") == ["nli"]
    assert Plan(parse_config({"ablations": {"enabled": False}})).ablation_mixtures() == []


@pytest.mark.parametrize("ablations, message", [
    ({"clusters": ["nli"], "enabled": True}, "ablations.clusters: ['nli'] are held out"),
    ({"clusters": ["paraphrase"]}, "ablations.clusters: ['paraphrase'] are held out"),  # excluded with nli
    ({"clusters": ["sentiment", "sentiment"]}, "ablations.clusters: a cluster is listed twice"),
    ({"heldout": ["physics"]}, "ablations.heldout: unknown cluster(s) ['physics']"),
    ({"formats": ["prose"]}, "ablations.formats.0: Input should be 'instructions'"),
])
def test_bad_ablations_name_the_key(ablations, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"ablations": ablations})
    assert message in str(err.value)


def test_evaluate_values_are_checked():
    with pytest.raises(ConfigError, match="evaluate.normalization: Input should be 'sum', 'per_token', "
                                          "'per_char' or 'pmi'"):
        parse_config({"evaluate": {"normalization": "max"}})
    with pytest.raises(ConfigError, match="evaluate.max_examples: Input should be greater than or equal"):
        parse_config({"evaluate": {"max_examples": 0}})


def test_ablations_need_data_in_their_clusters():
    ablations = {"enabled": True, "heldout": ["nli", "commonsense"], "clusters": ["sentiment"]}
    with pytest.raises(ConfigError, match=r"the run has no dataset in cluster\(s\) \['commonsense'"):
        parse_config({"datasets": ["rte", "sst2"], "heldout_clusters": ["nli"], "ablations": ablations})


@pytest.mark.parametrize("data, key", [
    ({"train": {"steps": "10"}}, "train.steps"),
    ({"train": {"steps": True}}, "train.steps"),
    ({"train": {"steps": 10.0}}, "train.steps"),
    ({"seed": "7"}, "seed"),
    ({"mix": {"cap": False}}, "mix.cap"),
    ({"evaluate": {"generation": {"temperature": float("inf")}}}, "evaluate.generation.temperature"),
    ({"evaluate": {"generation": {"temperature": "0.5"}}}, "evaluate.generation.temperature"),
    ({"train": {"lr": float("nan")}}, "train.lr"),
    ({"train": {"adam_betas": [0.9, float("inf")]}}, "train.adam_betas"),
])
def test_numbers_are_strict_and_finite(data, key):
    with pytest.raises(ConfigError, match=rf"- {re.escape(key)}"):
        parse_config(data)


def test_an_infinite_mixing_temperature_means_equal_rates_and_is_allowed():
    assert parse_config({"mix": {"temperature": float("inf")}}).mix.temperature == float("inf")
    assert parse_config({"train": {"lr": 1}}).train.lr == 1.0  # an int is a fine float


def test_a_heldout_cluster_without_a_dataset_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"heldout_clusters: 'commonsense' has no dataset"):
        parse_config({"datasets": ["rte", "sst2"], "heldout_clusters": ["nli", "commonsense"]})


def test_a_mixture_without_a_dataset_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"heldout_clusters: holding out 'nli'.*no dataset to train on"):
        parse_config({"datasets": ["rte", "mrpc"], "heldout_clusters": ["nli"]})


def test_a_few_shot_budget_past_the_input_budget_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"templatize.few_shot.max_tokens \(600\) exceeds "
                                          r"tokenize.max_input_tokens \(512\)"):
        parse_config({"templatize": {"few_shot": {"max_tokens": 600}}, "tokenize": {"max_input_tokens": 512}})
    assert parse_config({"templatize": {"few_shot": {"max_tokens": 512}},
                         "tokenize": {"max_input_tokens": 512}}).templatize.few_shot.max_tokens == 512


@pytest.mark.parametrize("data, expect", [
    ({"train": {"model": {"architecture": "t5"}}},
     "tokenize.model_kind: 'decoder_only', but train.model.architecture (t5) is an encoder-decoder, which "
     "trains on 'encoder_decoder' rows; allowed: tokenize.model_kind: encoder_decoder"),
    ({"tokenize": {"model_kind": "encoder_decoder"}},
     "tokenize.model_kind: 'encoder_decoder', but train.model.architecture (llama) is a decoder-only model, "
     "which trains on 'decoder_only' rows; allowed: tokenize.model_kind: decoder_only"),
])
def test_the_model_kind_follows_the_architecture_naming_both_keys(data, expect):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expect in str(err.value)
    model = {"architecture": "mt5"}
    assert parse_config({"tokenize": {"model_kind": "encoder_decoder"}, "train": {"model": model}})


@pytest.mark.parametrize("encoder_decoder", [True, False])
def test_the_model_kind_follows_a_pretrained_checkpoint_naming_both_keys(encoder_decoder, tmp_path):
    """A checkpoint folder's config.json says what it is (T5's `is_encoder_decoder: true`)."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5" if encoder_decoder else "llama",
                                                      "is_encoder_decoder": encoder_decoder}))
    model = {"source": "pretrained", "path": str(tmp_path)}
    kinds = ("encoder_decoder", "decoder_only")
    right, wrong = kinds if encoder_decoder else kinds[::-1]
    expected = rf"tokenize.model_kind: '{wrong}', but train.model.path \({tmp_path}"
    with pytest.raises(ConfigError, match=expected):
        parse_config({"tokenize": {"model_kind": wrong}, "train": {"model": model}})
    cfg = parse_config({"tokenize": {"model_kind": right}, "train": {"model": model}})
    assert cfg.tokenize.model_kind == right


# Where a slice's field is wider than the key it holds, on purpose: a stage function called without
# the workflow (tests, benchmarks) may leave the input budget unset.
WIDENED = {("templatize", "max_input_tokens")}


def test_a_slices_fields_have_the_types_of_the_keys_they_hold():
    """Each slice field that holds a config key is typed exactly as that key is in its section (the
    types come from the sections, and are not restated): walked from the root Config's own fields."""
    from pydantic import BaseModel

    from flanpipe.workflow.planner import SLICES

    def field_at(path):
        model, info = Config, None
        for part in path.split("."):
            is_section = isinstance(model, type) and issubclass(model, BaseModel)
            if not is_section or part not in model.model_fields:
                return None  # a derived value (mix.largest_cap), not a field
            info = model.model_fields[part]
            model = info.annotation
        return info

    checked = 0
    for rule, cls in SLICES.items():
        for name, path in cls.KEYS.items():
            key = field_at(path)
            if key is None or (rule, name) in WIDENED:
                continue
            assert cls.model_fields[name].annotation == key.annotation, f"{rule}.{name} ({path})"
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize("seeds, key, allowed", [
    ([1, 2, 1], "experiment.seeds", "seed(s) [1] listed twice; allowed: distinct integers"),
    ([], "experiment.seeds", "allowed: null (one training with the root seed) or a list of distinct"),
    ([1, -3], "experiment.seeds", "seed(s) [-3] out of range; allowed: distinct integers in [0, 2**31 - 1]"),
    ([1, 2.5], "experiment.seeds.1", "valid integer"),
    ([1, "2"], "experiment.seeds.1", "valid integer"),
    ([True], "experiment.seeds.0", "valid integer"),
    (3, "experiment.seeds", "valid list"),
])
def test_bad_training_seeds_name_the_key_and_what_is_allowed(seeds, key, allowed):
    with pytest.raises(ConfigError) as err:
        parse_config({"experiment": {"seeds": seeds}})
    assert f"- {key}: " in str(err.value) and allowed in str(err.value), str(err.value)


def test_training_seeds_default_to_one_training_and_take_distinct_integers():
    assert parse_config({}).experiment.seeds is None
    assert parse_config({"experiment": {"seeds": [7, 0, 2**31 - 1]}}).experiment.seeds == [7, 0, 2**31 - 1]
