"""Snakemake script of rule `report`: results/report/index.md and its figures (flanpipe.stages.report)."""

from pathlib import Path

from flanpipe.core.config import ReportSlice
from flanpipe.core.logs import setup_logging
from flanpipe.stages.report import build_report

setup_logging(snakemake.log[0])
cfg = ReportSlice.model_validate(snakemake.params.config)
build_report(
    zero_shot=list(snakemake.input.zero_shot),
    few_shot=list(snakemake.input.few_shot),
    ablation_clusters=list(snakemake.input.ablation_clusters),
    ablation_format=list(snakemake.input.ablation_format),
    ablation_labels=dict(snakemake.params.points),
    seeds=list(snakemake.input.seeds),
    catalog=snakemake.input.catalog,
    models=list(snakemake.input.models),
    out_dir=Path(snakemake.output[0]).parent,
    cluster_order=cfg.clusters,
    formats=cfg.formats,
    seed=cfg.seed,
    resamples=cfg.bootstrap,
)
