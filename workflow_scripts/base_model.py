"""Snakemake script of rule `base_model`: the untuned model, for evaluation beside the tuned ones."""

from flanpipe.config import parse_config
from flanpipe.logs import setup_logging
from flanpipe.train import export_base_model

setup_logging(snakemake.log[0])
export_base_model(parse_config(snakemake.config), snakemake.input.tokenizer, snakemake.output.hf)
