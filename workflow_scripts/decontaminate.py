"""Snakemake script of rule `decontaminate`: one dataset's pool rows against the held-out eval sets."""

from flanpipe.decontaminate import decontaminate_dataset
from flanpipe.logs import setup_logging

setup_logging(snakemake.log[0])
decontaminate_dataset(
    name=snakemake.wildcards.dataset,
    pool=snakemake.input.pool,
    fingerprints=snakemake.input.fingerprints,
    ngram_paths=dict(zip(snakemake.params.eval_datasets, snakemake.input.ngrams, strict=True)),
    out_path=snakemake.output[0],
)
