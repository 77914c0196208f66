"""Atomic writes: a failed or killed writer leaves no output that looks complete."""

import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from flanpipe.core import io
from flanpipe.core.io import atomic_path, read_parquet_metadata, write_parquet_atomic
from flanpipe.core.text.keys import derive_seed


def test_exception_leaves_neither_output_nor_temp(tmp_path):
    out = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_survives_a_failed_rewrite(tmp_path):
    out = tmp_path / "x.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("new and half")
            raise RuntimeError
    assert out.read_text() == "old"


def test_killed_process_leaves_no_output(tmp_path):
    """SIGKILL mid-write (no cleanup runs at all): the final name never appears."""
    out = tmp_path / "big.parquet"
    code = textwrap.dedent(f"""
        import os, signal
        from flanpipe.core.io import atomic_path
        with atomic_path({str(out)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * 1_000_000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".big.parquet.") and name.endswith(".tmp") for name in leftovers)


def test_parquet_is_byte_identical_on_rewrite(tmp_path):
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    write_parquet_atomic(table, tmp_path / "1.parquet", {"k": "v"})
    write_parquet_atomic(table, tmp_path / "2.parquet", {"k": "v"})
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
    assert read_parquet_metadata(tmp_path / "1.parquet") == {"k": "v"}


def test_derive_seed_is_seed_plus_crc32():
    import zlib
    assert derive_seed(1, "rte") == (1 + zlib.crc32(b"rte")) % 2**32
    assert derive_seed(1, "rte") != derive_seed(1, "cb")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_a_corrupt_parquet_read_names_the_file(tmp_path):
    """Parquet magic bytes not found / ZSTD corruption: pyarrow names no file, our readers do."""
    import numpy as np
    import pyarrow.parquet as pq

    from flanpipe.core.io import ReadError, iter_parquet, read_table

    good = tmp_path / "templatized.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 50 for i in range(2_000)]}), good, compression="zstd")
    data = bytearray(good.read_bytes())
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.parquet"
    middle = slice(len(data) // 4, len(data) // 4 + 400)
    data[middle] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    corrupt.write_bytes(bytes(data))
    for path in (truncated, corrupt):
        with pytest.raises(ReadError, match="could not read it as Parquet") as err:
            for _ in iter_parquet(path, 100):
                pass
        assert str(path) in str(err.value)
        with pytest.raises(ReadError) as err:
            read_table(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("helper", ["atomic_path", "atomic_dir"])
def test_the_next_write_of_an_output_removes_what_a_killed_writer_left(tmp_path, helper):
    """SIGKILL mid-write leaves `.shards.XXXXXXXX.tmp` (a folder) or `.x.parquet.XXXXXXXX.tmp`; the next
    write of the same output removes it, and leaves the temporaries of other outputs alone."""
    name = "shards" if helper == "atomic_dir" else "x.parquet"
    out = tmp_path / name
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from flanpipe.core.io import {helper}
        with {helper}({str(out)!r}) as tmp:
            target = tmp / "part-0" if tmp.is_dir() else tmp
            target.write_bytes(b"x" * 100_000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    [left] = list(tmp_path.iterdir())
    assert left.name.startswith(f".{name}.") and left.name.endswith(".tmp")
    other = tmp_path / f".{name}.more.abcdefgh.tmp"  # the temporary of another output, `{name}.more`
    other.write_text("busy")
    with getattr(io, helper)(out) as tmp:
        (tmp / "part-0" if tmp.is_dir() else tmp).write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, other.name])


def test_the_next_pool_job_removes_a_killed_pool_jobs_temporary(tmp_path):
    import pyarrow.parquet as pq

    from flanpipe.core.config import PoolSlice
    from flanpipe.stages.pool import write_pool

    pq.write_table(pa.table({"idx": [0, 1], "sentence": ["a", "b"], "label": [0, 1], "row_index": [0, 1]}),
                   tmp_path / "train.parquet")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / ".sst2.parquet.k2_x9q0a.tmp").write_bytes(b"half a pool")
    write_pool("sst2", tmp_path / "train.parquet", tmp_path / "pool/sst2.parquet",
               PoolSlice(seed=1, pool_factor=None, cap=2))
    assert [p.name for p in (tmp_path / "pool").iterdir()] == ["sst2.parquet"]


def test_an_error_that_ends_a_job_is_in_the_jobs_log(tmp_path):
    """A Snakemake script's uncaught error (here a corrupt Parquet) lands in its `log:` file, naming
    the file, not only in Snakemake's own log."""
    import subprocess
    import sys

    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    log = tmp_path / "job.log"
    code = ("from flanpipe.core.logs import setup_logging; from flanpipe.core.io import read_table; "
            f"setup_logging({str(log)!r}); read_table({str(bad)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    text = log.read_text()
    assert "ERROR" in text and str(bad) in text, text


def test_a_progress_counter_logs_how_far_along_the_callbacks_are(caplog):
    """Scoring reports its batches by callback: the counter adds them up and logs the running total
    (every call here, with ``every_s`` 0)."""
    import logging

    from flanpipe.core.logs import progress_counter

    advance = progress_counter(10, "text: rank classification", "prompts", every_s=0.0)
    with caplog.at_level(logging.INFO, logger="flanpipe.progress"):
        for n in (4, 4, 2):
            advance(n)
    lines = [r.getMessage() for r in caplog.records if r.name == "flanpipe.progress"]
    assert [line.split(",")[0] for line in lines] == [
        "text: rank classification: 4 / 10 prompts (40%)", "text: rank classification: 8 / 10 prompts (80%)",
        "text: rank classification: 10 / 10 prompts (100%)"]
