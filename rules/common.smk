# Helpers shared by every stage file: the dataset list and input functions (get_*).
from argparse import Namespace

from flanpipe.workflow.planner import Plan
from flanpipe.core.text.templates import templates_digest

PLAN = Plan(CFG)
DATASETS = PLAN.dataset_names()


def get_raw_outputs():
    """Every download output (a missing one reruns that dataset's download)."""
    return expand(
        "data/raw/{dataset}/{file}",
        dataset=DATASETS,
        file=["train.parquet", "eval.parquet", "rejected.parquet", "manifest.json"],
    )


def get_download_slice(wildcards):
    """The download slice of the config: the dataset's source and the seed."""
    return PLAN.slice("download", dataset=wildcards.dataset)


def get_pool_slice(wildcards):
    """The pool slice of one dataset: its submixture's cap sizes its pool."""
    return PLAN.slice("pool", dataset=wildcards.dataset)


def get_templates_digest(wildcards):
    """A digest of the dataset's templates: editing them reruns the dataset's templatize."""
    return templates_digest(
        wildcards.dataset, CFG.templatize.bank, CFG.templatize.flan_root
    )


def get_templatized():
    return expand("data/templatized/{dataset}.parquet", dataset=DATASETS)


def get_fingerprints():
    return expand("data/dedup/fingerprints/{dataset}.parquet", dataset=DATASETS)


def get_dropped():
    return expand("data/dedup/{dataset}.dropped.parquet", dataset=DATASETS)


def get_heldout_ngrams(wildcards):
    """The eval n-gram sets a dataset's train rows are checked against: every held-out dataset's."""
    return expand(
        "data/decontam/ngrams/{dataset}.parquet", dataset=PLAN.heldout_datasets()
    )


def get_templatize_slice(wildcards):
    """The templatize slice of one dataset (its template mix)."""
    return PLAN.slice("templatize", dataset=wildcards.dataset)


def get_templatize_exemplar_inputs(wildcards):
    """Where a dataset's template mix has few-shot rows: its decontamination matches, so no
    exemplar is a contaminated row."""
    if PLAN.slice("templatize", dataset=wildcards.dataset)["few_shot"] is None:
        return {}
    return {"decontam": f"data/decontam/{wildcards.dataset}.parquet"}


def get_templatize_format_slice(wildcards):
    """The templatize slice in another instruction format (the format ablation)."""
    return PLAN.slice("templatize", dataset=wildcards.dataset, format=wildcards.format)


def get_mixture_dataset_names(wildcards):
    return PLAN.mixture_datasets(wildcards.mixture)


def get_mixture_heldout(wildcards):
    """The clusters a mixture is decontaminated against (and kept clear of)."""
    return PLAN.heldout_for(wildcards.mixture)


def get_templatized_of(mixture, names):
    """A mixture's templatized inputs: the run's format, or the format ablation's own."""
    return expand(
        "{folder}/{dataset}.parquet",
        folder=PLAN.templatized_folder(mixture),
        dataset=names,
    )


def get_mixture_inputs(wildcards):
    """The upstream files of every dataset the mixture trains on, by kind."""
    names = PLAN.mixture_datasets(wildcards.mixture)
    return {
        "templatized": get_templatized_of(wildcards.mixture, names),
        "fingerprints": expand(
            "data/dedup/fingerprints/{dataset}.parquet", dataset=names
        ),
        "dropped": expand("data/dedup/{dataset}.dropped.parquet", dataset=names),
        "decontam": expand("data/decontam/{dataset}.parquet", dataset=names),
        "manifest": expand("data/raw/{dataset}/manifest.json", dataset=names),
        # every dataset's: a twin in a dataset the mixture leaves out does not count here
        "all_dropped": get_dropped(),
    }


def get_mixtures():
    return expand(
        "data/mixtures/{mixture}/{file}",
        mixture=PLAN.mixtures(),
        file=[
            "manifest.json",
            "stats.parquet",
            "contamination.parquet",
            "rows.parquet",
        ],
    )


def get_mixture_name(wildcards):
    return wildcards.mixture


def get_tokenizer_source(wildcards):
    """What the tokenizer is made from: a given .model file, or a mixture's shards (`all` for the
    shared tokenizer)."""
    return PLAN.tokenizer_source(wildcards.get("mixture", "all"))


