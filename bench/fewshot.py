"""Few-shot prompt benchmark: every few-shot prompt evaluation builds for MNLI, at real size, next
to the previous implementation measured in the same run.

    flanpipe bench fewshot [--rows 392702 (train)] [--tokenizer DIR] [--threads 2] [--peer-templates 1]

MNLI-shaped raw splits in the hub schema (:func:`bench.scale.make_mnli`: premises of ~20
made-up English-like words with a long tail, three hypotheses per premise, one per label) are
written as Parquet, the train split with the pool file's extra ``priority`` column. Each run reads
them as ``flanpipe evaluate`` does and builds the prompt of every eval row for every eval template
(8) in each OPTIONS style evaluate scores (with and without: 16 prompt sets), ``templatize.few_shot``
at its defaults (k=3, 1,024 tokens), counting tokens with a real tokenizer (the format evaluate
uses: ``--tokenizer``, by default the SmolLM2 folder the tests cache) and with words.

- **flanpipe**: :class:`flanpipe.core.text.fewshot.FewShotPool`, one per dataset, every template and style;
- **previous**: :func:`tests.synthetic.previous_few_shot_inputs`, the implementation this one
  replaced, kept beside the tests (which take its prompts as the exact answer) as the baseline. It
  renders and lists every train row per template and style and re-encodes each joined prompt, so
  it runs only the first ``--peer-templates`` templates (both styles) and its time
  is scaled to all templates (said in the output).

Each run is its own process (spawned), so its peak RSS (``ru_maxrss``) is its own; the RSS after
imports is shown beside it. The prompts of the templates both ran must be identical.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.scale import SHAPES
from flanpipe.core.config import FewShotConfig
from flanpipe.core.text.fewshot import whitespace_tokens
from flanpipe.core.text.keys import derive_seed
from tests.synthetic import previous_few_shot_inputs

DATASET = "mnli"
STYLES = ("dash", "none")  # evaluate's with_options (templatize.options) and without_options


def write_mnli(root: Path, train_rows: int, seed: int = 0) -> dict[str, Path]:
    """MNLI-shaped ``eval.parquet`` (9,815 rows) and ``train.parquet`` (with ``row_index`` and a
    pool file's ``priority``) under ``root``."""
    shape = SHAPES[DATASET]
    paths = {}
    for role, rows in (("train", train_rows), ("eval", shape.eval_rows)):
        rng = np.random.default_rng(derive_seed(seed, f"bench/fewshot/{role}"))
        table = shape.make(rng, rows, 0).append_column("row_index", pa.array(np.arange(rows)))
        if role == "train":
            table = table.append_column("priority", pa.array(rng.integers(0, 2**63, rows, np.uint64)))
        paths[role] = root / f"{role}.parquet"
        pq.write_table(table, paths[role])
    return paths


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _run(which: str, counter: str, paths: dict[str, Path], tokenizer: str, threads: int,
         templates: int | None) -> dict:
    """One timed run in its own process: read the splits, build the prompts, digest them."""
    from flanpipe.core.config import TokenizeConfig
    from flanpipe.core.config.registry import load_registry
    from flanpipe.core.text.fewshot import FewShotPool, few_shot_columns, whitespace_token_counts
    from flanpipe.core.text.templates import load_bank
    from flanpipe.core.tokens.formats import Format
    from flanpipe.core.tokens.tokenizers import load_tokenizer

    spec, bank, seed = load_registry().datasets[DATASET], load_bank()[DATASET], 1234
    cfg = FewShotConfig(max_tokens=1024)
    if counter == "words":
        counts, count = whitespace_token_counts, whitespace_tokens
    else:
        fmt = Format.of(load_tokenizer(tokenizer), TokenizeConfig(), threads)
        counts = fmt.counts
        count = lambda text: len(fmt.tokenizer.encode(text)) + 1 + (fmt.bos is not None)  # noqa: E731
    chosen = bank.eval_templates[:templates]
    imports_mb = _rss_mb()
    start = time.perf_counter()
    eval_raw = pq.read_table(paths["eval"])
    digests, counted, prompts = {}, 0, 0
    if which == "flanpipe":
        columns = few_shot_columns(spec, bank, pq.read_schema(paths["train"]).names)
        pool = FewShotPool(spec, bank, eval_raw, pq.read_table(paths["train"], columns=columns), cfg, seed)
        for template in chosen:
            for style in STYLES:
                built = pool.prompts(template, style, counts)
                digests[f"{template.id}/{style}"] = _digest(built.prompts)
                counted += built.counted
                prompts += len(built.prompts)
    else:
        train_raw = pq.read_table(paths["train"])  # as evaluate read it: every column
        for template in chosen:
            for style in STYLES:
                out = previous_few_shot_inputs(spec, bank, template, eval_raw, train_raw, cfg, seed, count,
                                               style)
                digests[f"{template.id}/{style}"] = _digest(out)
                prompts += len(out)
                counted += len(out)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"which": which, "counter": counter, "seconds": seconds, "templates": len(chosen),
            "all_templates": len(bank.eval_templates), "prompts": prompts, "counted": counted,
            "imports_mb": imports_mb, "peak_mb": peak_mb, "digests": digests}


