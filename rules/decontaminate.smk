# Stage 3c, decontaminate: per dataset, the pool rows that share an n-gram with a held-out eval set.
# Code: workflow_scripts/decontaminate.py -> flanpipe/stages/decontaminate.py
from flanpipe.core.versions import STAGE_VERSIONS

DECONTAMINATE_VERSION = STAGE_VERSIONS["decontaminate"]


rule decontaminate:
    input:
        pool="data/pool/{dataset}.parquet",
        fingerprints="data/dedup/fingerprints/{dataset}.parquet",
        ngrams=get_heldout_ngrams,
    output:
        "data/decontam/{dataset}.parquet",
    log:
        "logs/decontaminate/{dataset}.log",
    benchmark:
        "benchmarks/decontaminate/{dataset}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        eval_datasets=PLAN.heldout_datasets(),
        stage_version=DECONTAMINATE_VERSION,
    script:
        "../workflow_scripts/decontaminate.py"
