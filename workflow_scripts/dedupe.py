"""Snakemake script of rule `dedupe`: exact and near duplicates across every dataset's fingerprints."""

from pathlib import Path

from flanpipe.config import DedupConfig
from flanpipe.dedup import dedupe
from flanpipe.logs import setup_logging

setup_logging(snakemake.log[0])
dedupe(
    names=snakemake.params.datasets,
    fingerprint_paths=list(snakemake.input),
    out_dir=Path(snakemake.output.report).parent,
    cfg=DedupConfig(**snakemake.params.dedup),
    seed=snakemake.params.seed,
)
