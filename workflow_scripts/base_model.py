"""Snakemake script of rule `base_model`: the untuned model, for evaluation beside
the tuned ones (flanpipe.stages.base_model)."""

from flanpipe.core.config import BaseModelSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.base_model import export_base_model

setup_logging(snakemake.log[0])
export_base_model(BaseModelSlice.model_validate(snakemake.params.config), snakemake.input.tokenizer,
                  snakemake.output.hf)
