"""Snakemake script of rule `decontaminate`: one dataset's pool rows against the held-out eval sets."""

from flanpipe.core.logs import setup_logging
from flanpipe.stages.decontaminate import decontaminate_dataset

setup_logging(snakemake.log[0])
decontaminate_dataset(
    name=snakemake.wildcards.dataset,
    pool=snakemake.input.pool,
    fingerprints=snakemake.input.fingerprints,
    ngram_paths=dict(zip(snakemake.params.eval_datasets, snakemake.input.ngrams, strict=True)),
    out_path=snakemake.output[0],
)
