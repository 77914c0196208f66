# Stage 3b, dedupe: one job over every dataset's fingerprints; exact and near duplicates, within
# and across datasets, each with its kept twin.
# Code: workflow_scripts/dedupe.py -> flanpipe/stages/dedupe.py
from flanpipe.core.versions import STAGE_VERSIONS

DEDUPE_VERSION = STAGE_VERSIONS["dedupe"]


rule dedupe:
    input:
        get_fingerprints(),
    output:
        dropped=get_dropped(),
        report="data/dedup/report.json",
    log:
        "logs/dedupe.log",
    benchmark:
        "benchmarks/dedupe.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        datasets=DATASETS,
        config=PLAN.slice("dedupe"),
        stage_version=DEDUPE_VERSION,
    script:
        "../workflow_scripts/dedupe.py"
