"""Snakemake script of rules `templatize` and `templatize_format` (flanpipe.stages.templatize)."""

from flanpipe.core.config import TemplatizeSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.templatize import templatize_dataset

setup_logging(snakemake.log[0])
templatize_dataset(
    name=snakemake.wildcards.dataset,
    train=snakemake.input.train,
    eval_split=snakemake.input.eval,
    out_path=snakemake.output.table,
    cfg=TemplatizeSlice.model_validate(snakemake.params.config),
    contaminated=snakemake.input.get("decontam"),
)
