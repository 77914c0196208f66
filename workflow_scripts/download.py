"""Snakemake script of rule `download`: one dataset's raw splits (flanpipe.stages.download)."""

from pathlib import Path

from flanpipe.core.config import DownloadSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.download import download_dataset

setup_logging(snakemake.log[0])
cfg = DownloadSlice.model_validate(snakemake.params.config)
download_dataset(
    name=snakemake.wildcards.dataset,
    source=cfg.source,
    out_dir=Path(snakemake.output.manifest).parent,
    seed=cfg.seed,
)
