# Stage 2, pool and templatize: one job per dataset; the train rows that can pass the cap, then
# instructions from the template bank.
from flanpipe.pool import STAGE_VERSION as POOL_VERSION
from flanpipe.templatize import STAGE_VERSION as TEMPLATIZE_VERSION
from flanpipe.templatize import templates_digest


# The dedup.pool_factor * mix.cap train rows of lowest seeded priority (every row with
# pool_factor: null): every stage after this one works on these and the eval split only.
rule pool:
    input:
        train="data/raw/{dataset}/train.parquet",
    output:
        "data/pool/{dataset}.parquet",
    log:
        "logs/pool/{dataset}.log",
    benchmark:
        "benchmarks/pool/{dataset}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        pool_factor=CFG.dedup.pool_factor,
        cap=CFG.mix.cap,
        seed=CFG.seed,
        stage_version=POOL_VERSION,
    script:
        "../workflow_scripts/pool.py"


rule templatize:
    input:
        train="data/pool/{dataset}.parquet",
        eval="data/raw/{dataset}/eval.parquet",
    output:
        table="data/templatized/{dataset}.parquet",
        manifest="data/templatized/{dataset}.manifest.json",
    log:
        "logs/templatize/{dataset}.log",
    benchmark:
        "benchmarks/templatize/{dataset}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        templatize=get_templatize_params,
        seed=CFG.seed,
        stage_version=TEMPLATIZE_VERSION,
    script:
        "../workflow_scripts/templatize.py"


# The format ablation: the same examples in another instruction format (`no_template`,
# `dataset_name`), for the `format_<f>` mixtures only.
use rule templatize as templatize_format with:
    output:
        table="data/templatized/formats/{format}/{dataset}.parquet",
        manifest="data/templatized/formats/{format}/{dataset}.manifest.json",
    log:
        "logs/templatize/{format}/{dataset}.log",
    benchmark:
        "benchmarks/templatize/{format}/{dataset}.tsv"
    params:
        templatize=get_templatize_format_params,
        seed=CFG.seed,
        stage_version=TEMPLATIZE_VERSION,
