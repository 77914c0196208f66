"""Stage 1, download: one dataset's train and eval splits into raw Parquet, with a manifest.

Three sources, chosen per dataset in config (``download``):

- ``hub``: the real ``datasets.load_dataset(hub_id, config, split=..., revision=...)``;
- ``local``: ``{split}.parquet``, ``{split}.jsonl`` or ``{split}.csv`` files in the hub schema;
- ``embedded``: the small demo data shipped inside the package.

Every row is checked against the registry schema (:mod:`flanpipe.validate`); bad rows go to
``rejected.parquet`` with their reason. Outputs (``data/raw/{dataset}/``):
``train.parquet``, ``eval.parquet``, ``rejected.parquet`` and, written last, ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flanpipe.config import SourceSpec
from flanpipe.io import (
    code_version,
    sha256_file,
    utc_now,
    write_json_atomic,
    write_parquet_atomic,
)
from flanpipe.registry import DatasetSpec, load_registry
from flanpipe.validate import CheckedSplit, check_split

STAGE_VERSION = "1"
log = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


class DownloadError(RuntimeError):
    """A dataset could not be read from its configured source; the message says what to do."""


def _supply_locally_hint(spec: DatasetSpec) -> str:
    splits = ", ".join(f"{split}.jsonl" for split in spec.split_roles.values())
    hint = (f"To supply it locally, put {splits} (or .parquet/.csv) in the hub schema "
            f"({', '.join(spec.features)}) in a directory DIR and set "
            f"download.sources.{spec.name}: {{kind: local, path: DIR}} in your config.")
    if spec.local_instructions:
        hint += f" Where to get the files: {spec.local_instructions}"
    return hint


# --- readers: each returns (records or table, bad JSON lines) --------------------------------------

def read_jsonl(path: Path) -> tuple[list[dict[str, Any] | None], dict[int, str]]:
    """Parse JSON Lines; a line that is not a JSON object is kept as ``None`` with its text."""
    records: list[dict[str, Any] | None] = []
    bad: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                bad[len(records)] = line.rstrip("\n")
                rec = None
            records.append(rec)
    return records, bad


def read_local_split(directory: Path, split: str) -> tuple[Any, dict[int, str], Path]:
    for suffix in LOCAL_SUFFIXES:
        path = directory / f"{split}{suffix}"
        if not path.exists():
            continue
        if suffix == ".parquet":
            return pq.read_table(path), {}, path
        if suffix == ".csv":
            opts = pacsv.ConvertOptions(strings_can_be_null=False, auto_dict_encode=False)
            table = pacsv.read_csv(path, convert_options=opts)
            as_text = [c.cast(pa.string()) for c in table.columns]
            return pa.Table.from_arrays(as_text, names=table.column_names), {}, path
        records, bad = read_jsonl(path)
        return records, bad, path
    expected = ", ".join(f"{split}{s}" for s in LOCAL_SUFFIXES)
    raise DownloadError(f"no file for split {split!r} in {directory} (expected one of: {expected})")


def read_embedded_split(spec: DatasetSpec, split: str) -> tuple[Any, dict[int, str], str]:
    ref = resources.files("flanpipe").joinpath("data/embedded", spec.name, f"{split}.jsonl")
    if not ref.is_file():
        raise DownloadError(f"{spec.name}: no embedded demo data for split {split!r}. "
                            + _supply_locally_hint(spec))
    with resources.as_file(ref) as path:
        records, bad = read_jsonl(path)
    return records, bad, f"flanpipe/data/embedded/{spec.name}/{split}.jsonl"


def read_hub_split(spec: DatasetSpec, split: str, revision: str | None) -> tuple[pa.Table, str]:
    """Load one split with ``datasets.load_dataset``; fail fast, with guidance, when it cannot."""
    if not spec.hub.id:
        raise DownloadError(f"{spec.name} has no public hub copy. " + _supply_locally_hint(spec))
    import datasets  # heavy import, only for this source

    try:
        ds = datasets.load_dataset(spec.hub.id, spec.hub.config, split=split, revision=revision)
    except Exception as err:  # noqa: BLE001 - any failure means: tell the user how to proceed
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is switched off (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1) and it is not cached" \
            if offline else f"{type(err).__name__}: {err}"
        raise DownloadError(
            f"{spec.name}: could not load {spec.hub.id!r} (config {spec.hub.config!r}, split "
            f"{split!r}, revision {revision or 'default'}) from the Hugging Face hub: {why}. "
            + _supply_locally_hint(spec)) from err
    return ds.with_format("arrow")[:], _resolved_revision(spec.hub.id, revision, ds)


def _resolved_revision(hub_id: str, requested: str | None, ds: Any) -> str:
    """The commit actually read: asked of the hub when online, else read off the cache path."""
    if Path(hub_id).exists():
        return f"local-path:{Path(hub_id).resolve()}"
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            from huggingface_hub import HfApi

            return HfApi().dataset_info(hub_id, revision=requested).sha
        except Exception as err:  # noqa: BLE001
            log.warning("could not ask the hub which commit %s@%s is: %s", hub_id, requested, err)
    for cache in getattr(ds, "cache_files", []) or []:
        parts = Path(cache["filename"]).parts
        shas = [p for p in parts if len(p) == 40 and all(c in "0123456789abcdef" for c in p)]
        if shas:
            return shas[-1]
    return requested or "unknown"


# --- the stage -----------------------------------------------------------------------------------

def _read_split(spec: DatasetSpec, source: SourceSpec, split: str) -> tuple[CheckedSplit, dict]:
    revision = source.revision or spec.hub.revision
    if source.kind == "hub":
        table, resolved = read_hub_split(spec, split, revision)
        origin = {"hub_id": spec.hub.id, "hub_config": spec.hub.config,
                  "revision_requested": revision, "revision_resolved": resolved}
        return check_split(table, spec, split), origin
    if source.kind == "local":
        data, bad, path = read_local_split(Path(source.path), split)
        origin = {"path": str(Path(path).resolve()), "sha256_source": sha256_file(path)}
    else:
        data, bad, path = read_embedded_split(spec, split)
        origin = {"path": path}
    return check_split(data, spec, split, bad), origin


def download_dataset(name: str, source: SourceSpec, out_dir: str | Path, seed: int) -> dict:
    """Read ``name``'s train and eval splits from ``source`` into ``out_dir``; return the manifest."""
    spec = load_registry().datasets[name]
    out_dir = Path(out_dir)
    log.info("%s: reading %s from %s", name, spec.split_roles, source.kind)
    parquet_meta = {"stage": "download", "stage_version": STAGE_VERSION, "dataset": name,
                    "cluster": spec.cluster, "source": source.kind}
    splits: dict[str, Any] = {}
    rejected = []
    for role in ("train", "eval"):
        split = spec.split_roles.get(role)
        path = out_dir / f"{role}.parquet"
        if split is None:  # eval- or train-only dataset: an empty file keeps the outputs uniform
            checked, origin = check_split([], spec, role), {}
        else:
            checked, origin = _read_split(spec, source, split)
        write_parquet_atomic(checked.table, path, {**parquet_meta, "role": role, "split": split})
        rejected.append(checked.rejected)
        splits[role] = {"source_split": split, **origin, "rows_read": checked.rows_read,
                        "rows": checked.table.num_rows, "rejected": checked.rejected.num_rows,
                        "rejected_by_kind": checked.rejected_by_kind(),
                        "extra_columns_dropped": checked.extra_columns,
                        "file": path.name, "sha256": sha256_file(path)}
        log.info("%s [%s <- %s]: %d rows read, %d kept, %d rejected %s", name, role, split,
                 checked.rows_read, checked.table.num_rows, checked.rejected.num_rows,
                 checked.rejected_by_kind() or "")
    rejected_path = out_dir / "rejected.parquet"
    write_parquet_atomic(pa.concat_tables(rejected), rejected_path, parquet_meta)
    manifest = {
        "dataset": name,
        "cluster": spec.cluster,
        "source": source.model_dump(),
        "splits": splits,
        "rejected": {"rows": sum(t.num_rows for t in rejected), "file": rejected_path.name,
                     "sha256": sha256_file(rejected_path)},
        "seed": seed,
        "code": code_version("download", STAGE_VERSION),
        "created_at": utc_now(),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest
