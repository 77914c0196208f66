"""Snakemake script of rule `train`: save the run's config, then launch `flanpipe train` on every rank
(torchrun locally; srun under the Slurm profile) and wait for it."""

import subprocess
from pathlib import Path

import yaml

from flanpipe.config import parse_config
from flanpipe.io import write_text_atomic
from flanpipe.launch import launch_command

out = Path(snakemake.output.run).parent
config = out / "config.yaml"
cfg = parse_config(snakemake.config).model_dump(mode="json")
write_text_atomic(config, yaml.safe_dump(cfg, sort_keys=False))
res = snakemake.resources
cmd = launch_command(res.launcher, int(res.nodes), int(res.tasks_per_node), [
    "train", "--mixture", snakemake.wildcards.mixture, "--config", str(config),
    "--packed", str(Path(snakemake.input.manifest).parent), "--tokenizer", snakemake.input.tokenizer,
    "--out", str(out)])
with open(snakemake.log[0], "w") as log:
    log.write(" ".join(cmd) + "\n")
    log.flush()
    subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
