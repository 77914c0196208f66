"""Snakemake script of rule `templatize`: one dataset's pool and eval split into instructions."""

from flanpipe.config import TemplatizeConfig
from flanpipe.logs import setup_logging
from flanpipe.templatize import templatize_dataset

setup_logging(snakemake.log[0])
templatize_dataset(
    name=snakemake.wildcards.dataset,
    train=snakemake.input.train,
    eval_split=snakemake.input.eval,
    out_path=snakemake.output.table,
    cfg=TemplatizeConfig(**snakemake.params.templatize["config"]),
    seed=snakemake.params.seed,
    max_input_tokens=snakemake.params.templatize["max_input_tokens"],
)
