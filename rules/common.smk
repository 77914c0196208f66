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
