"""Where a training run is logged (``train.trackers``), rank 0 only.

- ``csv``: ``metrics.csv`` in the model folder, one row per logged step (the loss plot and a resumed
  run read it; always on);
- ``tensorboard``: ``tensorboard/`` in the model folder (``torch.utils.tensorboard``);
- ``mlflow``: a run named after the mixture in experiment ``train.mlflow.experiment`` at
  ``train.mlflow.tracking_uri`` (a local folder by default, ``mlruns/``): the train slice as params
  (dotted keys, ``train.model.hidden_size``), every logged step's metrics, and at the end ``run.json``
  and ``loss.png`` as artifacts;
- ``wandb``: a Weights & Biases run in project ``train.wandb.project``, its folder under the model
  folder's ``wandb/``; offline where ``WANDB_MODE=offline`` or no API key is set (``wandb sync
  models/<name>/wandb/offline-run-*`` uploads it later).

With ``train.eval_every``, ``metrics.csv`` has four more columns, :data:`CURVE_METRICS`, and the
curve's rows beside the training ones: one per scored step and dataset, ``eval_split`` ``heldout``
(the model's held-out datasets) or ``validation`` (``train.select: best_val``'s), ``eval_dataset``,
``eval_score`` (the headline variant's primary metric, mean over templates, as evaluate's headline
``mean``) and ``eval_loss`` (the gold options' NLL per token); the training columns are empty there,
and the curve's are empty in the training rows. Step 0 is the base, before any update. TensorBoard,
MLflow and W&B get them as ``<split>/<dataset>/score`` and ``<split>/<dataset>/loss``.

A resumed run drops ``metrics.csv`` rows past its checkpoint and TensorBoard's events past it, and
goes on logging into the same MLflow and W&B runs (their ids are kept in ``trackers.json``); those
two keep the replayed steps' first values too, as their own histories do. The evaluation comes
later: :func:`log_eval_results` (``flanpipe card``) adds its result files to the run's MLflow
artifacts, under ``eval/``.

>>> Trackers.PACKAGES["mlflow"]
'mlflow'
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

from flanpipe.core.io import write_json_atomic

log = logging.getLogger(__name__)

METRICS = ["step", "loss", "lr", "grad_norm", "target_tokens", "tokens", "tokens_per_s", "elapsed_s"]
CURVE_METRICS = ["eval_split", "eval_dataset", "eval_score", "eval_loss"]
"""The curve's columns of ``metrics.csv`` (``train.eval_every`` only: without it the file is as before)."""
SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s")
"""The metrics TensorBoard, MLflow and W&B get, as ``train/<name>``."""


