"""Snakemake script of rule `evaluate` and its variants: one model on one dataset
(flanpipe.stages.evaluate)."""

from pathlib import Path

from flanpipe.core.config import EvaluateSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.evaluate import evaluate_dataset

setup_logging(snakemake.log[0])
evaluate_dataset(
    dataset=snakemake.wildcards.dataset,
    model_dir=snakemake.input.model,
    raw_dir=Path(snakemake.input.eval).parent,
    out_path=snakemake.output[0],
    cfg=EvaluateSlice.model_validate(snakemake.params.config),
    few_shot=snakemake.params.few_shot,
    model_name=snakemake.params.model,
    contamination=snakemake.input.get("contamination"),
    threads=snakemake.threads,
    train=snakemake.input.train,
)
