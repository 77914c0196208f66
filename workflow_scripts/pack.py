"""Snakemake script of rule `pack`: tokenize one mixture and pack it into token shards."""

from pathlib import Path

from flanpipe.config import parse_config
from flanpipe.logs import setup_logging
from flanpipe.pack import tokenize_and_pack

setup_logging(snakemake.log[0])
tokenize_and_pack(
    mixture=snakemake.wildcards.mixture,
    shard_dir=snakemake.input.shards,
    tokenizer=snakemake.input.tokenizer,
    out_dir=Path(snakemake.output.manifest).parent,
    cfg=parse_config(snakemake.config),
    threads=snakemake.threads,
)
