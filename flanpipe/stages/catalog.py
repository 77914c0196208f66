"""The DuckDB catalog: one file, ``data/catalog.duckdb``, to query every stage's output.

Views read the Parquet files in place (paths relative to the workflow directory, so open the catalog
from there): ``raw.<dataset>_train`` / ``raw.<dataset>_eval`` (each dataset in its own schema),
``rejected``, ``templatized``, ``dedup_dropped``, ``contamination_matches``, ``mixtures`` (every
mixture's shards, with a ``mixture`` column), ``mixture_rows`` (what each mixture did with every
pool row: kept, exact or near duplicate of a named kept twin, contaminated, capped) and
``packed_index`` (every packed example's row, segment and token counts). Tables hold the numbers:
``mixture_stats``, ``template_usage``, ``template_banks`` (per dataset: the template bank, and a FLAN
bank's checkout, file, git commit and sha256), ``prompt_mix`` (per mixture, submixture and dataset:
rows per prompt type of the template mix, and their exemplars),
``dedup_report``, ``contamination_report``, ``packing_stats`` (per mixture: packing efficiency next to
next-fit and pad-to-max), ``token_stats`` (per mixture and dataset: tokens and truncations) and
``collection_mix`` (per mixture: rows by submixture, dataset, task, prompt type and source, where a
task is a Super-NaturalInstructions task or a published dump's ``task_name`` and a source is the
task's ``Source`` or the dump's ``task_source``; the dataset itself elsewhere). The
``catalog`` rule rebuilds the file whenever an input changes; it is written to a temporary file and
renamed into place.

Example (``duckdb data/catalog.duckdb`` or ``duckdb.connect("data/catalog.duckdb", read_only=True)``)::

    SELECT cluster, round(100 * sum(sampled) / sum(sum(sampled)) OVER (), 1) AS pct
    FROM mixture_stats WHERE mixture = 'nli' GROUP BY cluster ORDER BY pct DESC;

    -- a mixture against the Flan 2022 weights (0.40, 0.32, 0.20, 0.05, 0.03)
    SELECT submixture, sum(rows) AS rows, round(100 * sum(rows) / sum(sum(rows)) OVER (), 1) AS pct
    FROM collection_mix WHERE mixture = 'all' GROUP BY submixture ORDER BY pct DESC;
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pyarrow as pa

from flanpipe.core.config.registry import load_registry
from flanpipe.core.io import atomic_path, read_parquet_metadata
from flanpipe.core.versions import STAGE_VERSIONS

STAGE_VERSION = STAGE_VERSIONS["catalog"]

log = logging.getLogger(__name__)

TABLES = ("mixture_stats", "template_usage", "template_banks", "prompt_mix", "dedup_report",
          "contamination_report", "packing_stats", "token_stats", "collection_mix")


def _sql_path(path: str | Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def build_catalog(out_path: str | Path, datasets: list[str], mixtures: list[str],
                  data_dir: str = "data") -> dict:
    """Create the catalog from the Parquet files under ``data_dir`` (a path relative to where the
    catalog will be queried from)."""
    d = Path(data_dir)
    counts = {}
    with atomic_path(out_path) as tmp:
        tmp.unlink()  # DuckDB creates the file itself
        con = duckdb.connect(str(tmp))
        try:
            con.execute("CREATE SCHEMA raw")
            for name in datasets:
                for split in ("train", "eval"):
                    con.execute(f"CREATE VIEW raw.{_ident(f'{name}_{split}')} AS SELECT * FROM "
                                f"read_parquet({_sql_path(d / 'raw' / name / f'{split}.parquet')})")
            views = {
                "rejected": _read((d / "raw" / n / "rejected.parquet" for n in datasets),
                                  "dataset", r"([^/]+)/rejected\.parquet$"),
                "templatized": _read(d / "templatized" / f"{n}.parquet" for n in datasets),
                "dedup_dropped": _read((d / "dedup" / f"{n}.dropped.parquet" for n in datasets),
                                       "dataset", r"([^/]+)\.dropped\.parquet$"),
                "contamination_matches": _read((d / "decontam" / f"{n}.parquet" for n in datasets),
                                               "dataset", r"([^/]+)\.parquet$"),
                "mixtures": _read((d / "mixtures" / m / "shards" / "*.parquet" for m in mixtures),
                                  "mixture", r"mixtures/([^/]+)/shards/"),
                "mixture_rows": _read((d / "mixtures" / m / "rows.parquet" for m in mixtures),
                                      "mixture", r"mixtures/([^/]+)/rows\.parquet$"),
                "packed_index": _read((d / "packed" / m / "index.parquet" for m in mixtures),
                                      "mixture", r"packed/([^/]+)/index\.parquet$"),
            }
            for name, sql in views.items():
                con.execute(f"CREATE VIEW {name} AS {sql}")
            con.execute(f"CREATE TABLE mixture_stats AS SELECT * FROM read_parquet("
                        f"{_list(d / 'mixtures' / m / 'stats.parquet' for m in mixtures)}) "
                        "ORDER BY mixture, dataset")
            con.execute(f"CREATE TABLE contamination_report AS SELECT * FROM read_parquet("
                        f"{_list(d / 'mixtures' / m / 'contamination.parquet' for m in mixtures)}) "
                        "ORDER BY mixture, dataset, eval_dataset")
            con.execute(f"CREATE TABLE packing_stats AS SELECT * FROM read_parquet("
                        f"{_list(d / 'packed' / m / 'packing.parquet' for m in mixtures)}) ORDER BY mixture")
            con.execute(f"CREATE TABLE token_stats AS SELECT * FROM read_parquet("
                        f"{_list(d / 'packed' / m / 'stats.parquet' for m in mixtures)}) "
                        "ORDER BY mixture, dataset")
            con.execute("""
                CREATE TABLE template_usage AS
                SELECT mixture, dataset, template_id, inverted, count(*) AS rows,
                       count(DISTINCT example_id) AS examples
                FROM mixtures GROUP BY ALL ORDER BY mixture, dataset, template_id""")
            con.register("banks", template_banks(d / "templatized" / f"{n}.parquet" for n in datasets))
            con.execute("CREATE TABLE template_banks AS SELECT * FROM banks ORDER BY dataset")
            con.unregister("banks")
            con.execute(PROMPT_MIX_SQL)
            con.execute(f"CREATE VIEW row_tasks AS {_row_tasks(datasets, d)}")
            con.execute(COLLECTION_MIX_SQL)
            con.execute("""
                CREATE TABLE dedup_report AS
                SELECT dataset, reason,
                       CASE WHEN kept_dataset = dataset THEN 'within' ELSE 'across' END AS scope,
                       kept_dataset, count(*) AS rows, round(avg(similarity), 4) AS mean_similarity
                FROM dedup_dropped GROUP BY ALL ORDER BY dataset, reason, scope, kept_dataset""")
            for table in TABLES:
                counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            con.execute("CHECKPOINT")
        finally:
            con.close()
        wal = Path(str(tmp) + ".wal")
        if wal.exists():
            raise RuntimeError(f"DuckDB left a write-ahead log beside {tmp}")
    log.info("catalog %s: %s", out_path, counts)
    return counts


BANK_FIELDS = ("bank", "flan_root", "file", "git_commit", "sha256")


def template_banks(paths) -> pa.Table:
    """Per templatized file, whose templates rendered it (from its Parquet metadata): the bank and,
    for a FLAN bank, the checkout, the file, its git commit and sha256; flanpipe's own bank has the
    rest null."""
    rows = []
    for path in paths:
        meta = read_parquet_metadata(path)
        bank = meta.get("bank", {"bank": "flanpipe"})
        rows.append({"dataset": meta.get("dataset", Path(path).stem),
                     **{k: bank.get(k) for k in BANK_FIELDS}})
    return pa.Table.from_pylist(rows, schema=pa.schema([(k, pa.string()) for k in ("dataset", *BANK_FIELDS)]))


PROMPT_MIX_SQL = """
    CREATE TABLE prompt_mix AS
    SELECT mixture, submixture, dataset, prompt_type, count(*) AS rows,
           round(count(*) / sum(count(*)) OVER (PARTITION BY mixture, dataset), 4) AS share,
           round(avg(shots), 2) AS mean_shots, count(*) FILTER (WHERE shots = 0 AND prompt_type LIKE 'fs%')
               AS few_shot_without_exemplars
    FROM mixtures GROUP BY mixture, submixture, dataset, prompt_type
    ORDER BY mixture, submixture, dataset, prompt_type"""
"""Rows a mixture holds per submixture, dataset and prompt type (``templatize.mix``): what a run
actually trained on. A few-shot row whose exemplars did not fit the budget shows 0 shots."""


COLLECTION_MIX_SQL = """
    CREATE TABLE collection_mix AS
    SELECT m.mixture, m.submixture, m.dataset, coalesce(t.task, m.dataset) AS task, m.prompt_type,
           coalesce(t.source, m.dataset) AS source, count(*) AS rows,
           round(count(*) / sum(count(*)) OVER (PARTITION BY m.mixture), 6) AS share
    FROM mixtures m LEFT JOIN row_tasks t ON t.dataset = m.dataset AND t.row_index = m.row_index
    GROUP BY m.mixture, m.submixture, m.dataset, coalesce(t.task, m.dataset), m.prompt_type,
             coalesce(t.source, m.dataset)
    ORDER BY m.mixture, m.submixture, m.dataset, task, m.prompt_type, source"""
"""Rows a mixture holds by submixture, dataset, task, prompt type and source: the Flan Collection's
own breakdown, to check a mixture against the paper's proportions."""
TASK_COLUMNS = (("task", "source"), ("task_name", "task_source"))
"""A dataset's (task, source) columns, where its rows carry them: NIv2's, a published dump's."""


