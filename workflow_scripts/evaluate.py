"""Snakemake script of the `evaluate*` rules: one model on one dataset, zero-shot or few-shot."""

from pathlib import Path

from flanpipe.config import parse_config
from flanpipe.evaluate import evaluate_dataset
from flanpipe.logs import setup_logging

setup_logging(snakemake.log[0])
evaluate_dataset(
    dataset=snakemake.wildcards.dataset,
    model_dir=snakemake.input.model,
    raw_dir=Path(snakemake.input.eval).parent,
    out_path=snakemake.output[0],
    cfg=parse_config(snakemake.config),
    few_shot=snakemake.params.few_shot,
    model_name=snakemake.params.model,
    contamination=snakemake.input.get("contamination"),
    threads=snakemake.threads,
    train=snakemake.input.train,
)
