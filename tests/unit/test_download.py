"""The download stage on each source: embedded, local (JSONL, CSV, Parquet) and the hub code path."""

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import SourceSpec
from flanpipe.core.config.registry import HubSource, embedded_datasets, load_registry
from flanpipe.stages.download import DownloadError, download_dataset, read_hub_split

REG = load_registry()
EMBEDDED = REG.datasets["rte"]


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", embedded_datasets())
def test_every_embedded_dataset_downloads_clean(tmp_path, repo, name):
    manifest = download_dataset(name, SourceSpec(kind="embedded"), tmp_path, seed=1)
    spec = REG.datasets[name]
    for role, split in spec.split_roles.items():
        n_lines = len(_lines(repo / f"flanpipe/data/embedded/{name}/{split}.jsonl"))
        table = pq.read_table(tmp_path / f"{role}.parquet")
        assert table.num_rows == n_lines == manifest["splits"][role]["rows"]
        assert manifest["splits"][role]["rejected"] == 0
        assert table.schema.names == [*spec.features, "row_index"]
    assert manifest["splits"]["train"]["rows"] >= 40 and manifest["splits"]["eval"]["rows"] >= 20


def test_rerun_is_byte_identical(tmp_path):
    download_dataset("rte", SourceSpec(kind="embedded"), tmp_path / "a", seed=1)
    download_dataset("rte", SourceSpec(kind="embedded"), tmp_path / "b", seed=1)
    for name in ["train.parquet", "eval.parquet", "rejected.parquet"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _rte_rows(n, start=0):
    return [{"premise": f"Premise number {i} is here.", "hypothesis": f"Hypothesis {i}.",
             "idx": i, "label": i % 2} for i in range(start, start + n)]


def test_local_jsonl_and_csv_with_bad_rows_lose_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    train = [json.dumps(r) for r in _rte_rows(5)]
    train.insert(2, '{"premise": "cut off')
    train.append(json.dumps({"premise": "p", "hypothesis": "h", "idx": 9, "label": 4}))
    (src / "train.jsonl").write_text("\n".join(train) + "\n")
    csv = ["premise,hypothesis,idx,label", "A dog runs.,An animal moves.,0,0", ",Empty premise.,1,1",
           "It is late.,It is early.,2,1"]
    (src / "validation.csv").write_text("\n".join(csv) + "\n")

    out = tmp_path / "out"
    manifest = download_dataset("rte", SourceSpec(kind="local", path=str(src)), out, seed=1)
    tr, ev = manifest["splits"]["train"], manifest["splits"]["eval"]
    assert (tr["rows_read"], tr["rows"], tr["rejected"]) == (7, 5, 2)
    assert tr["rejected_by_kind"] == {"invalid_json": 1, "label_out_of_range": 1}
    assert (ev["rows_read"], ev["rows"], ev["rejected"]) == (3, 2, 1)
    assert ev["rejected_by_kind"] == {"empty_text": 1}
    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    assert [(r["split"], r["row_index"], r["kind"]) for r in rejected] == [
        ("train", 2, "invalid_json"), ("train", 6, "label_out_of_range"),
        ("validation", 1, "empty_text")]
    assert manifest["rejected"]["rows"] == 3
    assert pq.read_table(out / "eval.parquet").column("label").to_pylist() == [0, 1]


def test_local_parquet_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(_rte_rows(4)), src / "train.parquet")
    pq.write_table(pa.Table.from_pylist(_rte_rows(2, start=10)), src / "validation.parquet")
    manifest = download_dataset("rte", SourceSpec(kind="local", path=str(src)), tmp_path / "o", 1)
    assert manifest["splits"]["train"]["rows"] == 4
    assert pq.read_table(tmp_path / "o/eval.parquet").column("idx").to_pylist() == [10, 11]


