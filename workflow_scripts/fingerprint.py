"""Snakemake script of rule `fingerprint`: a dataset's pool fingerprints and eval
n-grams (flanpipe.stages.fingerprint)."""

from flanpipe.core.config import FingerprintSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.fingerprint import fingerprint_dataset

setup_logging(snakemake.log[0])
fingerprint_dataset(
    name=snakemake.wildcards.dataset,
    pool=snakemake.input.pool,
    eval_split=snakemake.input.eval,
    out_fingerprints=snakemake.output.fingerprints,
    out_ngrams=snakemake.output.ngrams,
    cfg=FingerprintSlice.model_validate(snakemake.params.config),
)
