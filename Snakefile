# flanpipe: FLAN-style instruction tuning as a Snakemake workflow.
# This file is the table of contents; every stage lives in rules/<stage>.smk and every real
# function in the flanpipe package. Run `snakemake --cores 2 all` (embedded default) or
# `snakemake --profile slurm all` on a cluster.
from snakemake.utils import min_version, validate

from flanpipe.core.config import parse_config

min_version("9.0")


configfile: "config/config.yaml"


# One typed model of the config, validated before any job runs (clear error naming the key), and
# the JSON schema generated from that model, for Snakemake's own validation.
CFG = parse_config(config)
validate(config, "config/config.schema.json")


# One file per rule, named like the rule's script (workflow_scripts/<rule>.py) and its stage module
# (flanpipe/stages/<rule>.py); variants (`use rule ... as ...`) sit beside their rule.
include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/pool.smk"
include: "rules/templatize.smk"
include: "rules/fingerprint.smk"
include: "rules/dedupe.smk"
include: "rules/decontaminate.smk"
include: "rules/mix.smk"
include: "rules/catalog.smk"
include: "rules/tokenizer.smk"
include: "rules/pack.smk"
include: "rules/train.smk"
include: "rules/base_model.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    mixture="|".join(dict.fromkeys([*PLAN.all_mixtures(), "all"])),  # `all`: a shared tokenizer's corpus
    heldout="|".join(CFG.heldout_clusters),
    format="instructions|no_template|dataset_name",
    k=r"\d+",
    seed=r"\d+",


rule all:
    input:
        get_raw_outputs(),
        get_templatized(),
        get_mixtures(),
        get_packed(),
        get_models(),
        "data/catalog.duckdb",
        "results/report/index.md",
