"""Stage 1, download: one dataset's train and eval splits into raw Parquet, with a manifest.

Three sources, chosen per dataset in config (``download``):

- ``hub``: the real ``datasets.load_dataset(hub_id, config, split=..., revision=...)``; for a repository
  that ships only a loading script (registry ``hub.parquet_branch``, or found out when
  ``load_dataset`` refuses the script), the hub's auto-converted Parquet branch
  ``refs/convert/parquet``, read from the hub or from a local copy of that branch;
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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

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

STAGE_VERSION = "2"  # 2: parquet-branch reads, bytes-repr decoding
log = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
PARQUET_BRANCH = "refs/convert/parquet"
# What datasets >= 4 raises for a repository whose only loader is a script.
SCRIPT_ONLY_MESSAGE = "Dataset scripts are no longer supported"


class DownloadError(RuntimeError):
    """A dataset could not be read from its configured source; the message says what to do."""


class ScriptOnlyError(DownloadError):
    """The hub repository ships only a loading script, which ``datasets`` no longer runs."""


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
        if isinstance(err, RuntimeError) and SCRIPT_ONLY_MESSAGE in str(err):
            raise ScriptOnlyError(f"{spec.name}: {spec.hub.id!r} ships only a loading script: "
                                  f"{err}") from err
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is switched off (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1) and it is not cached" \
            if offline else f"{type(err).__name__}: {err}"
        raise DownloadError(
            f"{spec.name}: could not load {spec.hub.id!r} (config {spec.hub.config!r}, split "
            f"{split!r}, revision {revision or 'default'}) from the Hugging Face hub: {why}. "
            + _supply_locally_hint(spec)) from err
    return ds.with_format("arrow")[:], _resolved_revision(spec.hub.id, revision, ds)


# --- the hub's auto-converted Parquet branch -----------------------------------------------------

@dataclass(frozen=True)
class BranchSplit:
    """Where one split lies on a ``refs/convert/parquet`` branch."""

    config: str
    """The config folder read (``default`` for a repository without named configs)."""
    files: tuple[str, ...]
    """The split's Parquet files, relative to the branch root, in shard order."""
    layout: str
    """``split_folder`` (``<config>/<split>/0000.parquet``) or ``flat`` (the older
    ``<config>/<repo>-<split>[-00000-of-00002].parquet``)."""
    partial: bool
    """The converter stopped early (``<config>/partial-<split>/``): only the first part of the split."""


def _flat_split(name: str) -> str | None:
    """The split of an older flat file name: ``samsum-train.parquet`` or ``x-test-00000-of-00002``."""
    match = re.fullmatch(r"[^/]+?-(?P<split>[^-/]+)(?:-\d{5}-of-\d{5})?\.parquet", name)
    return match["split"] if match else None


def locate_branch_split(paths: Iterable[str], config: str | None, split: str) -> BranchSplit:
    """Find ``split`` of ``config`` among the Parquet files of a ``refs/convert/parquet`` branch.

    ``paths`` are relative to the branch root. A registry entry without a config reads the config
    ``default``, or the only config the branch has.

    >>> locate_branch_split(["default/train/0000.parquet", "default/train/0001.parquet",
    ...                      "default/test/0000.parquet"], None, "train").files
    ('default/train/0000.parquet', 'default/train/0001.parquet')
    >>> b = locate_branch_split(["samsum/samsum-train.parquet", "samsum/samsum-test.parquet"],
    ...                         None, "test")
    >>> b.config, b.files, b.layout
    ('samsum', ('samsum/samsum-test.parquet',), 'flat')
    """
    by_config: dict[str, list[tuple[str, ...]]] = {}
    for path in paths:
        parts = tuple(path.strip("/").split("/"))
        hidden = parts[0].startswith(".")  # .cache/ of a `hf download --local-dir` copy
        if len(parts) >= 2 and parts[-1].endswith(".parquet") and not hidden:
            by_config.setdefault(parts[0], []).append(parts)
    configs = sorted(by_config)
    if config is None:
        if "default" in by_config or len(configs) != 1:
            config = "default"
        else:
            config = configs[0]
    if config not in by_config:
        raise DownloadError(f"the Parquet branch has no config {config!r}; it has {configs}"
                            + ("; name one in the registry's hub.config" if len(configs) > 1 else ""))
    folders: dict[str, list[str]] = {}
    flat: dict[str, list[str]] = {}
    for parts in by_config[config]:
        if len(parts) == 3:
            folders.setdefault(parts[1], []).append("/".join(parts))
        elif len(parts) == 2 and (found := _flat_split(parts[1])):
            flat.setdefault(found, []).append("/".join(parts))
    for layout, folder, partial, table in (("split_folder", split, False, folders),
                                           ("split_folder", f"partial-{split}", True, folders),
                                           ("flat", split, False, flat)):
        if folder in table:
            return BranchSplit(config, tuple(sorted(table[folder])), layout, partial)
    have = sorted(set(folders) | set(flat))
    raise DownloadError(f"the Parquet branch has no split {split!r} in config {config!r}; it has "
                        f"{have}")


