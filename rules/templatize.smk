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
