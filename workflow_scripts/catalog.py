"""Snakemake script of rule `catalog`: the DuckDB catalog over every stage's Parquet."""

from flanpipe.catalog import build_catalog
from flanpipe.logs import setup_logging

setup_logging(snakemake.log[0])
build_catalog(
    out_path=snakemake.output[0],
    datasets=snakemake.params.datasets,
    mixtures=snakemake.params.mixtures,
)
