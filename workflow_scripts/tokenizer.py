"""Snakemake script of rules `tokenizer` / `tokenizer_per_mixture`: train (or copy) the SentencePiece
model."""

from flanpipe.config import TokenizerConfig
from flanpipe.logs import setup_logging
from flanpipe.tokenizer import build_tokenizer

setup_logging(snakemake.log[0])
build_tokenizer(
    cfg=TokenizerConfig.model_validate(snakemake.params.tokenizer),
    out_model=snakemake.output.model,
    seed=snakemake.params.seed,
    mixture_shard_dir=snakemake.input.get("shards"),
    mixture=snakemake.params.mixture,
    threads=snakemake.threads,
)
