"""``flanpipe publish``: ``--dry-run`` lists a trained model's files with their sizes; without a
network, or without a token, the upload fails at once naming why, before any weight is read."""

import os
import subprocess

import pytest

from flanpipe.core.model.publish import PublishError, planned_uploads, publish
from tests.conftest import BIN
from tests.unit.test_train_guards import launch, packed  # noqa: F401 (the fixture)


@pytest.fixture(scope="module")
def model(packed, tmp_path_factory):  # noqa: F811
    """A LoRA run of the tiny Llama: ``hf/`` (the merged model) and ``adapter/`` (with ``base/``)."""
    out = tmp_path_factory.mktemp("publish") / "m"
    launch(packed, out, steps=2, adapter={"kind": "lora", "rank": 4})
    return out


def cli(*args, env=None):
    return subprocess.run([str(BIN / "flanpipe"), *args], capture_output=True, text=True, timeout=120,
                          env=os.environ | (env or {}))


def test_a_dry_run_lists_every_file_of_hf_and_adapter_with_its_size(model):
    proc = cli("publish", "--model", str(model), "--repo", "me/flanpipe-m", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    expected = sorted([p for p in (model / "hf").rglob("*") if p.is_file()]
                      + [p for p in (model / "adapter").rglob("*") if p.is_file()])
    assert {"README.md", "model.safetensors", "config.json"} <= {p.name for p in expected}
    assert any(p.parts[-2:] == ("adapter", "adapter_model.safetensors") for p in expected)
    listed = planned_uploads(model)
    assert sorted(u.path for u in listed) == expected
    for upload in listed:
        assert str(upload.path) in proc.stdout
        assert upload.size == upload.path.stat().st_size
    assert "adapter/adapter_model.safetensors" in proc.stdout and "model.safetensors" in proc.stdout
    total = sum(p.stat().st_size for p in expected)
    assert f"would upload {len(expected)} files" in proc.stdout and "to me/flanpipe-m" in proc.stdout
    assert total > 0


def test_without_network_or_token_the_upload_fails_at_once_naming_why(model, tmp_path):
    """HF_HUB_OFFLINE (set for the tests) stops it first; with it unset and no token, the token.
    Both before the weights are opened: the weights file is swapped for a named pipe with no writer,
    which would block whoever opened it (the command would time out)."""
    weights = model / "hf/model.safetensors"
    weights.rename(tmp_path / "weights")
    os.mkfifo(weights)
    try:
        proc = cli("publish", "--model", str(model), "--repo", "me/flanpipe-m", env={"HF_HUB_OFFLINE": "1"})
        assert weights.is_fifo()
        assert proc.returncode == 1
        assert "publish: HF_HUB_OFFLINE is set, so the Hub cannot be reached" in proc.stderr
        no_token = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home"),
                    "HF_TOKEN_PATH": str(tmp_path / "no-token")}
        env = {k: v for k, v in (os.environ | no_token).items() if not (k == "HF_TOKEN" and not v)}
        proc = subprocess.run([str(BIN / "flanpipe"), "publish", "--model", str(model), "--repo", "me/x"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 1
        assert "publish: no Hugging Face token; set HF_TOKEN or run `hf auth login`" in proc.stderr
    finally:
        weights.unlink()
        (tmp_path / "weights").rename(weights)
    with pytest.raises(PublishError, match="not a Hub repository id"):
        publish(model, "no-slash", dry_run=True)
