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


def get_catalog_inputs(wildcards):
    return {
        "raw": get_raw_outputs(),
        "templatized": get_templatized(),
        "dropped": get_dropped(),
        "decontam": expand("data/decontam/{dataset}.parquet", dataset=DATASETS),
        "mixtures": get_mixtures(),
        "shards": expand("data/mixtures/{mixture}/shards", mixture=CFG.mixtures()),
    }
