# Stage 2, templatize: one job per dataset; instructions from the template bank.
from flanpipe.templatize import STAGE_VERSION as TEMPLATIZE_VERSION
from flanpipe.templatize import templates_digest


rule templatize:
    input:
        train="data/raw/{dataset}/train.parquet",
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
