# Stage 3a/3b, dedupe and decontaminate: per-dataset fingerprints, one global dedupe job, and a
# per-dataset check against the held-out eval sets.
from flanpipe.dedup import STAGE_VERSION as DEDUP_VERSION
from flanpipe.decontaminate import STAGE_VERSION as DECONTAMINATE_VERSION


rule fingerprint:
    input:
        pool="data/pool/{dataset}.parquet",
        eval="data/raw/{dataset}/eval.parquet",
    output:
        fingerprints="data/dedup/fingerprints/{dataset}.parquet",
        ngrams="data/decontam/ngrams/{dataset}.parquet",
    log:
        "logs/fingerprint/{dataset}.log",
    benchmark:
        "benchmarks/fingerprint/{dataset}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        dedup=CFG.dedup.model_dump(),
        decontaminate=CFG.decontaminate.model_dump(),
        seed=CFG.seed,
        stage_version=DEDUP_VERSION,
    script:
        "../workflow_scripts/fingerprint.py"


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
        dedup=CFG.dedup.model_dump(),
        seed=CFG.seed,
        stage_version=DEDUP_VERSION,
    script:
        "../workflow_scripts/dedupe.py"


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
        eval_datasets=CFG.heldout_datasets(),
        stage_version=DECONTAMINATE_VERSION,
    script:
        "../workflow_scripts/decontaminate.py"