def _branch_filesystem(spec: DatasetSpec, root: str | None, revision: str | None):
    """The filesystem and root folder of the branch: the hub (pinned to a commit) or a local copy."""
    if root is not None:
        from fsspec.implementations.local import LocalFileSystem

        base = Path(root).resolve()
        if not base.is_dir():
            raise DownloadError(f"{spec.name}: the local copy of the Parquet branch {base} is not a "
                                "directory")
        return LocalFileSystem(), base.as_posix(), f"local-path:{base}"
    from huggingface_hub import HfApi, HfFileSystem

    sha = HfApi().dataset_info(spec.hub.id, revision=revision or PARQUET_BRANCH).sha
    return HfFileSystem(), f"datasets/{spec.hub.id}@{quote(sha, safe='')}", sha


def read_parquet_branch_split(spec: DatasetSpec, split: str, root: str | None = None,
                              revision: str | None = None) -> tuple[pa.Table, dict]:
    """Read one split from the hub's ``refs/convert/parquet`` branch, or from a local copy of it.

    ``root`` is a directory laid out as the branch is (``hf download ID --repo-type dataset
    --revision refs/convert/parquet --local-dir DIR`` makes one); None reads the hub.
    ``revision`` pins a commit of the branch. Returns the table and where it came from.
    """
    if not spec.hub.id:
        raise DownloadError(f"{spec.name} has no public hub copy. " + _supply_locally_hint(spec))
    where = root or f"the hub ({spec.hub.id}@{revision or PARQUET_BRANCH})"
    try:
        fs, base, resolved = _branch_filesystem(spec, root, revision)
        paths = [p.removeprefix(base).lstrip("/") for p in fs.find(base)]
        located = locate_branch_split(paths, spec.hub.config, split)
        tables = []
        for rel in located.files:
            with fs.open(f"{base}/{rel}", "rb") as f:
                tables.append(pq.read_table(f))
    except DownloadError as err:
        raise DownloadError(f"{spec.name}: {err} (read from {where})") from err
    except Exception as err:  # noqa: BLE001 - network, auth, offline: tell the user how to proceed
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline and root is None \
            else f"{type(err).__name__}: {err}"
        raise DownloadError(
            f"{spec.name}: could not read split {split!r} of {spec.hub.id!r} from its Parquet branch "
            f"{PARQUET_BRANCH} in {where}: {why}. To read it offline, copy the branch with `hf "
            f"download {spec.hub.id} --repo-type dataset --revision {PARQUET_BRANCH} --local-dir DIR` "
            f"and set download.sources.{spec.name}: {{kind: hub, path: DIR}}. "
            + _supply_locally_hint(spec)) from err
    log.info("%s [%s]: Parquet branch of %s in %s: config %r, %d file(s), %s layout", spec.name, split,
             spec.hub.id, where, located.config, len(located.files), located.layout)
    if located.partial:
        log.warning("%s [%s]: the Parquet branch holds only the first part of this split (%s)",
                    spec.name, split, located.files[0].rsplit("/", 1)[0])
    origin = {"parquet_branch": {"config": located.config, "files": list(located.files),
                                 "layout": located.layout, "partial": located.partial},
              "revision_resolved": resolved}
    return pa.concat_tables(tables, promote_options="permissive"), origin


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

def _read_hub(spec: DatasetSpec, source: SourceSpec, split: str) -> tuple[pa.Table, dict]:
    """The hub source: ``load_dataset`` on the main branch, or the Parquet branch where needed."""
    revision = source.revision or spec.hub.revision
    origin = {"hub_id": spec.hub.id, "hub_config": spec.hub.config, "revision_requested": revision}
    use_branch = source.parquet_branch
    if use_branch is None:
        use_branch = spec.hub.parquet_branch
    if not use_branch:
        try:
            table, resolved = read_hub_split(spec, split, revision)
            return table, {**origin, "revision_resolved": resolved}
        except ScriptOnlyError as err:
            if source.parquet_branch is False:
                raise DownloadError(f"{err}; parquet_branch is false for it in the config, so its "
                                    f"Parquet branch {PARQUET_BRANCH} is not read") from err
            log.warning("%s; reading its Parquet branch %s instead", err, PARQUET_BRANCH)
            revision = None  # a pinned revision names a main-branch commit, not a branch one
            origin["parquet_branch_fallback"] = True
    table, branch_origin = read_parquet_branch_split(spec, split, source.path, revision)
    return table, {**origin, **branch_origin}


def _read_split(spec: DatasetSpec, source: SourceSpec, split: str) -> tuple[CheckedSplit, dict]:
    if source.kind == "hub":
        table, origin = _read_hub(spec, source, split)
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
                        "bytes_reprs_decoded": checked.bytes_reprs_decoded,
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
