"""Atomic writes: a failed or killed writer leaves no output that looks complete."""

import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from flanpipe.core.io import atomic_path, read_parquet_metadata, write_parquet_atomic
from flanpipe.core.keys import derive_seed


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
