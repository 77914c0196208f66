"""The workflow end to end with Snakemake itself, on the embedded default."""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flanpipe.core.config import load_config
from flanpipe.core.config.registry import embedded_datasets, load_registry
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO, run_snakemake

CFG = load_config(REPO / "config/config.yaml")
PLAN = Plan(CFG)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(demo_run):
    return demo_run


def test_download_outputs_and_manifests(workdir):
    reg = load_registry()
    for name in embedded_datasets():
        out = workdir / "data/raw" / name
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["dataset"] == name and manifest["cluster"] == reg.datasets[name].cluster
        for role in ("train", "eval"):
            info = manifest["splits"][role]
            assert pq.read_table(out / f"{role}.parquet").num_rows == info["rows"] > 0
            assert info["rows_read"] == info["rows"] + info["rejected"]
        assert (workdir / f"logs/download/{name}.log").read_text().count("rows read") == 2
        assert (workdir / f"benchmarks/download/{name}.tsv").exists()


def test_templatized_outputs(workdir):
    for name in embedded_datasets():
        table = pq.read_table(workdir / f"data/templatized/{name}.parquet")
        manifest = json.loads((workdir / f"data/templatized/{name}.manifest.json").read_text())
        raw = json.loads((workdir / f"data/raw/{name}/manifest.json").read_text())
        # one rendering per train example and pass (templatize.passes)
        assert manifest["outputs"]["train"]["rows"] == raw["splits"]["train"]["rows"] * manifest["passes"]
        assert manifest["outputs"]["train"]["examples"] == raw["splits"]["train"]["rows"]
        assert table.num_rows == manifest["outputs"]["train"]["rows"] + manifest["outputs"]["eval"]["rows"]
        assert set(table.column("dataset").to_pylist()) == {name}


def test_a_second_run_elsewhere_is_byte_identical(workdir, tmp_path):
    run_snakemake(tmp_path, "all", "--omit-from", "train")  # training has its own tests (test_train.py)
    outputs = [p for pattern in ("data/**/*.parquet", "data/**/*.npy", "models/tokenizer/**/*.model")
               for p in sorted(workdir.glob(pattern))]
    assert any(p.suffix == ".npy" for p in outputs) and any(p.suffix == ".model" for p in outputs)
    for path in outputs:
        twin = tmp_path / path.relative_to(workdir)
        assert twin.read_bytes() == path.read_bytes(), path


