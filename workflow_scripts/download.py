"""Snakemake script of rule `download`: one dataset into data/raw/{dataset}/."""

from pathlib import Path

from flanpipe.config import SourceSpec
from flanpipe.download import download_dataset
from flanpipe.logs import setup_logging

setup_logging(snakemake.log[0])
download_dataset(
    name=snakemake.wildcards.dataset,
    source=SourceSpec(**snakemake.params.source),
    out_dir=Path(snakemake.output.manifest).parent,
    seed=snakemake.params.seed,
)
