"""The download stage on each source: embedded, local (JSONL, CSV, Parquet) and the hub code path."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.config import SourceSpec
from flanpipe.download import DownloadError, download_dataset, read_hub_split
from flanpipe.registry import HubSource, embedded_datasets, load_registry

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
    table, revision = read_hub_split(spec, "validation", None)
    assert table.num_rows == 3 and table.column("idx").to_pylist() == [50, 51, 52]
    assert revision.startswith("local-path:")


def test_hub_without_network_fails_fast_with_guidance(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_dataset("rte", SourceSpec(kind="hub"), tmp_path, seed=1)
    assert time.monotonic() - start < 60
    msg = str(err.value)
    assert "aps/super_glue" in msg and "download.sources.rte: {kind: local, path: DIR}" in msg
    assert not (tmp_path / "manifest.json").exists()


def test_dataset_without_hub_copy_says_how_to_supply_it(tmp_path):
    with pytest.raises(DownloadError, match="Where to get the files"):
        download_dataset("story_cloze", SourceSpec(kind="hub"), tmp_path, seed=1)
