"""Experiment trackers (``train.trackers``): a real run of the tiny Llama logs to MLflow's local
folder store and to W&B offline, and what each holds reads back equal to what the trainer wrote in
``metrics.csv``; a tracker whose package is missing fails when the config is read."""

import csv
import glob
import json
import struct
import subprocess
import sys

import pytest

from flanpipe.core.config import ConfigError, parse_config
from flanpipe.core.train.trackers import flat_params
from tests.conftest import REPO
from tests.unit import guard_train
from tests.unit.test_train_guards import launch, packed  # noqa: F401 (the fixture)

STEPS = 3


def wandb_history(run_file) -> list[dict]:
    """The history records of a W&B run file (``run-<id>.wandb``), read as its format is written:
    LevelDB's log format (32 KiB blocks of records with a 7-byte header) after a 7-byte file
    header, each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            records.append(pending)
            pending = b""
    history = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return history


@pytest.fixture(scope="module")
def run(packed, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("tracked") / "m"
    uri = out.parent / "mlruns"
    launch(packed, out, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"}, steps=STEPS,
           trackers=["csv", "tensorboard", "mlflow", "wandb"],
           mlflow={"tracking_uri": str(uri), "experiment": "t"})
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    return out, uri, rows


def test_mlflow_holds_the_train_slice_and_every_steps_metrics(run, monkeypatch):
    import mlflow

    out, uri, rows = run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(uri.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "m" and runs[0].info.status == "FINISHED"
    got = runs[0]
    expected = guard_train.config(steps=STEPS, trackers=["csv", "tensorboard", "mlflow", "wandb"],
                                  mlflow={"tracking_uri": str(uri), "experiment": "t"})
    sliced = {"seed": expected.seed, "train": expected.train.model_dump(mode="json")}
    assert got.data.params == flat_params(sliced)
    assert got.data.params["train.model.hidden_size"] == "32" and got.data.params["train.lr"] == "0.01"
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        history = client.get_metric_history(got.info.run_id, f"train/{key}")
        assert [m.step for m in history] == [int(r["step"]) for r in rows]
        assert [f"{m.value:.6g}" for m in history] == [r[key] for r in rows]  # metrics.csv keeps 6 digits
    artifacts = {a.path for a in client.list_artifacts(got.info.run_id)}
    assert {"run.json", "loss.png"} <= artifacts
    logged = json.loads(open(client.download_artifacts(got.info.run_id, "run.json", str(out.parent))).read())
    assert logged == json.loads((out / "run.json").read_text())


def test_flanpipe_card_adds_the_evaluation_to_the_mlflow_run(run, tmp_path, monkeypatch):
    import mlflow

    from tests.conftest import BIN

    out, uri, _ = run
    (tmp_path / "eval").mkdir()
    result = {"model": "m", "dataset": "rte", "paper_name": "RTE", "cluster": "nli", "few_shot": False,
              "primary": "accuracy", "headline": {"mean": 52.5, "templates": 4,
                                                  "interval": {"low": 40.0, "high": 65.0}}}
    (tmp_path / "eval/rte.json").write_text(json.dumps(result))
    command = [str(BIN / "flanpipe"), "card", "--model", str(out), "--eval", str(tmp_path / "eval")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1 eval results added to the run's MLflow artifacts (eval/)" in proc.stdout
    card = (out / "hf/README.md").read_text()
    assert "| nli | rte | zero-shot | accuracy | eos | 52.5 | [40.0, 65.0] | 4 |" in card
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(uri.as_uri())
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/rte.json"]


def test_wandb_offline_writes_a_run_folder_whose_history_holds_the_losses(run):
    out, _, rows = run
    folders = glob.glob(str(out / "wandb/offline-run-*"))
    assert len(folders) == 1
    history = wandb_history(glob.glob(f"{folders[0]}/run-*.wandb")[0])
    assert [h["_step"] for h in history] == [int(r["step"]) for r in rows]
    assert [f"{h['train/loss']:.6g}" for h in history] == [r["loss"] for r in rows]
    assert json.loads((out / "trackers.json").read_text())["wandb"] in folders[0]


def test_a_tracker_whose_package_is_missing_fails_at_config_time_naming_it():
    """``wandb`` made unimportable by a finder in front of the import system, in a fresh interpreter."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'wandb': raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from flanpipe.core.config import parse_config\n"
            "parse_config({'train': {'trackers': ['csv', 'wandb']}})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "train.trackers: wandb needs the package 'wandb', which is not installed" in proc.stderr
    with pytest.raises(ConfigError, match="train.trackers: csv is needed"):
        parse_config({"train": {"trackers": ["mlflow"]}})


def test_a_killed_run_resumes_into_the_same_mlflow_run(packed, tmp_path, monkeypatch):  # noqa: F811
    import mlflow

    out, uri = tmp_path / "m", tmp_path / "mlruns"
    keys = {"steps": 4, "checkpoint_every": 2, "trackers": ["csv", "mlflow"],
            "mlflow": {"tracking_uri": str(uri), "experiment": "t"}}
    killed = launch(packed, out, check=False, env={"FLANPIPE_FAIL_AT_STEP": "3"}, **keys)
    assert killed.returncode != 0
    launch(packed, out, **keys)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(uri.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4] == [int(r["step"]) for r in rows]
    assert [f"{m.value:.6g}" for m in history] == [r["loss"] for r in rows]
