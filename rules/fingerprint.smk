# Stage 3a, fingerprint: per dataset, the pool's exact hashes and MinHash signatures (for dedupe)
# and the eval split's n-grams (for decontaminate).
# Code: workflow_scripts/fingerprint.py -> flanpipe/stages/fingerprint.py
from flanpipe.core.versions import STAGE_VERSIONS

FINGERPRINT_VERSION = STAGE_VERSIONS["fingerprint"]


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
        config=PLAN.slice("fingerprint"),
        stage_version=FINGERPRINT_VERSION,
    script:
        "../workflow_scripts/fingerprint.py"