def flat_params(values: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as text (lists and empty dicts as JSON).

    >>> flat_params({"train": {"lr": 3e-05, "model": {"hf_config": {}}, "trackers": ["csv"]}})
    {'train.lr': '3e-05', 'train.model.hf_config': '{}', 'train.trackers': '["csv"]'}
    """
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flat_params(value, f"{name}.")
        elif isinstance(value, dict | list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def mlflow_uri(tracking_uri: str) -> str:
    """The MLflow tracking URI of ``train.mlflow.tracking_uri``: a URI as it is, a folder as an
    absolute ``file:`` URI.

    >>> mlflow_uri("http://127.0.0.1:5000"), mlflow_uri("/runs/mlruns")
    ('http://127.0.0.1:5000', 'file:///runs/mlruns')
    """
    if "://" in tracking_uri or tracking_uri.startswith(("sqlite:", "databricks")):
        return tracking_uri
    return Path(tracking_uri).resolve().as_uri()


def wandb_mode(mode: str) -> str:
    """``train.wandb.mode`` resolved: ``auto`` is ``offline`` where ``WANDB_MODE`` says so or no
    ``WANDB_API_KEY`` is set, else ``online``.

    >>> wandb_mode("offline")
    'offline'
    """
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return "offline"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Trackers:
    """Every tracker of ``train.trackers`` for one run, rank 0 only: :meth:`write` one step's
    metrics, :meth:`close` with the run's artifacts."""

    PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}

    def __init__(self, out_dir: Path, start: int, tcfg, mixture: str, params: dict, curve: bool = False):
        self.out_dir, self.names = Path(out_dir), list(tcfg.trackers)
        self.path = self.out_dir / "metrics.csv"
        kept = []
        if start and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        self.file = open(self.path, "w", newline="")  # noqa: SIM115 (closed in close())
        self.writer = csv.DictWriter(self.file, fieldnames=METRICS + (CURVE_METRICS if curve else []),
                                     restval="", extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(kept)
        self.file.flush()
        self.tb = self.mlflow = self.wandb = None
        ids_path = self.out_dir / "trackers.json"
        ids = json.loads(ids_path.read_text()) if start and ids_path.exists() else {}
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"),
                                    purge_step=start + 1 if start else None)
        if "mlflow" in self.names:
            import mlflow

            uri = mlflow_uri(tcfg.mlflow.tracking_uri)
            if uri.startswith("file:"):  # MLflow 3 keeps its folder store for those who ask for one
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.mlflow = mlflow.MlflowClient(uri)
            if ids.get("mlflow"):
                self.mlflow_run = ids["mlflow"]
            else:
                experiment = self.mlflow.get_experiment_by_name(tcfg.mlflow.experiment)
                experiment_id = (experiment.experiment_id if experiment is not None else
                                 self.mlflow.create_experiment(tcfg.mlflow.experiment))
                self.mlflow_run = self.mlflow.create_run(experiment_id, run_name=mixture).info.run_id
                params = flat_params(params)
                from mlflow.entities import Param

                items = [Param(k, v) for k, v in sorted(params.items())]
                for i in range(0, len(items), 100):  # (MLflow takes at most 100 params a batch)
                    self.mlflow.log_batch(self.mlflow_run, params=items[i:i + 100])
            ids["mlflow"], ids["mlflow_tracking_uri"] = self.mlflow_run, uri
            log.info("mlflow: run %s at %s", self.mlflow_run, uri)
        if "wandb" in self.names:
            import wandb

            mode = wandb_mode(tcfg.wandb.mode)
            self.wandb = wandb.init(project=tcfg.wandb.project, name=mixture, dir=str(self.out_dir),
                                    config=params, mode=mode, id=ids.get("wandb"),
                                    resume="allow" if ids.get("wandb") else None,
                                    settings=wandb.Settings(silent=True, x_disable_stats=True))
            ids["wandb"] = self.wandb.id
            log.info("wandb: run %s (%s) in %s", self.wandb.id, mode, self.out_dir / "wandb")
        if ids:
            write_json_atomic(ids_path, ids)

    def write(self, row: dict) -> None:
        """One logged step: ``row`` holds every name of :data:`METRICS`."""
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        step = row["step"]
        if self.tb is not None:
            for k in SCALARS:
                self.tb.add_scalar(f"train/{k}", row[k], step)
        if self.mlflow is not None:
            from mlflow.entities import Metric

            now = int(1000 * time.time())
            self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(f"train/{k}", float(row[k]), now, step)
                                                            for k in SCALARS])
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": row[k] for k in SCALARS}, step=step)
        log.info("step %d loss %.4f lr %.2g grad norm %.3g %.0f tokens/s", step, row["loss"], row["lr"],
                 row["grad_norm"], row["tokens_per_s"])

    def write_curve(self, step: int, scores: list[dict]) -> None:
        """One scored step of the curve: ``scores`` holds one ``{"eval_split", "eval_dataset",
        "eval_score", "eval_loss"}`` per dataset (the score is written exactly, the loss to 6 digits)."""
        for row in scores:
            self.writer.writerow({"step": step, **{k: row[k] for k in ("eval_split", "eval_dataset")},
                                  "eval_score": repr(row["eval_score"]),
                                  "eval_loss": f"{row['eval_loss']:.6g}"})
        self.file.flush()
        scalars = {f"{r['eval_split']}/{r['eval_dataset']}/{k}": float(r[f"eval_{k}"])
                   for r in scores for k in ("score", "loss")}
        if self.tb is not None:
            for name, value in scalars.items():
                self.tb.add_scalar(name, value, step)
            self.tb.flush()
        if self.mlflow is not None:
            from mlflow.entities import Metric

            now = int(1000 * time.time())
            self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(k, v, now, step)
                                                            for k, v in scalars.items()])
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        log.info("step %d curve: %s", step, ", ".join(f"{r['eval_split']} {r['eval_dataset']} "
                                                      f"{r['eval_score']:.2f} (loss {r['eval_loss']:.4f})"
                                                      for r in scores))

    def close(self, artifacts: list[Path] = ()) -> None:
        """Close every tracker; MLflow and W&B get ``artifacts`` (files) first."""
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            for path in artifacts:
                self.mlflow.log_artifact(self.mlflow_run, str(path))
            self.mlflow.set_terminated(self.mlflow_run)
        if self.wandb is not None:
            for path in artifacts:
                self.wandb.save(str(path), base_path=str(Path(path).parent), policy="now")
            self.wandb.finish()


def log_eval_results(model_dir: str | Path, files: list[Path]) -> int:
    """Add the eval result ``files`` to the MLflow run of the model folder (``trackers.json``), under
    ``eval/``; returns how many were logged (0 where the run had no MLflow tracker)."""
    ids_path = Path(model_dir) / "trackers.json"
    ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.is_file() else {}
    if not ids.get("mlflow") or not files:
        return 0
    import mlflow

    uri = ids["mlflow_tracking_uri"]
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(uri)
    for path in files:
        client.log_artifact(ids["mlflow"], str(path), artifact_path="eval")
    return len(files)


def curve_rows(path: str | Path) -> list[dict]:
    """The curve's rows of a ``metrics.csv`` (``train.eval_every``), as written: step, split,
    dataset, score and loss (numbers); [] where there are none."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return [{"step": int(r["step"]), "eval_split": r["eval_split"], "eval_dataset": r["eval_dataset"],
                 "eval_score": float(r["eval_score"]), "eval_loss": float(r["eval_loss"])}
                for r in csv.DictReader(f) if r.get("eval_split")]
