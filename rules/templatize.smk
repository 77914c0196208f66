# Stage 2b, templatize: one job per dataset; instructions from the template bank.
# Code: workflow_scripts/templatize.py -> flanpipe/stages/templatize.py
from flanpipe.core.versions import STAGE_VERSIONS

TEMPLATIZE_VERSION = STAGE_VERSIONS["templatize"]


rule templatize:
    input:
        unpack(get_templatize_exemplar_inputs),
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
        config=get_templatize_slice,
        templates=get_templates_digest,
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
        config=get_templatize_format_slice,
        templates=get_templates_digest,
        stage_version=TEMPLATIZE_VERSION,