def get_tokenizer(wildcards):
    """The tokenizer a mixture is packed with: a checkpoint's own (or a given tokenizer.json),
    read in place; else the shared one, or the mixture's own."""
    return PLAN.tokenizer_path(wildcards.mixture)


def get_train_slice(wildcards):
    """The train rule's slice: seed and train, and with train.eval_every the mixture's curve."""
    return PLAN.slice("train", mixture=wildcards.mixture)


def get_train_eval_splits(wildcards):
    """The raw eval splits a run scores while it trains (train.eval_every): its curve's held-out
    datasets and its validation datasets; none without."""
    if PLAN.cfg.train.eval_every is None:
        return []
    heldout, validation = PLAN.curve_datasets(wildcards.mixture)
    return expand("data/raw/{dataset}/eval.parquet", dataset=[*heldout, *validation])


def get_base_tokenizer(wildcards):
    """The base model's tokenizer: the shared one (or the `all` mixture's, when not shared)."""
    return get_tokenizer(Namespace(mixture="all"))


def get_packed():
    return expand(
        "data/packed/{mixture}/{file}",
        mixture=PLAN.mixtures(),
        file=["manifest.json", "index.parquet", "stats.parquet", "packing.parquet"],
    )


def get_models():
    """Every main mixture's model: models/{mixture}/, or models/{mixture}/seed-{seed}/ per seed of
    experiment.seeds."""
    return expand(
        "{folder}/{file}",
        folder=PLAN.model_folders(),
        file=["run.json", "metrics.csv", "loss.png"],
    )


def get_train_seed_slice(wildcards):
    """The train slice of one training seed (experiment.seeds): the mixture's, with that seed."""
    return PLAN.slice("train", mixture=wildcards.mixture, seed=int(wildcards.seed))


def get_catalog_inputs(wildcards):
    return {
        "raw": get_raw_outputs(),
        "templatized": get_templatized(),
        "dropped": get_dropped(),
        "decontam": expand("data/decontam/{dataset}.parquet", dataset=DATASETS),
        "mixtures": get_mixtures(),
        "shards": expand("data/mixtures/{mixture}/shards", mixture=PLAN.mixtures()),
        "packed": get_packed(),
        "packed_shards": expand(
            "data/packed/{mixture}/shards", mixture=PLAN.mixtures()
        ),
    }


# --- evaluate and report -------------------------------------------------------------------------


def get_eval_model_name(wildcards):
    """The model a result file is about: a held-out mixture, `base`, or an ablation's mixture."""
    if "k" in wildcards.keys():
        return PLAN.model_of(f"clusters_{wildcards.k}")
    if "format" in wildcards.keys():
        return PLAN.format_mixture(wildcards.format)
    return wildcards.get("heldout", "base")


def get_eval_inputs(wildcards):
    """The model folder, the dataset's raw eval split, its pool (the train rows few-shot exemplars
    come from) and the contamination counts of the model's mixture (none for the base model).
    """
    model = get_eval_model_name(wildcards)
    seed = int(wildcards.seed) if "seed" in wildcards.keys() else None
    inputs = {
        "model": f"{PLAN.model_folder(model, seed)}/hf",
        "eval": f"data/raw/{wildcards.dataset}/eval.parquet",
        "train": f"data/pool/{wildcards.dataset}.parquet",
    }
    if model != "base":
        inputs["contamination"] = f"data/mixtures/{model}/contamination.parquet"
    return inputs


def get_eval_results(few_shot=False):
    """Every held-out cluster's result files (tuned, and base if configured)."""
    return PLAN.eval_results(few_shot)


def get_seed_results():
    """Every held-out model's zero-shot result under each training seed (none without seeds)."""
    return [path for _, _, _, path in PLAN.seed_results()]


def get_ablation_results(kind):
    """The result files of one ablation (`clusters` or `format`)."""
    return PLAN.ablation_results(kind)


def get_report_inputs(wildcards):
    return {
        "zero_shot": get_eval_results(few_shot=False),
        "few_shot": get_eval_results(few_shot=True),
        "ablation_clusters": get_ablation_results("clusters"),
        "ablation_format": get_ablation_results("format"),
        "seeds": get_seed_results(),
        "catalog": "data/catalog.duckdb",
        "models": expand("{folder}/metrics.csv", folder=PLAN.model_folders()),
    }
