"""Snakemake script of rule `catalog`: the DuckDB catalog over every stage's Parquet."""

from flanpipe.core.logs import setup_logging
from flanpipe.stages.catalog import build_catalog

setup_logging(snakemake.log[0])
build_catalog(
    out_path=snakemake.output[0],
    datasets=snakemake.params.datasets,
    mixtures=snakemake.params.mixtures,
)
