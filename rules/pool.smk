# Stage 2a, pool: the dedupe.pool_factor * mix.cap train rows of lowest seeded priority (every row
# with pool_factor: null): every stage after this one works on these and the eval split only.
# Code: workflow_scripts/pool.py -> flanpipe/stages/pool.py
from flanpipe.core.versions import STAGE_VERSIONS

POOL_VERSION = STAGE_VERSIONS["pool"]


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
        config=get_pool_slice,
        stage_version=POOL_VERSION,
    script:
        "../workflow_scripts/pool.py"