def test_local_source_missing_a_split_names_the_expected_files(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(_rte_rows(1)[0]) + "\n")
    with pytest.raises(DownloadError, match=r"validation.parquet, validation.jsonl"):
        download_dataset("rte", SourceSpec(kind="local", path=str(tmp_path)), tmp_path / "o", 1)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_hub_loading_code_reads_a_hub_layout_repository(tmp_path):
    """The real datasets.load_dataset call, on a dataset repository laid out as on the hub."""
    repo = tmp_path / "hub_repo"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_rte_rows(6)), repo / "data/train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(_rte_rows(3, 50)),
                   repo / "data/validation-00000-of-00001.parquet")
    spec = EMBEDDED.model_copy(update={"hub": HubSource(id=str(repo), config=None)})
    batches, revision = read_hub_split(spec, "validation", None, batch_rows=2)
    table = pa.concat_tables([t for t, _ in batches])
    assert table.num_rows == 3 and table.column("idx").to_pylist() == [50, 51, 52]
    assert revision.startswith("local-path:")


def test_hub_without_network_fails_with_guidance(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        download_dataset("rte", SourceSpec(kind="hub"), tmp_path, seed=1)
    msg = str(err.value)
    assert "aps/super_glue" in msg and "download.sources.rte: {kind: local, path: DIR}" in msg
    assert not (tmp_path / "manifest.json").exists()


def test_dataset_without_hub_copy_says_how_to_supply_it(tmp_path):
    with pytest.raises(DownloadError, match="Where to get the files"):
        download_dataset("story_cloze", SourceSpec(kind="hub"), tmp_path, seed=1)


# --- the hub's auto-converted Parquet branch (refs/convert/parquet), laid out locally as on the hub --

XSUM_DOC = ("The full cost of damage in Newton Stewart, one of the areas worst affected, is still being "
            "assessed. Repair work is ongoing in Hawick and many roads in Peeblesshire remain badly "
            "affected by standing water. ") * 40


def _xsum_rows(ids):
    return [{"document": f"{XSUM_DOC} Report {i}.", "summary": f"Clean-up continues in area {i}.",
             "id": str(35232142 + i)} for i in ids]


def _write(root, rel, rows):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_parquet_branch_default_config_with_sharded_split_folders(tmp_path):
    """xsum (registry config null) on today's layout: default/<split>/0000.parquet, 0001.parquet."""
    branch = tmp_path / "branch"
    _write(branch, "default/train/0001.parquet", _xsum_rows([3, 4]))  # written first: order by name
    _write(branch, "default/train/0000.parquet", _xsum_rows([0, 1, 2]))
    _write(branch, "default/validation/0000.parquet", _xsum_rows([10]))
    _write(branch, "default/test/0000.parquet", _xsum_rows([20, 21]))
    (branch / ".gitattributes").write_text("*.parquet filter=lfs\n")  # a branch copy holds this too
    manifest = download_dataset("xsum", SourceSpec(kind="hub", path=str(branch)), tmp_path / "o", 1)
    train = pq.read_table(tmp_path / "o/train.parquet")
    assert train.column("id").to_pylist() == [str(35232142 + i) for i in range(5)]
    assert train.column("document").to_pylist()[0] == f"{XSUM_DOC} Report 0."
    tr, ev = manifest["splits"]["train"], manifest["splits"]["eval"]
    assert tr["parquet_branch"] == {"config": "default", "layout": "split_folder", "partial": False,
                                    "files": ["default/train/0000.parquet", "default/train/0001.parquet"]}
    assert tr["revision_resolved"] == f"local-path:{branch.resolve()}"
    assert (ev["source_split"], ev["rows"]) == ("validation", 1)


def test_parquet_branch_older_flat_layout_under_the_script_config_name(tmp_path):
    """samsum's branch as the converter first wrote it: samsum/samsum-<split>.parquet (one config)."""
    branch = tmp_path / "branch"
    dialogue = ("Amanda: I baked cookies. Do you want some?\r\nJerry: Sure!\r\n"
                "Amanda: I'll bring you tomorrow :-)")
    rows = [{"id": f"13818{i:03d}", "dialogue": dialogue, "summary": "Amanda baked cookies."}
            for i in range(4)]
    _write(branch, "samsum/samsum-train.parquet", rows[:3])
    _write(branch, "samsum/samsum-validation.parquet", rows[3:])
    _write(branch, "samsum/samsum-test.parquet", [])
    manifest = download_dataset("samsum", SourceSpec(kind="hub", path=str(branch)), tmp_path / "o", 1)
    assert manifest["splits"]["train"]["parquet_branch"]["files"] == ["samsum/samsum-train.parquet"]
    assert manifest["splits"]["train"]["parquet_branch"]["layout"] == "flat"
    assert pq.read_table(tmp_path / "o/eval.parquet").column("id").to_pylist() == ["13818003"]


def test_parquet_branch_named_config_and_sharded_flat_files(tmp_path):
    """web_nlg names its config and its validation split `dev`; shards -00000-of-00002 in order."""
    from flanpipe.stages.download import locate_branch_split

    paths = ["release_v3.0_en/web_nlg-dev-00001-of-00002.parquet",
             "release_v3.0_en/web_nlg-dev-00000-of-00002.parquet",
             "release_v3.0_en/web_nlg-train.parquet", "release_v3.0_ru/web_nlg-dev.parquet"]
    found = locate_branch_split(paths, "release_v3.0_en", "dev")
    assert found.files == ("release_v3.0_en/web_nlg-dev-00000-of-00002.parquet",
                           "release_v3.0_en/web_nlg-dev-00001-of-00002.parquet")
    with pytest.raises(DownloadError, match=r"no config 'default'; it has \['release_v3.0_en', "
                                            r"'release_v3.0_ru'\]; name one"):
        locate_branch_split(paths, None, "dev")
    with pytest.raises(DownloadError, match=r"no split 'test' in config 'release_v3.0_en'; it has "
                                            r"\['dev', 'train'\]"):
        locate_branch_split(paths, "release_v3.0_en", "test")
    partial = locate_branch_split(["default/partial-train/0000.parquet"], None, "train")
    assert partial.partial and partial.files == ("default/partial-train/0000.parquet",)


def test_script_only_repository_falls_back_to_the_parquet_branch(tmp_path):
    """The real load_dataset refuses a repository holding only a loading script; the branch is read."""
    repo = tmp_path / "trec_repo"
    repo.mkdir()
    (repo / "trec_repo.py").write_text("import datasets\n")
    spec = REG.datasets["trec"]
    spec = spec.model_copy(update={"hub": spec.hub.model_copy(update={"id": str(repo),
                                                                       "parquet_branch": False})})
    branch = tmp_path / "branch"
    rows = [{"text": "How far is it from Denver to Aspen ?", "coarse_label": 5, "fine_label": 40},
            {"text": "What county is Modesto , California in ?", "coarse_label": 4, "fine_label": 32}]
    _write(branch, "default/test/0000.parquet", rows)
    from flanpipe.stages.download import _open_split

    batches, origin = _open_split(spec, SourceSpec(kind="hub", path=str(branch)), "test", 1)
    assert origin["parquet_branch_fallback"] is True
    assert [t.to_pylist() for t, _ in batches] == [[row] for row in rows]
    with pytest.raises(DownloadError, match="ships only a loading script.*parquet_branch is false"):
        _open_split(spec, SourceSpec(kind="hub", parquet_branch=False), "test", 1)


def test_parquet_branch_offline_fails_with_the_copy_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        download_dataset("samsum", SourceSpec(kind="hub"), tmp_path, seed=1)
    msg = str(err.value)
    assert "hf download Samsung/samsum --repo-type dataset --revision refs/convert/parquet" in msg
    assert "download.sources.samsum: {kind: hub, path: DIR}" in msg
    assert not (tmp_path / "manifest.json").exists()


def test_math_dataset_bytes_reprs_are_decoded_with_a_count(tmp_path):
    """The hub's math_dataset holds str(bytes) of each file line; one is not UTF-8 and is quarantined."""
    branch = tmp_path / "branch"
    train = [{"question": "b'Solve 24 = 1601*c - 1605*c for c.\\n'", "answer": "b'6\\n'"},
             {"question": "b'Solve -3*h = -2*h + 4 for h.\\n'", "answer": "b'-4\\n'"},
             {"question": 'b"What\'s x if 2*x = 4?\\n"', "answer": "b'2\\n'"},
             {"question": "b'Solve 0 = 4*b + b + 15 for \\xff.\\n'", "answer": "b'-3\\n'"}]
    _write(branch, "algebra__linear_1d/train/0000.parquet", train)
    _write(branch, "algebra__linear_1d/test/0000.parquet",
           [{"question": "Solve 5*z = 10 for z.", "answer": "2"}])  # already text: left as it is
    manifest = download_dataset("math_dataset", SourceSpec(kind="hub", path=str(branch)),
                                tmp_path / "o", 1)
    table = pq.read_table(tmp_path / "o/train.parquet")
    assert table.column("question").to_pylist() == ["Solve 24 = 1601*c - 1605*c for c.",
                                                    "Solve -3*h = -2*h + 4 for h.",
                                                    "What's x if 2*x = 4?"]
    assert table.column("answer").to_pylist() == ["6", "-4", "2"]
    tr = manifest["splits"]["train"]
    assert tr["bytes_reprs_decoded"] == {"question": 3, "answer": 4}
    assert tr["rejected_by_kind"] == {"undecodable_bytes": 1}
    assert manifest["splits"]["eval"]["bytes_reprs_decoded"] == {"question": 0, "answer": 0}
    rejected = pq.read_table(tmp_path / "o/rejected.parquet").to_pylist()
    assert [(r["row_index"], r["kind"]) for r in rejected] == [(3, "undecodable_bytes")]
    assert "not valid Python or not UTF-8" in rejected[0]["reason"]


def test_hub_path_is_a_parquet_branch_copy_only_where_the_branch_is_read():
    from flanpipe.core.config import ConfigError, parse_config

    cfg = parse_config({"download": {"sources": {"rte": {"kind": "hub", "parquet_branch": True,
                                                         "path": "/data/rte_branch"}}}})
    assert cfg.download.source_for("rte").path == "/data/rte_branch"
    for rte, words in [({"kind": "hub", "path": "/x"}, "rte.path: with kind 'hub'"),
                       ({"kind": "hub", "path": "/x", "parquet_branch": False}, "drop one of them"),
                       ({"kind": "local", "path": "/x", "parquet_branch": True},
                        "'parquet_branch' is only used with kind 'hub'")]:
        with pytest.raises(ConfigError, match=words):
            parse_config({"download": {"sources": {"rte": rte}}})


def test_newsroom_extracted_jsonl_read_locally_drops_the_archive_field(tmp_path):
    """Newsroom's release lines, extracted from dev.jsonl.gz and renamed as the instructions say."""
    line = {"url": "http://www.nytimes.com/2005/01/01/sports/one.html", "archive": "http://web.archive.org/x",
            "title": "A Title", "date": "20050101", "text": "Body of the article. " * 200,
            "summary": "A summary.", "compression_bin": "high", "density_bin": "extractive",
            "coverage_bin": "high", "density": 11.5, "coverage": 0.97, "compression": 41.0}
    for split in ("train", "validation"):
        rows = [{**line, "url": f"{line['url']}?{split}{i}"} for i in range(3)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = download_dataset("newsroom", SourceSpec(kind="local", path=str(tmp_path)),
                                tmp_path / "o", seed=1)
    ev = manifest["splits"]["eval"]
    assert (ev["rows"], ev["rejected"], ev["extra_columns_dropped"]) == (3, 0, ["archive"])
    table = pq.read_table(tmp_path / "o/eval.parquet")
    assert table.column("density").to_pylist() == [11.5] * 3
    assert table.schema.names == [*REG.datasets["newsroom"].features, "row_index"]


# --- reading in batches: the same bytes for any batch size, nothing half-written ------------------

def _rte_source_with_every_kind_of_bad_row(src, fmt):
    """Rows spread over several batches at batch_rows=3, bad rows of each kind in different batches."""
    rows = _rte_rows(11)
    rows[1] = {**rows[1], "label": 7}                          # label_out_of_range
    rows[4] = {k: v for k, v in rows[4].items() if k != "label"}  # missing_field
    rows[8] = {**rows[8], "hypothesis": "  "}                  # empty_text
    src.mkdir(exist_ok=True)
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in rows]
        lines.insert(6, '{"premise": "cut off')             # invalid_json
        (src / "train.jsonl").write_text("\n".join(lines) + "\n")
    elif fmt == "csv":
        text = "premise,hypothesis,idx,label\n" + "".join(
            f"{r['premise']},{r['hypothesis']},{r['idx']},{r.get('label', '')}\n" for r in rows)
        (src / "train.csv").write_text(text)
    else:
        pq.write_table(pa.Table.from_pylist(rows), src / "train.parquet", row_group_size=4)
    pq.write_table(pa.Table.from_pylist(_rte_rows(5, start=100)), src / "validation.parquet")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_batched_download_equals_one_batch_byte_for_byte(tmp_path, fmt):
    """batch_rows=1 and 3 (batches cut through bad rows and Parquet row groups) against one batch."""
    from flanpipe.core.io import ROW_GROUP_ROWS

    src = tmp_path / "src"
    _rte_source_with_every_kind_of_bad_row(src, fmt)
    source = SourceSpec(kind="local", path=str(src))
    whole = download_dataset("rte", source, tmp_path / "whole", seed=1, batch_rows=ROW_GROUP_ROWS)
    for batch_rows in (1, 3):
        out = tmp_path / f"b{batch_rows}"
        manifest = download_dataset("rte", source, out, seed=1, batch_rows=batch_rows)
        for name in ("train.parquet", "eval.parquet", "rejected.parquet"):
            assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
        assert manifest["splits"] == whole["splits"] and manifest["rejected"] == whole["rejected"]
    # The counts, worked by hand: 11 rows (+1 bad JSON line), 3 or 4 rejected, positions global.
    tr = whole["splits"]["train"]
    expected = {"label_out_of_range": 1, "missing_field": 1, "empty_text": 1}
    if fmt == "jsonl":
        expected["invalid_json"] = 1
    assert tr["rejected_by_kind"] == expected
    assert (tr["rows_read"], tr["rows"]) == (11 + (fmt == "jsonl"), 8)
    rejected = pq.read_table(tmp_path / "whole/rejected.parquet").column("row_index").to_pylist()
    assert rejected == ([1, 4, 6, 9] if fmt == "jsonl" else [1, 4, 8])
    kept = pq.read_table(tmp_path / "whole/train.parquet")
    assert kept.column("idx").to_pylist() == [0, 2, 3, 5, 6, 7, 9, 10]


def test_hub_and_parquet_branch_reads_in_batches_equal_one_batch(tmp_path):
    """load_dataset's Arrow cache and a two-file Parquet branch, read 2 rows at a time."""
    repo = tmp_path / "hub_repo"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_rte_rows(7)), repo / "data/train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(_rte_rows(3, 50)), repo / "data/validation-00000-of-00001.parquet")
    spec = EMBEDDED.model_copy(update={"hub": HubSource(id=str(repo), config=None)})
    batches, _ = read_hub_split(spec, "train", None, batch_rows=2)
    tables = [t for t, _ in batches]
    assert [t.num_rows for t in tables] == [2, 2, 2, 1]
    assert pa.concat_tables(tables).column("idx").to_pylist() == list(range(7))

    branch = tmp_path / "branch"
    _write(branch, "default/train/0000.parquet", _xsum_rows([0, 1, 2]))
    _write(branch, "default/train/0001.parquet", _xsum_rows([3, 4]))
    _write(branch, "default/validation/0000.parquet", _xsum_rows([10]))
    _write(branch, "default/test/0000.parquet", _xsum_rows([20]))
    source = SourceSpec(kind="hub", path=str(branch))
    one = download_dataset("xsum", source, tmp_path / "one", seed=1)
    two = download_dataset("xsum", source, tmp_path / "two", seed=1, batch_rows=2)
    assert one["splits"] == two["splits"]
    assert (tmp_path / "one/train.parquet").read_bytes() == (tmp_path / "two/train.parquet").read_bytes()


