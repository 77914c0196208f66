"""flanpipe bench collection on the test fixtures: every job runs in its own process and reports
the rows the stages wrote."""

import pyarrow.parquet as pq

from bench.collection import bench_collection, print_collection
from tests.conftest import REPO

DATA = REPO / "tests/data/collection"


def test_bench_collection_reports_each_job(tmp_path, capsys):
    cot = tmp_path / "flan/flan/v2"
    cot.mkdir(parents=True)
    (cot / "cot_data").symlink_to(DATA / "cot_data")
    results = bench_collection(str(tmp_path / "flan"), str(DATA / "niv2_tasks"), str(tmp_path / "out"))
    assert [(r["dataset"], r["job"]) for r in results] == [
        (d, j) for d in ("cot_creak", "cot_gsm8k", "niv2") for j in ("download", "templatize")]
    lines = {"cot_creak": 25, "cot_gsm8k": 24, "niv2": 36}  # 3 tasks of 12 (MMLU's skipped)
    for r in results:
        if r["job"] == "download":
            assert r["rows"] == r["examples"] == lines[r["dataset"]]
        else:  # 4 passes of the kept train rows
            kept = pq.read_metadata(tmp_path / f"out/raw/{r['dataset']}/train.parquet").num_rows
            assert r["rows"] == 4 * kept and r["examples"] == kept
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 50
    print_collection(results)
    assert "the full collection (15,000,000 examples)" in capsys.readouterr().out
