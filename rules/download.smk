# Stage 1, download: one job per dataset, raw Parquet in the dataset's hub schema + manifest.
# Code: workflow_scripts/download.py -> flanpipe/stages/download.py
from flanpipe.core.versions import STAGE_VERSIONS

DOWNLOAD_VERSION = STAGE_VERSIONS["download"]


rule download:
    output:
        train="data/raw/{dataset}/train.parquet",
        eval="data/raw/{dataset}/eval.parquet",
        rejected="data/raw/{dataset}/rejected.parquet",
        manifest="data/raw/{dataset}/manifest.json",
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "benchmarks/download/{dataset}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        config=get_download_slice,
        stage_version=DOWNLOAD_VERSION,
    script:
        "../workflow_scripts/download.py"