def test_rerun_has_nothing_to_do(workdir):
    proc = run_snakemake(workdir, "all", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@contextlib.contextmanager
def deleted(path):
    """Delete ``path`` for the block, then put it back with its old mtime (nothing to rerun)."""
    data, stat = path.read_bytes(), path.stat()
    path.unlink()
    try:
        yield
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_deleting_one_output_reruns_only_that_dataset(workdir):
    """sst2 is not held out: its own jobs rerun, then the jobs that read every dataset."""
    with deleted(workdir / "data/raw/sst2/train.parquet"):
        proc = run_snakemake(workdir, "all", "-n")
    text = proc.stdout + proc.stderr
    for rule in ("download", "pool", "templatize", "fingerprint", "decontaminate", "dedupe", "catalog"):
        assert re.search(rf"^{rule}\s+1$", text, re.M), (rule, text)
    assert re.search(rf"^mix\s+{len(PLAN.all_mixtures())}$", text, re.M), text
    assert re.search(rf"^pack\s+{len(PLAN.all_mixtures())}$", text, re.M), text
    assert re.search(r"^tokenizer\s+1$", text, re.M), text
    assert re.search(rf"^train\s+{len(PLAN.all_mixtures())}$", text, re.M), text
    jobs = _jobs(text)
    data_rules = {"download", "pool", "templatize", "fingerprint", "decontaminate"}
    assert {w.get("dataset") for rule, w in jobs if rule in data_rules} == {"sst2"}
    # every model is retrained (dedupe reads every dataset), so every evaluation reruns too
    evaluations = [rule for rule, _ in jobs if rule.startswith("evaluate")]
    assert len(evaluations) == len(list((workdir / "results").rglob("*.json")))


def _jobs(dry_run: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run lists."""
    out = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", dry_run, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        found = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        pairs = found.group(1).split(", ") if found else []
        out.append((rule, dict(p.split("=", 1) for p in pairs)))
    return out


def test_deleting_a_heldout_dataset_rechecks_every_dataset_against_it(workdir):
    with deleted(workdir / "data/raw/rte/eval.parquet"):
        text = run_snakemake(workdir, "all", "-n").stdout
    assert re.search(rf"^decontaminate\s+{len(embedded_datasets())}$", text, re.M), text
    assert re.search(r"^fingerprint\s+1$", text, re.M), text


def test_bad_config_fails_before_any_job_runs(tmp_path):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["download"]["default_source"] = "ftp"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "all", config_file=bad, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "download.default_source" in err and "'embedded', 'hub' or 'local'" in err
    assert not (tmp_path / "data").exists()


def test_lint_passes(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _job_processes(workdir: Path) -> list[int]:
    """The processes of jobs that Snakemake runs in ``workdir`` (their scripts are in its
    ``.snakemake/scripts``)."""
    scripts, found = str(workdir / ".snakemake/scripts"), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and scripts in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_killed_job_output_is_not_taken_as_complete(tmp_path):
    """Snakemake killed while a download runs leaves its incomplete marker on the job's outputs and
    the job's hidden temporaries, and no output. Outputs put back in place, as a download killed
    after renaming them (before Snakemake saw it end) leaves them, do not make the job done: the next
    run stops and names them; with --rerun-incomplete it downloads again, the same bytes, and removes
    the temporaries. A job that ended, by contrast, is done: nothing to do."""
    import signal
    import subprocess
    import time

    from tests.conftest import BIN

    # sst2 from a local folder, so that its train file can be a FIFO the job waits on
    src = tmp_path / "src"
    src.mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        shutil.copy(REPO / "flanpipe/data/embedded/sst2" / name, src / name)
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["download"]["sources"] = {"sst2": {"kind": "local", "path": str(src)}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target, out = "data/raw/sst2/manifest.json", tmp_path / "data/raw/sst2"
    run_snakemake(tmp_path, target, config_file=config)
    done = run_snakemake(tmp_path, target, "-n", config_file=config)
    assert "Nothing to be done" in done.stdout + done.stderr
    outputs = {path: (path.read_bytes(), path.stat()) for path in out.iterdir()}
    assert sorted(p.name for p in outputs) == ["eval.parquet", "manifest.json", "rejected.parquet",
                                               "train.parquet"]

    # Run it again and kill Snakemake's process group while the job waits to read its train file (a
    # FIFO nobody writes: the job cannot end first), once Snakemake has marked the job started.
    (src / "train.jsonl").rename(src / "train.jsonl.kept")
    os.mkfifo(src / "train.jsonl")
    markers = tmp_path / ".snakemake/incomplete"  # Snakemake 9 writes one per output of a started job
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(config), "--cores", "2", "--forcerun", "download", "--", target]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a speed test
        while not (list(out.glob(".train.parquet.*.tmp")) and len(list(markers.glob("*"))) == len(outputs)):
            assert proc.poll() is None, "snakemake ended before its job waited on the train file"
            assert time.monotonic() < deadline, f"no temporaries in {out} or no markers in {markers}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pid in _job_processes(tmp_path):  # a job outside the group would wait on the FIFO for ever
            os.kill(pid, signal.SIGKILL)
    (src / "train.jsonl").unlink()
    (src / "train.jsonl.kept").rename(src / "train.jsonl")
    run_snakemake(tmp_path, "--unlock", config_file=config)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
    assert list(out.glob(".*.tmp"))
    for path, (data, stat) in outputs.items():
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    stopped = run_snakemake(tmp_path, target, "-n", config_file=config, check=False)
    text = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "IncompleteFilesException" in text, text
    assert all(str(path.relative_to(tmp_path)) in text for path in outputs), text
    rerun = run_snakemake(tmp_path, target, "--rerun-incomplete", config_file=config)
    assert re.search(r"^download\s+1$", rerun.stdout + rerun.stderr, re.M)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in outputs)  # no temporaries
    for path, (data, _) in outputs.items():
        if path.suffix == ".parquet":
            assert path.read_bytes() == data, path
    done = run_snakemake(tmp_path, target, "-n", config_file=config)
    assert "Nothing to be done" in done.stdout + done.stderr


def test_summary_lists_every_dataset(workdir):
    import subprocess

    from tests.conftest import BIN

    proc = subprocess.run([str(BIN / "flanpipe"), "summary", "--data", str(workdir / "data")],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()[2:]
    assert sorted(line.split()[0] for line in lines) == sorted(embedded_datasets())
    assert all(" - " not in line for line in lines)


def test_few_shot_templatize_waits_for_its_decontamination(tmp_path):
    """A dataset whose template mix has few-shot rows (SST-2, in submixture `mine`) is templatized
    after its decontamination matches exist, so no exemplar is a contaminated row; the others are
    templatized as before, without that input."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["templatize"]["mix"] = {"overrides": {"mine": {"zs_opt": 0.5, "fs_opt": 0.5}}}
    cfg["mix"]["submixtures"] = {"flan2021": {}, "mine": {"datasets": ["sst2"], "weight": 0.5}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    text = run_snakemake(tmp_path, "all", "-n", config_file=config).stdout
    blocks = {re.search(r"wildcards: dataset=(\w+)", b).group(1): b
              for b in re.split(r"^(?=rule \w+:)", text, flags=re.M) if b.startswith("rule templatize:")}
    assert set(blocks) == set(embedded_datasets())
    assert "data/decontam/sst2.parquet" in blocks["sst2"]
    assert not any("data/decontam/" in b for name, b in blocks.items() if name != "sst2")


def _config_with_tokenizer(tmp_path, **tokenizer):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["tokenize"]["tokenizer"].update(tokenizer)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_tokenizer_per_mixture_when_not_shared(tmp_path):
    config = _config_with_tokenizer(tmp_path, shared=False)
    text = run_snakemake(tmp_path, "all", "-n", config_file=config).stdout
    assert re.search(rf"^tokenizer_per_mixture\s+{len(PLAN.all_mixtures())}$", text, re.M), text
    assert not re.search(r"^tokenizer\s+\d", text, re.M)
    for mixture in PLAN.all_mixtures():
        assert f"models/tokenizer/{mixture}/spm.model" in text


def test_a_given_tokenizer_file_is_copied_without_any_mixture(tmp_path):
    from flanpipe.core.config import TokenizerSource
    from flanpipe.core.tokens.tokenizers import train_spm
    from tests.unit.test_tokenizer import corpus

    model, size = train_spm(corpus(300), TokenizerSource(vocab_size=300), seed=1)
    (tmp_path / "given.model").write_bytes(model)
    config = _config_with_tokenizer(tmp_path, source="file", path=str(tmp_path / "given.model"))
    run_snakemake(tmp_path, "models/tokenizer/manifest.json", config_file=config)
    assert (tmp_path / "models/tokenizer/spm.model").read_bytes() == model
    manifest = json.loads((tmp_path / "models/tokenizer/manifest.json").read_text())
    assert manifest["vocab_size"] == size and manifest["source"]["file"] == str(tmp_path / "given.model")
    assert not (tmp_path / "data").exists()  # nothing upstream ran
