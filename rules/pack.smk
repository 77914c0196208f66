# Stage 4b, pack: each mixture tokenized and packed into fixed-width token shards.
# Code: workflow_scripts/pack.py -> flanpipe/stages/pack.py
from flanpipe.core.versions import STAGE_VERSIONS

PACK_VERSION = STAGE_VERSIONS["pack"]


rule pack:
    input:
        shards="data/mixtures/{mixture}/shards",
        mixture_manifest="data/mixtures/{mixture}/manifest.json",
        tokenizer=get_tokenizer,
    output:
        shards=directory("data/packed/{mixture}/shards"),
        index="data/packed/{mixture}/index.parquet",
        stats="data/packed/{mixture}/stats.parquet",
        packing="data/packed/{mixture}/packing.parquet",
        manifest="data/packed/{mixture}/manifest.json",
    log:
        "logs/pack/{mixture}.log",
    benchmark:
        "benchmarks/pack/{mixture}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    threads: 8
    params:
        config=PLAN.slice("pack"),
        stage_version=PACK_VERSION,
    script:
        "../workflow_scripts/pack.py"
