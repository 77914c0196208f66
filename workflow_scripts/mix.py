"""Snakemake script of rule `mix`: cap and mix one mixture (flanpipe.stages.mix)."""

from dataclasses import fields
from pathlib import Path

from flanpipe.core.config import MixSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.mix import DatasetInputs, build_mixture

setup_logging(snakemake.log[0])
kinds = [f.name for f in fields(DatasetInputs)]
build_mixture(
    mixture=snakemake.wildcards.mixture,
    datasets=snakemake.params.datasets,
    heldout=snakemake.params.heldout,
    inputs=[DatasetInputs(*files) for files in zip(*(snakemake.input[k] for k in kinds), strict=True)],
    out_dir=Path(snakemake.output.manifest).parent,
    cfg=MixSlice.model_validate(snakemake.params.config),
    dropped_paths=list(snakemake.input.all_dropped),
)
