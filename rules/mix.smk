# Stage 3c, cap and mix: one mixture per held-out cluster plus `all`; then the DuckDB catalog.
from flanpipe.mix import STAGE_VERSION as MIX_VERSION


rule mix:
    input:
        unpack(get_mixture_inputs),
    output:
        shards=directory("data/mixtures/{mixture}/shards"),
        stats="data/mixtures/{mixture}/stats.parquet",
        contamination="data/mixtures/{mixture}/contamination.parquet",
        rows="data/mixtures/{mixture}/rows.parquet",
        manifest="data/mixtures/{mixture}/manifest.json",
    log:
        "logs/mix/{mixture}.log",
    benchmark:
        "benchmarks/mix/{mixture}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        datasets=get_mixture_dataset_names,
        heldout=get_mixture_heldout,
        config=CFG.model_dump(
            include={
                "seed": True,
                "dedup": {"pool_factor"},
                "mix": True,
                "datasets": True,
                "tokenize": {"max_input_tokens", "max_target_tokens"},
                "train": {"steps", "tokens_per_batch"},
            }
        ),
        stage_version=MIX_VERSION,
    script:
        "../workflow_scripts/mix.py"


rule catalog:
    input:
        unpack(get_catalog_inputs),
    output:
        "data/catalog.duckdb",
    log:
        "logs/catalog.log",
    benchmark:
        "benchmarks/catalog.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        datasets=DATASETS,
        mixtures=CFG.mixtures(),
    script:
        "../workflow_scripts/catalog.py"