def _row_tasks(datasets: list[str], d: Path) -> str:
    """SELECT (dataset, row_index, task, source) over the raw train rows of the datasets that
    carry a task column (:data:`TASK_COLUMNS`); an empty SELECT when none does."""
    registry, parts = load_registry(), []
    for name in datasets:
        features = registry.datasets[name].features
        for task, source in TASK_COLUMNS:
            if task in features and source in features:
                parts.append(f"SELECT {_sql_path(name)} AS dataset, row_index, {_ident(task)} AS task, "
                             f"{_ident(source)} AS source FROM "
                             f"read_parquet({_sql_path(d / 'raw' / name / 'train.parquet')})")
                break
    return " UNION ALL ".join(parts) or ("SELECT NULL::VARCHAR AS dataset, NULL::BIGINT AS row_index, "
                                         "NULL::VARCHAR AS task, NULL::VARCHAR AS source WHERE false")


def _list(paths) -> str:
    return "[" + ", ".join(_sql_path(p) for p in paths) + "]"


def _read(paths, column: str | None = None, pattern: str | None = None) -> str:
    """SELECT over the Parquet ``paths``; with ``column``, a first column taken from each row's file
    name by the regex ``pattern`` (its one group)."""
    if column is None:
        return f"SELECT * FROM read_parquet({_list(paths)})"
    return (f"SELECT regexp_extract(filename, {_sql_path(pattern)}, 1) AS {column}, * EXCLUDE (filename) "
            f"FROM read_parquet({_list(paths)}, filename=true)")


def mixture_stats(catalog: str | Path, mixture: str | None = None) -> pa.Table:
    """The ``mixture_stats`` table, for one mixture or all."""
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        if mixture is None:
            return con.sql("SELECT * FROM mixture_stats ORDER BY mixture, dataset").to_arrow_table()
        known = [r[0] for r in con.execute("SELECT DISTINCT mixture FROM mixture_stats ORDER BY 1")
                 .fetchall()]
        if mixture not in known:
            raise KeyError(f"no mixture {mixture!r} in {catalog}; known: {known}")
        return con.sql("SELECT * FROM mixture_stats WHERE mixture = $1 ORDER BY dataset",
                       params=[mixture]).to_arrow_table()
    finally:
        con.close()


def packing_stats(catalog: str | Path) -> dict[str, dict]:
    """The ``packing_stats`` table, by mixture."""
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        rows = con.sql("SELECT * FROM packing_stats ORDER BY mixture").to_arrow_table().to_pylist()
    finally:
        con.close()
    return {r["mixture"]: r for r in rows}
