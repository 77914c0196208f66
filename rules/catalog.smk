# Stage 3e, catalog: data/catalog.duckdb, views over every stage's stats for DuckDB queries.
# Code: workflow_scripts/catalog.py -> flanpipe/stages/catalog.py
from flanpipe.core.versions import STAGE_VERSIONS

CATALOG_VERSION = STAGE_VERSIONS["catalog"]


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
        mixtures=PLAN.mixtures(),
        stage_version=CATALOG_VERSION,
    script:
        "../workflow_scripts/catalog.py"
