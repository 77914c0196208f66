# Stage 5, train: one instruction-tuned model per mixture (one per held-out cluster, plus `all`).
# Ranks, nodes and GPUs are resources: the defaults run 2 CPU processes with torchrun; the Slurm
# profile sets launcher=srun, nodes, tasks_per_node (or tasks, all ranks, for one rank per node) and
# GPUs per cluster.
# Code: workflow_scripts/train.py -> flanpipe/stages/train.py (launched on every rank via `flanpipe train`)
from flanpipe.stages.train import STAGE_VERSION as TRAIN_VERSION


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
