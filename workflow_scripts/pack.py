"""Snakemake script of rule `pack`: tokenize and pack one mixture (flanpipe.stages.pack)."""

from pathlib import Path

from flanpipe.core.config import PackSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.pack import tokenize_and_pack

setup_logging(snakemake.log[0])
tokenize_and_pack(
    mixture=snakemake.wildcards.mixture,
    shard_dir=snakemake.input.shards,
    tokenizer=snakemake.input.tokenizer,
    out_dir=Path(snakemake.output.manifest).parent,
    cfg=PackSlice.model_validate(snakemake.params.config),
    threads=snakemake.threads,
)
