"""Snakemake script of rule `fingerprint`: one dataset's train-pool fingerprints and eval n-grams."""

from flanpipe.config import DecontaminateConfig, DedupConfig
from flanpipe.dedup import fingerprint_dataset
from flanpipe.logs import setup_logging

setup_logging(snakemake.log[0])
fingerprint_dataset(
    name=snakemake.wildcards.dataset,
    pool=snakemake.input.pool,
    eval_split=snakemake.input.eval,
    out_fingerprints=snakemake.output.fingerprints,
    out_ngrams=snakemake.output.ngrams,
    cfg=DedupConfig(**snakemake.params.dedup),
    decontam=DecontaminateConfig(**snakemake.params.decontaminate),
    seed=snakemake.params.seed,
)
