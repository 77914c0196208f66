"""Snakemake script of rule `pool`: the train rows of one dataset that can pass the cap."""

from flanpipe.logs import setup_logging
from flanpipe.pool import write_pool

setup_logging(snakemake.log[0])
write_pool(
    name=snakemake.wildcards.dataset,
    train=snakemake.input.train,
    out_path=snakemake.output[0],
    pool_factor=snakemake.params.pool_factor,
    cap=snakemake.params.cap,
    seed=snakemake.params.seed,
)