def test_a_killed_download_leaves_no_output_and_the_rerun_cleans_up(tmp_path):
    """SIGKILL a real download while it writes (its first row group of train rows is in the
    temporary, eval not read yet); no output file exists; the rerun completes."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    src = tmp_path / "src"
    src.mkdir()
    n = 40_000  # over 2 row groups (16,384 rows), so a row group is written before the end
    pq.write_table(pa.table({"premise": [f"Premise {i} about a long day." for i in range(n)],
                             "hypothesis": [f"Hypothesis {i}." for i in range(n)],
                             "idx": range(n), "label": [i % 2 for i in range(n)]}), src / "train.parquet")
    pq.write_table(pa.Table.from_pylist(_rte_rows(3)), src / "validation.parquet")
    out = tmp_path / "out"
    ready = tmp_path / "first-row-group-written"
    # The download pauses after writing its first train row group: it says so in `ready`, then waits
    # to be killed. No timing decides where the kill lands.
    code = textwrap.dedent(f"""
        import os
        import time
        from pathlib import Path

        from flanpipe.core.config import SourceSpec
        from flanpipe.core.io import RowGroupWriter
        from flanpipe.stages.download import download_dataset

        flush = RowGroupWriter._flush

        def flush_then_wait(self, rows):
            flush(self, rows)
            if self.path.name.startswith(".train.parquet."):
                Path({str(ready)!r} + ".tmp").write_text(str(self.path))
                os.replace({str(ready)!r} + ".tmp", {str(ready)!r})  # whole when it appears
                time.sleep(600)

        RowGroupWriter._flush = flush_then_wait
        download_dataset("rte", SourceSpec(kind="local", path={str(src)!r}), {str(out)!r}, 1, batch_rows=50)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120  # a guard against a hung child, not a speed test
        while not ready.exists():
            assert proc.poll() is None, "the download ended before its first train row group"
            assert time.monotonic() < deadline, "no train row group written in 120 s"
            time.sleep(0.05)
        assert Path(ready.read_text()).stat().st_size > 0  # the temporary holds a row group
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
    assert list(out.glob(".*.tmp"))  # what the killed job left: hidden temporaries only
    manifest = download_dataset("rte", SourceSpec(kind="local", path=str(src)), out, seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["eval.parquet", "manifest.json",
                                                     "rejected.parquet", "train.parquet"]
    assert manifest["splits"]["train"]["rows"] == pq.read_metadata(out / "train.parquet").num_rows == n


# --- row-level faults stay row-level; file-level faults are loud (issue 22) ----------------------

BAD_JSONL_LINES = {
    "invalid_utf8": b'{"premise": "caf\xe9 au lait", "hypothesis": "h", "idx": 900, "label": 0}',
    "invalid_unicode": b'{"premise": "half a pair: \\ud800", "hypothesis": "h", "idx": 901, "label": 0}',
    "invalid_json": b'{"premise": "cut off',
}


def _local_rte(src, train_name, train_bytes):
    src.mkdir(exist_ok=True)
    (src / train_name).write_bytes(train_bytes)
    pq.write_table(pa.Table.from_pylist(_rte_rows(3, start=100)), src / "validation.parquet")
    return SourceSpec(kind="local", path=str(src))


@pytest.mark.parametrize("kind", list(BAD_JSONL_LINES))
@pytest.mark.parametrize("batch_rows", [7, 16_384])
def test_one_bad_jsonl_line_is_quarantined_and_the_40_good_rows_kept(tmp_path, kind, batch_rows):
    lines = [json.dumps(r).encode() for r in _rte_rows(40)]
    lines.insert(17, BAD_JSONL_LINES[kind])
    source = _local_rte(tmp_path / "src", "train.jsonl", b"\n".join(lines) + b"\n")
    manifest = download_dataset("rte", source, tmp_path / "out", seed=1, batch_rows=batch_rows)
    train = manifest["splits"]["train"]
    assert (train["rows_read"], train["rows"], train["rejected_by_kind"]) == (41, 40, {kind: 1})
    assert pq.read_table(tmp_path / "out/train.parquet").column("idx").to_pylist() == list(range(40))
    [rejected] = pq.read_table(tmp_path / "out/rejected.parquet").to_pylist()
    assert (rejected["row_index"], rejected["kind"]) == (17, kind)
    assert rejected["row"].startswith('{"premise": ')


def test_fast_and_line_by_line_jsonl_paths_give_the_same_bytes(tmp_path):
    """A clean batch takes the fast path, a batch with a fault the per-line one: same kept rows."""
    rows = [json.dumps(r).encode() for r in _rte_rows(12)]
    clean = _local_rte(tmp_path / "clean", "train.jsonl", b"\n".join(rows) + b"\n")
    faulty = _local_rte(tmp_path / "faulty", "train.jsonl",
                        b"\n".join([*rows, BAD_JSONL_LINES["invalid_utf8"]]) + b"\n")
    download_dataset("rte", clean, tmp_path / "a", seed=1)
    download_dataset("rte", faulty, tmp_path / "b", seed=1)
    assert pq.read_table(tmp_path / "a/train.parquet").equals(pq.read_table(tmp_path / "b/train.parquet"))


def test_a_ragged_csv_row_is_quarantined_and_the_good_rows_kept(tmp_path):
    lines = ["premise,hypothesis,idx,label",
             *(f"Premise {i}.,Hypothesis {i}.,{i},{i % 2}" for i in range(41))]
    lines.insert(42, "Too many,cells,41,0,surplus")
    source = _local_rte(tmp_path / "src", "train.csv", ("\n".join(lines) + "\n").encode())
    manifest = download_dataset("rte", source, tmp_path / "out", seed=1)
    train = manifest["splits"]["train"]
    assert (train["rows_read"], train["rows"], train["rejected_by_kind"]) == (42, 41, {"ragged_row": 1})
    [rejected] = pq.read_table(tmp_path / "out/rejected.parquet").to_pylist()
    assert rejected["row"] == "Too many,cells,41,0,surplus" and rejected["row_index"] == 41


@pytest.mark.parametrize("batch_rows", [4, 16_384])
def test_a_csv_row_with_bad_utf8_is_quarantined_and_the_good_rows_kept(tmp_path, batch_rows):
    lines = [b"premise,hypothesis,idx,label",
             *(f"Premise {i}.,Hypothesis {i}.,{i},{i % 2}".encode() for i in range(40))]
    lines.insert(6, b"Caf\xe9 au lait.,A drink.,99,0")
    source = _local_rte(tmp_path / "src", "train.csv", b"\n".join(lines) + b"\n")
    manifest = download_dataset("rte", source, tmp_path / "out", seed=1, batch_rows=batch_rows)
    train = manifest["splits"]["train"]
    assert (train["rows_read"], train["rows"], train["rejected_by_kind"]) == (41, 40, {"invalid_utf8": 1})
    [rejected] = pq.read_table(tmp_path / "out/rejected.parquet").to_pylist()
    assert rejected["row_index"] == 5 and rejected["row"] == "Caf\\xe9 au lait.,A drink.,99,0"
    assert pq.read_table(tmp_path / "out/train.parquet").column("idx").to_pylist() == list(range(40))


@pytest.mark.parametrize("name, content, words", [
    ("train.jsonl", b"", "has no rows"),
    ("train.jsonl", b"\n \n", "has no rows"),
    ("train.jsonl", b'[{"premise": "p", "hypothesis": "h", "idx": 0, "label": 0}]\n', "a JSON array"),
    ("train.jsonl", b"premise,hypothesis,idx,label\np,h,0,0\n", "CSV or TSV text"),
    ("train.json", b'{"premise": "p", "hypothesis": "h", "idx": 0, "label": 5}\n', "every one of the 1 rows"),
    ("train.csv", b"premise,hypothesis,idx,label\n", "has no rows"),
    ("train.csv", b"", "could not read it as CSV"),
    ("train.parquet", b"PAR1 not really a Parquet file", "could not read it as Parquet"),
])
def test_a_file_that_is_not_what_its_name_says_stops_the_download_naming_it(tmp_path, name, content,
                                                                              words):
    source = _local_rte(tmp_path / "src", name, content)
    with pytest.raises(DownloadError, match=words) as err:
        download_dataset("rte", source, tmp_path / "out", seed=1)
    assert str(tmp_path / "src" / name) in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_truncated_parquet_source_names_its_path(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(_rte_rows(50)), src / "train.parquet")
    data = (src / "train.parquet").read_bytes()
    source = _local_rte(src, "train.parquet", data[: len(data) // 2])
    with pytest.raises(DownloadError, match="could not read it as Parquet") as err:
        download_dataset("rte", source, tmp_path / "out", seed=1)
    assert str(src / "train.parquet") in str(err.value)


def test_a_json_file_holding_one_array_is_read_as_its_records(tmp_path):
    rows = _rte_rows(5) + [[1, 2]]
    source = _local_rte(tmp_path / "src", "train.json", json.dumps(rows, indent=2).encode())
    manifest = download_dataset("rte", source, tmp_path / "out", seed=1)
    train = manifest["splits"]["train"]
    assert (train["rows_read"], train["rows"], train["rejected_by_kind"]) == (6, 5, {"invalid_json": 1})
