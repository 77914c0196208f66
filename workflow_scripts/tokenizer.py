"""Snakemake script of rules `tokenizer` and `tokenizer_per_mixture`: train or copy the
SentencePiece model (flanpipe.stages.tokenizer)."""

from flanpipe.core.config import TokenizerSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.tokenizer import build_tokenizer

setup_logging(snakemake.log[0])
cfg = TokenizerSlice.model_validate(snakemake.params.config)
build_tokenizer(
    cfg=cfg.tokenizer,
    out_model=snakemake.output.model,
    seed=cfg.seed,
    mixture_shard_dir=snakemake.input.get("shards"),
    mixture=snakemake.params.mixture,
    threads=snakemake.threads,
)
