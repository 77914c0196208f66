# Stage 6, evaluate: every model on every dataset of the clusters it never trained on, zero-shot and
# few-shot, next to the untuned base model; the ablations' models on the ablations' held-out clusters.
# Code: workflow_scripts/evaluate.py -> flanpipe/stages/evaluate.py
from flanpipe.core.versions import STAGE_VERSIONS

EVALUATE_VERSION = STAGE_VERSIONS["evaluate"]


rule evaluate:
    input:
        unpack(get_eval_inputs),
    output:
        "results/eval/{heldout}/{dataset}.json",
    log:
        "logs/evaluate/{heldout}/{dataset}.log",
    benchmark:
        "benchmarks/evaluate/{heldout}/{dataset}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    threads: 2
    params:
        few_shot=False,
        model=get_eval_model_name,
        config=PLAN.slice("evaluate"),
        stage_version=EVALUATE_VERSION,
    script:
        "../workflow_scripts/evaluate.py"


use rule evaluate as evaluate_few_shot with:
    output:
        "results/eval/{heldout}/{dataset}.few_shot.json",
    log:
        "logs/evaluate/{heldout}/{dataset}.few_shot.log",
    benchmark:
        "benchmarks/evaluate/{heldout}/{dataset}.few_shot.tsv"
    params:
        few_shot=True,
        model=get_eval_model_name,
        config=PLAN.slice("evaluate"),
        stage_version=EVALUATE_VERSION,


# A held-out model trained under one seed of experiment.seeds (results/eval/{heldout}/seed-{seed}/...).
use rule evaluate as evaluate_seed with:
    output:
        "results/eval/{heldout}/seed-{seed}/{dataset}.json",
    log:
        "logs/evaluate/{heldout}/seed-{seed}/{dataset}.log",
    benchmark:
        "benchmarks/evaluate/{heldout}/seed-{seed}/{dataset}.tsv"


use rule evaluate_few_shot as evaluate_seed_few_shot with:
    output:
        "results/eval/{heldout}/seed-{seed}/{dataset}.few_shot.json",
    log:
        "logs/evaluate/{heldout}/seed-{seed}/{dataset}.few_shot.log",
    benchmark:
        "benchmarks/evaluate/{heldout}/seed-{seed}/{dataset}.few_shot.tsv"


# The untuned base model, the same way (results/eval/base/...).
use rule evaluate as evaluate_base with:
    output:
        "results/eval/base/{dataset}.json",
    log:
        "logs/evaluate/base/{dataset}.log",
    benchmark:
        "benchmarks/evaluate/base/{dataset}.tsv"


use rule evaluate_few_shot as evaluate_base_few_shot with:
    output:
        "results/eval/base/{dataset}.few_shot.json",
    log:
        "logs/evaluate/base/{dataset}.few_shot.log",
    benchmark:
        "benchmarks/evaluate/base/{dataset}.few_shot.tsv"


# Ablations: the first k training clusters, and the instruction format (results/ablations/...).
use rule evaluate as evaluate_ablation_clusters with:
    output:
        "results/ablations/clusters/{k}/{dataset}.json",
    log:
        "logs/evaluate/ablations/clusters/{k}/{dataset}.log",
    benchmark:
        "benchmarks/evaluate/ablations/clusters/{k}/{dataset}.tsv"


use rule evaluate as evaluate_ablation_format with:
    output:
        "results/ablations/format/{format}/{dataset}.json",
    log:
        "logs/evaluate/ablations/format/{format}/{dataset}.log",
    benchmark:
        "benchmarks/evaluate/ablations/format/{format}/{dataset}.tsv"


# Named targets: `snakemake --cores 2 evaluate_all` (every evaluation), `ablation_clusters`,
# `ablation_format`, `ablation_few_shot` (zero-shot and few-shot of the held-out models).
rule evaluate_all:
    input:
        get_eval_results(few_shot=False),
        get_seed_results(),
        get_eval_results(few_shot=True),
        get_ablation_results("clusters"),
        get_ablation_results("format"),


rule ablation_few_shot:
    input:
        get_eval_results(few_shot=False),
        get_eval_results(few_shot=True),


rule ablation_clusters:
    input:
        get_ablation_results("clusters"),


rule ablation_format:
    input:
        get_ablation_results("format"),
