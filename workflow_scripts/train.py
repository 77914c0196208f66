"""Snakemake script of rule `train`: save the run's config, keep the checkpoints only if they hold an
unfinished run of the same inputs (refusing while a live run holds the model folder's lock), then
launch `flanpipe train` on every rank (torchrun locally; srun under the Slurm profile) and wait for
it; the launcher dies with this job."""

import subprocess
from pathlib import Path

import yaml

from flanpipe.core.config import TrainSlice
from flanpipe.core.io import sha256_file, write_text_atomic
from flanpipe.core.train.launch import (
    die_with_parent,
    keep_or_clear_checkpoints,
    launch_command,
    ranks_per_node,
)

out = Path(snakemake.output.run).parent
config = out / "config.yaml"
# The run reads its slice (seed and train; with train.eval_every its curve's) only: `flanpipe train
# --config` loads this file.
cfg = TrainSlice.model_validate(snakemake.params.config)
write_text_atomic(config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
res = snakemake.resources
nodes = int(res.nodes)
per_node = ranks_per_node(nodes, int(res.tasks_per_node), int(getattr(res, "tasks", 0) or 0))
ranks = nodes * per_node
run_key = {"packed": sha256_file(snakemake.input.manifest), "ranks": ranks,
           "tokenizer": sha256_file(snakemake.input.tokenizer), "train": snakemake.params.config["train"],
           "seed": cfg.seed, "stage_version": snakemake.params.stage_version,
           # (with train.eval_every: how and on what the curve scores; absent, the key is as before)
           **{k: snakemake.params.config[k] for k in ("evaluate", "heldout", "validation")
              if k in snakemake.params.config}}
checkpoints = keep_or_clear_checkpoints(out, run_key, cfg.train.steps)
cmd = launch_command(res.launcher, nodes, per_node, [
    "train", "--mixture", snakemake.wildcards.mixture, "--config", str(config),
    "--packed", str(Path(snakemake.input.manifest).parent), "--tokenizer", snakemake.input.tokenizer,
    "--out", str(out)])
with open(snakemake.log[0], "w") as log:
    log.write(f"checkpoints: {checkpoints}\n" + " ".join(cmd) + "\n")
    log.flush()
    # the launcher dies with this job, and each rank with the launcher (flanpipe train)
    subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, preexec_fn=die_with_parent)
