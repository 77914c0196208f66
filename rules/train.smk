# Stage 5, train: one instruction-tuned model per mixture (one per held-out cluster, plus `all`).
# Ranks, nodes and GPUs are resources: the defaults run 2 CPU processes with torchrun; the Slurm
# profile sets launcher=srun, nodes, tasks_per_node (or tasks, all ranks, for one rank per node) and
# GPUs per cluster.
# Code: workflow_scripts/train.py -> flanpipe/stages/train.py (launched on every rank via `flanpipe train`)
from flanpipe.core.versions import STAGE_VERSIONS

TRAIN_VERSION = STAGE_VERSIONS["train"]


rule train:
    input:
        manifest="data/packed/{mixture}/manifest.json",
        shards="data/packed/{mixture}/shards",
        tokenizer=get_tokenizer,
        eval_splits=get_train_eval_splits,
    output:
        hf=directory("models/{mixture}/hf"),
        metrics="models/{mixture}/metrics.csv",
        plot="models/{mixture}/loss.png",
        run="models/{mixture}/run.json",
    log:
        "logs/train/{mixture}.log",
    benchmark:
        "benchmarks/train/{mixture}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    threads: 2
    resources:
        nodes=1,
        tasks_per_node=2,
        launcher="torchrun",
    params:
        config=get_train_slice,
        stage_version=TRAIN_VERSION,
    script:
        "../workflow_scripts/train.py"


# One training per seed of experiment.seeds: the same packed mixture, the train slice's seed changed
# (initial weights, LoRA's, data order, dropout), in models/{mixture}/seed-{seed}/.
use rule train as train_seed with:
    output:
        hf=directory("models/{mixture}/seed-{seed}/hf"),
        metrics="models/{mixture}/seed-{seed}/metrics.csv",
        plot="models/{mixture}/seed-{seed}/loss.png",
        run="models/{mixture}/seed-{seed}/run.json",
    log:
        "logs/train/{mixture}/seed-{seed}.log",
    benchmark:
        "benchmarks/train/{mixture}/seed-{seed}.tsv"
    params:
        config=get_train_seed_slice,
        stage_version=TRAIN_VERSION,
