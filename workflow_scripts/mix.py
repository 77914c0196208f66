"""Snakemake script of rule `mix`: cap, rate, sample and shuffle one mixture into Parquet shards."""

from dataclasses import fields
from pathlib import Path

from flanpipe.config import parse_config
from flanpipe.logs import setup_logging
from flanpipe.mix import DatasetInputs, build_mixture

setup_logging(snakemake.log[0])
kinds = [f.name for f in fields(DatasetInputs)]
build_mixture(
    mixture=snakemake.wildcards.mixture,
    datasets=snakemake.params.datasets,
    inputs=[DatasetInputs(*files) for files in zip(*(snakemake.input[k] for k in kinds), strict=True)],
    out_dir=Path(snakemake.output.manifest).parent,
    cfg=parse_config(snakemake.config),
    dropped_paths=list(snakemake.input.all_dropped),
)
