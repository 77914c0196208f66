# Stage 3d, cap and mix: one mixture per held-out cluster plus `all` (and the ablations').
# Code: workflow_scripts/mix.py -> flanpipe/stages/mix.py
from flanpipe.core.versions import STAGE_VERSIONS

MIX_VERSION = STAGE_VERSIONS["mix"]


rule mix:
    input:
        unpack(get_mixture_inputs),
    output:
        shards=directory("data/mixtures/{mixture}/shards"),
        stats="data/mixtures/{mixture}/stats.parquet",
        contamination="data/mixtures/{mixture}/contamination.parquet",
        rows="data/mixtures/{mixture}/rows.parquet",
        manifest="data/mixtures/{mixture}/manifest.json",
    log:
        "logs/mix/{mixture}.log",
    benchmark:
        "benchmarks/mix/{mixture}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        datasets=get_mixture_dataset_names,
        heldout=get_mixture_heldout,
        config=PLAN.slice("mix"),
        stage_version=MIX_VERSION,
    script:
        "../workflow_scripts/mix.py"
