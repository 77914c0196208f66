r"""Readers of the Flan 2022 Collection's own file formats, in the download stage's batch shape
(records, and a :class:`~flanpipe.core.text.validate.BadLine` by batch position for a line that is
no row).

- FLAN's chain-of-thought files (``flan/v2/cot_data/<name>_train.tsv``): one row a line, three
  tab-separated fields (question, answer, rationale), no header, a newline inside a field written as
  the two characters ``\n``.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "toy_train.tsv"
>>> _ = path.write_bytes(b"2 + 3?\\nThink.\t5\t2 plus 3 is 5.\nno tabs here\n")
>>> [(records, {i: b.kind for i, b in bad.items()}) for records, bad in iter_cot_batches(path)]
[([{'question': '2 + 3?\nThink.', 'answer': '5', 'rationale': '2 plus 3 is 5.'}, None], {1: 'ragged_row'})]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flanpipe.core.text.validate import BadLine

COT_FIELDS = ("question", "answer", "rationale")
"""The columns of a CoT file, in file order."""
BATCH_ROWS = 16_384

CotBatch = tuple[list[dict[str, Any] | None], dict[int, BadLine]]


def parse_cot_line(raw: bytes) -> tuple[dict[str, Any] | None, BadLine | None]:
    r"""One line of a CoT TSV file: ``(record, None)``, or ``(None, why not)``.

    >>> parse_cot_line(b"Q?\tyes\tbecause\\nso\r\n")
    ({'question': 'Q?', 'answer': 'yes', 'rationale': 'because\nso'}, None)
    >>> parse_cot_line(b"Q?\tyes\n")[1].reason
    'row has 2 tab-separated fields, expected 3 (question, answer, rationale)'
    """
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        return None, BadLine("invalid_utf8", f"line is not valid UTF-8 (byte {err.start}: {err.reason})",
                             raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace"))
    fields = text.split("\t")
    if len(fields) != len(COT_FIELDS):
        return None, BadLine("ragged_row", f"row has {len(fields)} tab-separated fields, expected "
                             f"{len(COT_FIELDS)} ({', '.join(COT_FIELDS)})", text)
    return {name: value.replace("\\n", "\n") for name, value in zip(COT_FIELDS, fields, strict=True)}, None


def iter_cot_batches(path: str | Path, batch_rows: int = BATCH_ROWS) -> Iterator[CotBatch]:
    """A CoT TSV file in batches of ``batch_rows`` non-blank lines; a line that is no row (wrong
    number of fields, bad UTF-8) is kept as ``None`` with its :class:`BadLine`, so the download
    stage quarantines it with its reason and the rest of the file is read."""
    with open(path, "rb") as f:
        lines = (raw for raw in f if raw.strip())
        while batch := list(itertools.islice(lines, batch_rows)):
            records, bad = [], {}
            for raw in batch:
                record, why = parse_cot_line(raw)
                if why is not None:
                    bad[len(records)] = why
                records.append(record)
            yield records, bad