def _digest(prompts: list[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def _in_own_process(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run, args)


def default_tokenizer() -> Path:
    """The SmolLM2 folder the tests cache (``FLANPIPE_TEST_CACHE``, else ``~/.cache/flanpipe``)."""
    cache = Path(os.environ.get("FLANPIPE_TEST_CACHE", Path.home() / ".cache/flanpipe"))
    return cache / "smollm2-135m-instruct"


def bench_fewshot(train_rows: int | None = None, tokenizer: str | Path | None = None, threads: int = 2,
                  peer_templates: int = 1) -> dict:
    """Write the splits, then time each side with each counter; the rows, runs and whether the
    prompts both sides built agree."""
    train_rows = train_rows or SHAPES[DATASET].train_rows
    tokenizer = Path(tokenizer or default_tokenizer())
    if not tokenizer.exists():
        raise FileNotFoundError(f"--tokenizer: {tokenizer} does not exist (a folder with tokenizer.json or "
                                "tokenizer.model; the unit tests cache SmolLM2's there)")
    with tempfile.TemporaryDirectory(prefix="bench-fewshot-") as tmp:
        paths = write_mnli(Path(tmp), train_rows)
        runs = []
        for counter in ("tokenizer", "words"):
            for which, templates in (("flanpipe", None), ("previous", peer_templates)):
                runs.append(_in_own_process(which, counter, paths, str(tokenizer), threads, templates))
    for run in runs:
        run["scaled_seconds"] = run["seconds"] * run["all_templates"] / run["templates"]
    by = {(r["which"], r["counter"]): r for r in runs}
    same = {c: all(by["flanpipe", c]["digests"][k] == v for k, v in by["previous", c]["digests"].items())
            for c in ("tokenizer", "words")}
    return {"train_rows": train_rows, "eval_rows": SHAPES[DATASET].eval_rows, "tokenizer": str(tokenizer),
            "threads": threads, "runs": runs, "identical": same,
            "ratio": {c: by["previous", c]["scaled_seconds"] / by["flanpipe", c]["seconds"]
                      for c in ("tokenizer", "words")}}


def print_fewshot(r: dict) -> None:
    first = r["runs"][0]
    print(f"few-shot prompts: MNLI-shaped, {r['train_rows']:,} train / {r['eval_rows']:,} eval rows, "
          f"{first['all_templates']} eval templates x {len(STYLES)} OPTIONS styles, k=3, 1,024 tokens")
    print(f"  token counters: tokenizer = {r['tokenizer']} ({r['threads']} threads), words = whitespace")
    for run in r["runs"]:
        part = ("" if run["templates"] == run["all_templates"] else
                f" ({run['templates']} of {run['all_templates']} templates in {run['seconds']:.1f} s, "
                "scaled)")
        print(f"  {run['which']:<9} {run['counter']:<9} {run['scaled_seconds']:8.1f} s{part}; "
              f"peak RSS {run['peak_mb']:,.0f} MB (after imports {run['imports_mb']:,.0f} MB); "
              f"{run['prompts']:,} prompts, {run['counted']:,} counted exactly")
    for counter, ratio in r["ratio"].items():
        print(f"  ratio previous / flanpipe ({counter}): {ratio:.1f}x; identical prompts on the templates "
              f"both ran: {'yes' if r['identical'][counter] else 'NO'}")


def run(rows: int | None, tokenizer: str | None, threads: int, peer_templates: int) -> int:
    """``flanpipe bench fewshot``: ``rows`` train rows; exit status 1 unless the prompts of the
    templates both implementations ran are identical."""
    result = bench_fewshot(rows, tokenizer, threads, peer_templates)
    print_fewshot(result)
    return 0 if all(result["identical"].values()) else 1
