"""Snakemake script of rule `pool`: the train rows that can pass the cap (flanpipe.stages.pool)."""

from flanpipe.core.config import PoolSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.pool import write_pool

setup_logging(snakemake.log[0])
write_pool(
    name=snakemake.wildcards.dataset,
    train=snakemake.input.train,
    out_path=snakemake.output[0],
    cfg=PoolSlice.model_validate(snakemake.params.config),
)
