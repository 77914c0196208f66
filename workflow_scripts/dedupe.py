"""Snakemake script of rule `dedupe`: duplicates across every dataset (flanpipe.stages.dedupe)."""

from pathlib import Path

from flanpipe.core.config import DedupeSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.dedupe import dedupe

setup_logging(snakemake.log[0])
dedupe(
    names=snakemake.params.datasets,
    fingerprint_paths=list(snakemake.input),
    out_dir=Path(snakemake.output.report).parent,
    cfg=DedupeSlice.model_validate(snakemake.params.config),
)
