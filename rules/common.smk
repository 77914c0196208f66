# Helpers shared by every stage file: the dataset list and input functions (get_*).
DATASETS = CFG.dataset_names()


def get_raw_outputs():
    """Every download output (a missing one reruns that dataset's download)."""
    return expand(
        "data/raw/{dataset}/{file}",
        dataset=DATASETS,
        file=["train.parquet", "eval.parquet", "rejected.parquet", "manifest.json"],
    )


def get_download_source(wildcards):
    """The download source of one dataset (its slice of the config)."""
    return CFG.download.source_for(wildcards.dataset).model_dump()


def get_templatize_params(wildcards):
    """The templatize slice of the config, plus a digest of the dataset's templates."""
    return {
        "config": CFG.templatize.model_dump(),
        "templates": templates_digest(wildcards.dataset),
    }


def get_templatized():
    return expand("data/templatized/{dataset}.parquet", dataset=DATASETS)


def get_fingerprints():
    return expand("data/dedup/fingerprints/{dataset}.parquet", dataset=DATASETS)


def get_dropped():
    return expand("data/dedup/{dataset}.dropped.parquet", dataset=DATASETS)


def get_heldout_ngrams(wildcards):
    """The eval n-gram sets a dataset's train rows are checked against: every held-out dataset's."""
    return expand(
        "data/decontam/ngrams/{dataset}.parquet", dataset=CFG.heldout_datasets()
    )


def get_mixture_inputs(wildcards):
    """The upstream files of every dataset the mixture trains on, by kind."""
    names = CFG.mixture_datasets(wildcards.mixture)
    return {
        "templatized": expand("data/templatized/{dataset}.parquet", dataset=names),
        "fingerprints": expand(
            "data/dedup/fingerprints/{dataset}.parquet", dataset=names
        ),
        "dropped": expand("data/dedup/{dataset}.dropped.parquet", dataset=names),
        "decontam": expand("data/decontam/{dataset}.parquet", dataset=names),
        "manifest": expand("data/raw/{dataset}/manifest.json", dataset=names),
    }


def get_mixtures():
    return expand(
        "data/mixtures/{mixture}/{file}",
        mixture=CFG.mixtures(),
        file=["manifest.json", "stats.parquet", "contamination.parquet"],
    )


def get_mixture_name(wildcards):
    return wildcards.mixture


def get_tokenizer_source(wildcards):
    """What the tokenizer is made from: a given .model file, or a mixture's shards (`all` for the
    shared tokenizer)."""
    tokenizer = CFG.tokenize.tokenizer
    if tokenizer.source == "file":
        return {"model": tokenizer.path}
    mixture = wildcards.get("mixture", "all")
    return {
        "shards": expand("data/mixtures/{mixture}/shards", mixture=mixture)[0],
        "mixture_manifest": expand(
            "data/mixtures/{mixture}/manifest.json", mixture=mixture
        )[0],
    }


def get_tokenizer(wildcards):
    """The tokenizer a mixture is packed with: the shared one, or the mixture's own."""
    tokenizer = CFG.tokenize.tokenizer
    if tokenizer.shared or tokenizer.source == "file":
        return "models/tokenizer/spm.model"
    return expand("models/tokenizer/{mixture}/spm.model", mixture=wildcards.mixture)[0]


def get_packed():
    return expand(
        "data/packed/{mixture}/{file}",
        mixture=CFG.mixtures(),
        file=["manifest.json", "index.parquet", "stats.parquet", "packing.parquet"],
    )


def get_models():
    return expand(
        "models/{mixture}/{file}",
        mixture=CFG.mixtures(),
        file=["run.json", "metrics.csv", "loss.png"],
    )


def get_catalog_inputs(wildcards):
    return {
        "raw": get_raw_outputs(),
        "templatized": get_templatized(),
        "dropped": get_dropped(),
        "decontam": expand("data/decontam/{dataset}.parquet", dataset=DATASETS),
        "mixtures": get_mixtures(),
        "shards": expand("data/mixtures/{mixture}/shards", mixture=CFG.mixtures()),
        "packed": get_packed(),
        "packed_shards": expand("data/packed/{mixture}/shards", mixture=CFG.mixtures()),
    }
