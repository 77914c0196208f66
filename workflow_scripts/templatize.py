"""Snakemake script of rule `templatize`: one dataset's raw splits into instructions."""

from pathlib import Path

from flanpipe.config import TemplatizeConfig
from flanpipe.logs import setup_logging
from flanpipe.templatize import templatize_dataset

setup_logging(snakemake.log[0])
templatize_dataset(
    name=snakemake.wildcards.dataset,
    raw_dir=Path(snakemake.input.train).parent,
    out_path=snakemake.output.table,
    cfg=TemplatizeConfig(**snakemake.params.templatize["config"]),
    seed=snakemake.params.seed,
    max_input_tokens=snakemake.params.templatize["max_input_tokens"],
)
