"""Scale benchmark: the workflow through ``pack`` on FLAN-shaped synthetic data at real sizes.

    flanpipe bench scale [--scales 0.02,0.1] [--workdir DIR] [--cores 2] [--datasets a,b]

It writes ten datasets in their hub schema as ``local`` sources (Parquet, made with vectorised
NumPy/Arrow), with the shapes that make FLAN's data hard to handle: a 4.5M-pair translation set with
German targets, a 3.8M-document summarization set, long news articles, SQuAD-style passages shared
by several questions, NLI premises with one hypothesis per label, long reviews with a long tail,
skewed question classes and tiny sets (COPA, whose 400 rows stay whole at every scale). Each
dataset has ``round(real_rows * scale)`` rows (at least ``min(real_rows, 1000)``).

At each scale it writes a config (the paper's cap of 30,000 and its budget of 30,000 steps of
8,192 tokens; held-out cluster ``nli``, so two mixtures), runs ``snakemake --until pack`` in a
fresh working directory, and reads every job's ``benchmarks/<rule>/<job>.tsv``. Snakemake samples
a job's memory every 0.5 s for its first 30 s and then only every 30 s, so a long job's peak can be
missed; the harness also records each script job's own peak (``VmHWM`` of the job's Python process
at exit; not its worker processes) with a ``sitecustomize`` hook on the jobs' ``PYTHONPATH``. Peak
RSS is the larger of the two. Per rule it prints the jobs, the summed wall
time, the largest job's peak RSS and the ratio of each between the two scales.

The command needs only rule names and benchmark files, so it keeps working when stages change.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from bench.dedup import CODAS, NUCLEI, ONSETS
from flanpipe.core.text.keys import derive_seed
from tests.synthetic import WORDS

REPO = Path(__file__).resolve().parents[1]  # the checkout: bench/ is beside the Snakefile
CHUNK_WORDS = 8_000_000
"""Words generated per chunk of rows: bounds the generator's memory whatever the scale."""
PAPER_CAP = 30_000
PAPER_STEPS = 30_000
PAPER_TOKENS_PER_BATCH = 8_192

# --- words and texts -------------------------------------------------------------------------------


def made_up_words(size: int, seed: int) -> np.ndarray:
    """``tests.synthetic.WORDS`` then distinct made-up words of 1-3 syllables, drawn vectorised.

    >>> words = made_up_words(1000, seed=0)
    >>> len(words), len(set(words)), words[0]
    (1000, 1000, 'the')
    """
    rng = np.random.default_rng(derive_seed(seed, "bench/scale/words"))
    parts = [np.array(p, dtype=object) for p in (ONSETS, NUCLEI, CODAS)]
    words = np.array(WORDS, dtype=object)
    while len(words) < size:
        m = 2 * size
        syllables = [sum((p[rng.integers(len(p), size=m)] for p in parts), start=np.full(m, "", object))
                     for _ in range(3)]
        count = rng.choice(3, m, p=(0.45, 0.45, 0.10)) + 1
        made = syllables[0] + np.where(count >= 2, syllables[1], "") + np.where(count >= 3, syllables[2], "")
        words = np.concatenate([words, made])
        _, first = np.unique(words.astype(str), return_index=True)
        words = words[np.sort(first)]
    return words[:size]


class Words:
    """A made-up vocabulary with Zipf frequencies; texts of given word counts, drawn vectorised.

    >>> words = Words(500, seed=0)
    >>> texts = words.texts(np.random.default_rng(0), np.array([3, 1, 5]))
    >>> [len(t.split(" ")) for t in texts.to_pylist()]
    [3, 1, 5]
    """

    def __init__(self, size: int, seed: int, german: bool = False):
        vocab = pa.array(made_up_words(size, seed).tolist(), type=pa.string())
        if german:  # different surface forms for non-English targets: umlauts, long compounds
            suffix = pa.array(np.array(["ung", "en", ""], dtype=object)[np.arange(size) % 3].tolist())
            vocab = pc.binary_join_element_wise(
                pc.replace_substring(vocab, "a", "ä", max_replacements=1), suffix, "")
        self.vocab = vocab
        self.char_lengths = pc.utf8_length(self.vocab).to_numpy()
        weights = 1.0 / np.arange(1, size + 1) ** 1.05
        self.cdf = np.cumsum(weights) / weights.sum()

    def ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, rng.random(n)), len(self.cdf) - 1)

    def join(self, ids: np.ndarray, counts: np.ndarray) -> pa.Array:
        """The words ``ids``, cut into texts of ``counts`` words each, joined by spaces."""
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), self.vocab.take(pa.array(ids)))
        return pc.binary_join(lists, " ")

    def texts(self, rng: np.random.Generator, counts: np.ndarray) -> pa.Array:
        return self.join(self.ids(rng, int(counts.sum())), counts)


def lognormal_counts(rng: np.random.Generator, n: int, median: float, sigma: float, low: int,
                     high: int) -> np.ndarray:
    """Word counts with a long right tail: log-normal around ``median``, clipped to [low, high]."""
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), low, high).astype(np.int64)


def hex_ids(rng: np.random.Generator, n: int, width: int) -> pa.Array:
    """Random lower-case hex strings, like CNN/DailyMail's and SQuAD's ids."""
    digits = np.array(list("0123456789abcdef"))[rng.integers(0, 16, (n, width))]
    return pa.array(np.ascontiguousarray(digits).view(f"<U{width}").ravel())


# --- the datasets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One FLAN dataset's real split sizes and a generator of its rows in the hub schema."""

    name: str
    train_rows: int
    eval_rows: int
    eval_split: str
    words_per_row: int
    """About how many words a row holds (sets the chunk size)."""
    make: Callable[[np.random.Generator, int, int], pa.Table]
    """``make(rng, n, first_row)``: ``n`` rows, ids numbered from ``first_row``."""


EN = None
DE = None


def _words() -> tuple[Words, Words]:
    global EN, DE
    if EN is None:
        EN, DE = Words(50_000, seed=1), Words(50_000, seed=2, german=True)
    return EN, DE


def make_wmt(rng, n, first):
    """WMT16 de-en: sentence pairs of ~22 words, German a little shorter; 3% repeated pairs."""
    en_words, de_words = _words()
    en_len = lognormal_counts(rng, n, 22, 0.55, 1, 200)
    de_len = np.maximum(1, np.rint(en_len * rng.normal(0.92, 0.1, n))).astype(np.int64)
    pairs = pa.StructArray.from_arrays([de_words.texts(rng, de_len), en_words.texts(rng, en_len)],
                                       names=["de", "en"])
    repeat = np.flatnonzero(rng.random(n) < 0.03)
    order = np.arange(n)
    order[repeat] = rng.integers(0, np.maximum(repeat, 1))
    return pa.table({"translation": pairs.take(pa.array(order))})


def make_gigaword(rng, n, first):
    """Gigaword: a news article's first sentence (~31 words) and its headline (~8 words)."""
    en, _ = _words()
    return pa.table({"document": en.texts(rng, lognormal_counts(rng, n, 31, 0.3, 4, 120)),
                     "summary": en.texts(rng, lognormal_counts(rng, n, 8, 0.3, 2, 30))})


def make_cnn(rng, n, first):
    """CNN/DailyMail: articles of ~690 words (tail to 3,000), 3-4 highlight sentences."""
    en, _ = _words()
    return pa.table({"article": en.texts(rng, lognormal_counts(rng, n, 690, 0.45, 60, 3000)),
                     "highlights": en.texts(rng, lognormal_counts(rng, n, 50, 0.35, 10, 200)),
                     "id": hex_ids(rng, n, 40)})


def make_squad(rng, n, first):
    """SQuAD: ~4.5 questions per ~120-word passage; each answer a span of its passage with its
    character offset; a title per article of several passages."""
    en, _ = _words()
    n_passages = max(1, n * 2 // 9)
    passage_of = np.sort(rng.integers(0, n_passages, n))
    ctx_len = lognormal_counts(rng, n_passages, 120, 0.4, 25, 700)
    ctx_ids = en.ids(rng, int(ctx_len.sum()))
    first_token = np.concatenate([[0], np.cumsum(ctx_len)[:-1]])
    # Character offset of each word in its passage: word lengths plus one space, summed in the passage.
    spaced = en.char_lengths[ctx_ids] + 1
    char_start = np.cumsum(spaced) - spaced
    char_start -= np.repeat(char_start[first_token], ctx_len)
    ans_len = rng.integers(1, 4, n)
    room = np.maximum(ctx_len[passage_of] - ans_len, 1)
    ans_first = first_token[passage_of] + (rng.random(n) * room).astype(np.int64)
    ans_len = np.minimum(ans_len, first_token[passage_of] + ctx_len[passage_of] - ans_first)
    ans_tokens = np.repeat(ans_first - np.concatenate([[0], np.cumsum(ans_len)[:-1]]), ans_len) \
        + np.arange(int(ans_len.sum()))
    contexts = en.join(ctx_ids, ctx_len).take(pa.array(passage_of))
    titles = en.texts(rng, rng.integers(1, 4, n_passages // 5 + 1))
    one = pa.array(np.arange(n + 1, dtype=np.int32))
    answers = pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(one, en.join(ctx_ids[ans_tokens], ans_len)),
         pa.ListArray.from_arrays(one, pa.array(char_start[ans_first]))], names=["text", "answer_start"])
    return pa.table({"id": hex_ids(rng, n, 24), "title": titles.take(pa.array(passage_of // 5)),
                     "context": contexts,
                     "question": en.texts(rng, lognormal_counts(rng, n, 10, 0.3, 3, 40)),
                     "answers": answers})


def make_mnli(rng, n, first):
    """MNLI: each premise (~20 words, tail to 200) with one hypothesis per label, labels shuffled."""
    en, _ = _words()
    n_premises = -(-n // 3)
    premises = en.texts(rng, lognormal_counts(rng, n_premises, 20, 0.6, 3, 200))
    labels = rng.permuted(np.tile([0, 1, 2], (n_premises, 1)), axis=1).ravel()[:n]
    return pa.table({"premise": premises.take(pa.array(np.arange(n) // 3)),
                     "hypothesis": en.texts(rng, lognormal_counts(rng, n, 10, 0.4, 2, 60)),
                     "label": labels, "idx": np.arange(first, first + n)})


def make_yelp(rng, n, first):
    """Yelp polarity: reviews of ~130 words with a long tail to 1,000; labels balanced."""
    en, _ = _words()
    return pa.table({"text": en.texts(rng, lognormal_counts(rng, n, 130, 0.8, 1, 1000)),
                     "label": rng.integers(0, 2, n)})


def make_ag_news(rng, n, first):
    """AG News: a title and a description, ~38 words; four balanced classes."""
    en, _ = _words()
    return pa.table({"text": en.texts(rng, lognormal_counts(rng, n, 38, 0.3, 8, 200)),
                     "label": rng.integers(0, 4, n)})


def make_winogrande(rng, n, first):
    """WinoGrande: a ~20-word sentence with a blank ``_``, two name options, answer "1" or "2"."""
    en, _ = _words()
    before = en.texts(rng, lognormal_counts(rng, n, 9, 0.3, 2, 30))
    after = en.texts(rng, lognormal_counts(rng, n, 9, 0.3, 1, 30))
    return pa.table({"sentence": pc.binary_join_element_wise(before, after, " _ "),
                     "option1": en.texts(rng, np.ones(n, np.int64)),
                     "option2": en.texts(rng, np.ones(n, np.int64)),
                     "answer": pa.array(np.where(rng.random(n) < 0.5, "1", "2"))})


def make_copa(rng, n, first):
    """COPA: a premise, two alternatives, cause or effect (tiny: 400 + 100 rows)."""
    en, _ = _words()
    return pa.table({"premise": en.texts(rng, lognormal_counts(rng, n, 8, 0.2, 3, 20)),
                     "choice1": en.texts(rng, lognormal_counts(rng, n, 6, 0.2, 2, 15)),
                     "choice2": en.texts(rng, lognormal_counts(rng, n, 6, 0.2, 2, 15)),
                     "question": pa.array(np.where(rng.random(n) < 0.5, "cause", "effect")),
                     "idx": np.arange(first, first + n), "label": rng.integers(0, 2, n)})


def make_trec(rng, n, first):
    """TREC: short questions with skewed coarse classes (2% abbreviation ... 23% entity)."""
    en, _ = _words()
    coarse = rng.choice(6, n, p=[0.02, 0.23, 0.22, 0.22, 0.15, 0.16])
    return pa.table({"text": en.texts(rng, lognormal_counts(rng, n, 10, 0.3, 3, 35)),
                     "coarse_label": coarse, "fine_label": coarse * 8 + rng.integers(0, 8, n)})


SHAPES = {s.name: s for s in [
    Shape("wmt16_de_en", 4_548_885, 2_169, "validation", 42, make_wmt),
    Shape("gigaword", 3_803_957, 189_651, "validation", 40, make_gigaword),
    Shape("cnn_dailymail", 287_113, 13_368, "validation", 750, make_cnn),
    Shape("squad_v1", 87_599, 10_570, "validation", 140, make_squad),
    Shape("mnli", 392_702, 9_815, "validation_matched", 30, make_mnli),
    Shape("yelp_polarity", 560_000, 38_000, "test", 170, make_yelp),
    Shape("ag_news", 120_000, 7_600, "test", 40, make_ag_news),
    Shape("winogrande", 40_398, 1_267, "validation", 22, make_winogrande),
    Shape("copa", 400, 100, "validation", 20, make_copa),
    Shape("trec", 5_452, 500, "test", 10, make_trec),
]}


def scaled_rows(real_rows: int, scale: float) -> int:
    """``round(real_rows * scale)``, but never below ``min(real_rows, 1000)``.

    >>> scaled_rows(4_548_885, 0.1), scaled_rows(400, 0.1), scaled_rows(5_452, 0.01)
    (454888, 400, 1000)
    """
    return max(round(real_rows * scale), min(real_rows, 1000))


def write_split(shape: Shape, split: str, rows: int, path: Path, seed: int) -> int:
    """Write ``rows`` rows of ``shape`` to ``path`` chunk by chunk; returns the bytes written."""
    rng = np.random.default_rng(derive_seed(seed, f"bench/scale/{shape.name}/{split}"))
    chunk = max(1_000, CHUNK_WORDS // shape.words_per_row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer = None
    for first in range(0, rows, chunk):
        table = shape.make(rng, min(chunk, rows - first), first)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
    tmp.replace(path)
    return path.stat().st_size


def write_sources(root: Path, scale: float, seed: int = 0, names: list[str] | None = None) -> dict:
    """Every dataset's train and eval split under ``root/<name>/``; the rows written, per dataset."""
    written = {}
    for name in names or list(SHAPES):
        shape = SHAPES[name]
        counts = {}
        for split, real in (("train", shape.train_rows), (shape.eval_split, shape.eval_rows)):
            counts[split] = scaled_rows(real, scale)
            write_split(shape, split, counts[split], root / name / f"{split}.parquet", seed)
        written[name] = counts
    return written


def bench_config(sources: Path, names: list[str], steps: int = PAPER_STEPS) -> dict:
    """The run's config: the datasets as local sources, the paper's cap and budget (``steps`` of
    8,192 tokens), held-out nli."""
    return {
        "datasets": names,
        "heldout_clusters": ["nli"],
        "download": {"sources": {n: {"kind": "local", "path": str(Path(sources, n).resolve())}
                                 for n in names}},
        "mix": {"cap": PAPER_CAP},
        "train": {"steps": steps, "tokens_per_batch": PAPER_TOKENS_PER_BATCH},
        "ablations": {"enabled": False},
    }


# --- running the workflow and reading its benchmark files --------------------------------------------

# Imported by every Python process of a job (it is on their PYTHONPATH): at exit, a Snakemake script
# job appends its rule, log files and peak RSS to $FLANPIPE_BENCH_PEAKS. The job's benchmark file is
# found from its log (the rules' convention: logs/<stage>/<job>.log, benchmarks/<stage>/<job>.tsv).
SITECUSTOMIZE = '''
import atexit, json, os, sys

def _flanpipe_bench_peak():
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    out = os.environ.get("FLANPIPE_BENCH_PEAKS")
    if job is None or not out:
        return
    try:  # VmHWM: this address space's peak; ru_maxrss would count the forking Snakemake's RSS too
        with open("/proc/self/status") as f:
            peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return
    with open(out, "a") as f:
        f.write(json.dumps({"rule": job.rule, "log": [str(p) for p in job.log],
                            "peak_mb": peak_kb / 1024}) + "\\n")

atexit.register(_flanpipe_bench_peak)
'''


@dataclass(frozen=True)
class JobCost:
    rule: str
    job: str
    wall_s: float
    max_rss_mb: float
    """The larger of Snakemake's sampled ``max_rss`` and the job's own peak (``VmHWM``)."""


def run_workflow(workdir: Path, config: dict, cores: int, until: str = "pack") -> float:
    """``snakemake --until pack`` on the project's Snakefile in ``workdir``; returns the wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "bench_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    hook = workdir / ".bench_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "FLANPIPE_BENCH_PEAKS": str(workdir / "bench_peaks.jsonl"),
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(config_path), "--cores", str(cores),
           "--until", until]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (workdir / "snakemake.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (log: {workdir / 'snakemake.log'}):\n"
                           f"{proc.stderr[-3000:]}")
    return time.monotonic() - start


def read_benchmarks(workdir: Path) -> list[JobCost]:
    """Every job's wall time and peak RSS from ``benchmarks/**.tsv`` (and the hook's peaks)."""
    peaks: dict[str, tuple[str, float]] = {}
    peaks_file = workdir / "bench_peaks.jsonl"
    if peaks_file.exists():
        for line in peaks_file.read_text().splitlines():
            rec = json.loads(line)
            for log in rec["log"]:
                key = "benchmarks/" + log.removeprefix("logs/").removesuffix(".log") + ".tsv"
                peak = max(peaks.get(key, ("", 0.0))[1], rec.get("peak_mb", 0.0))
                peaks[key] = (rec["rule"], peak)
    jobs = []
    root = workdir / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]
        sampled = _number(row.get("max_rss"))
        rule, own = peaks.get(f"benchmarks/{rel.as_posix()}", ("", 0.0))
        rule = rule or (rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        jobs.append(JobCost(rule, rel.with_suffix("").as_posix(), _number(row.get("s")), max(sampled, own)))
    return jobs


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # "NA" for a job too short to sample
        return 0.0


@dataclass(frozen=True)
class RuleCost:
    rule: str
    jobs: int
    wall_s: float
    """Summed over the rule's jobs."""
    max_rss_mb: float
    """The rule's largest job."""
    worst_job: str


def by_rule(jobs: list[JobCost]) -> dict[str, RuleCost]:
    """Per rule: job count, summed wall time, the largest peak RSS and the job that had it.

    >>> by_rule([JobCost("download", "download/a", 2.0, 300.0),
    ...          JobCost("download", "download/b", 1.0, 500.0)])
    {'download': RuleCost(rule='download', jobs=2, wall_s=3.0, max_rss_mb=500.0, worst_job='download/b')}
    """
    out: dict[str, RuleCost] = {}
    for rule in dict.fromkeys(j.rule for j in jobs):
        mine = [j for j in jobs if j.rule == rule]
        worst = max(mine, key=lambda j: j.max_rss_mb)
        out[rule] = RuleCost(rule, len(mine), sum(j.wall_s for j in mine), worst.max_rss_mb, worst.job)
    return out


def bench_scale(scales: list[float], workdir: Path | None = None, cores: int = 2,
                names: list[str] | None = None, seed: int = 0, keep: bool = False,
                steps: int = PAPER_STEPS) -> dict:
    """Generate, run and measure at each scale; the rows written and the per-rule costs.

    ``steps`` sets the training budget (``steps * 8,192`` tokens) that mix samples and pack packs:
    their cost follows the budget, not the data, so a smaller one makes a quick run of the stages
    that follow the data."""
    names = names or list(SHAPES)
    unknown = sorted(set(names) - set(SHAPES))
    if unknown:
        raise ValueError(f"--datasets: unknown {unknown}; allowed: {sorted(SHAPES)}")
    if any(s <= 0 or s > 1 for s in scales):
        raise ValueError(f"--scales: each scale must be in (0, 1], got {scales}")
    base = Path(workdir) if workdir else Path(f"bench-scale-{int(time.time())}")
    results = []
    for scale in scales:
        run_dir = base / f"scale-{scale:g}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        start = time.monotonic()
        rows = write_sources(run_dir / "sources", scale, seed, names)
        generate_s = time.monotonic() - start
        print(f"scale {scale:g}: wrote {sum(sum(c.values()) for c in rows.values()):,} rows in "
              f"{generate_s:.0f} s; running the workflow through pack in {run_dir}", flush=True)
        wall = run_workflow(run_dir / "work", bench_config(run_dir / "sources", names, steps), cores)
        jobs = read_benchmarks(run_dir / "work")
        results.append({"scale": scale, "steps": steps, "rows": rows, "generate_s": generate_s,
                        "workflow_s": wall, "jobs": jobs, "rules": by_rule(jobs)})
        if not keep:
            shutil.rmtree(run_dir / "sources", ignore_errors=True)
    return {"workdir": str(base), "results": results}


def collect(run_dirs: dict[float, Path], names: list[str] | None = None) -> dict:
    """The result of finished runs read back from their folders (``{scale: .../scale-S}``), e.g. to
    put runs made by separate commands in one table; times of generation and of the whole run are
    not kept, so they read 0."""
    names = names or list(SHAPES)
    results = []
    for scale, run_dir in sorted(run_dirs.items()):
        config = yaml.safe_load((Path(run_dir) / "work/bench_config.yaml").read_text())
        rows = {n: {split: scaled_rows(real, scale) for split, real in
                    (("train", SHAPES[n].train_rows), (SHAPES[n].eval_split, SHAPES[n].eval_rows))}
                for n in config["datasets"]}
        jobs = read_benchmarks(Path(run_dir) / "work")
        results.append({"scale": scale, "steps": config["train"]["steps"], "rows": rows,
                        "generate_s": 0.0, "workflow_s": 0.0, "jobs": jobs, "rules": by_rule(jobs)})
    return {"workdir": "", "results": results}


def format_scale(result: dict) -> str:
    """The per-rule table: jobs, wall time and peak RSS at each scale, and their ratios."""
    runs = result["results"]
    lines = []
    for run in runs:
        rows = run["rows"]
        timing = (f"; workflow {run['workflow_s']:.0f} s (data generation {run['generate_s']:.0f} s)"
                  if run["workflow_s"] else "")
        lines.append(f"scale {run['scale']:g}: {sum(sum(c.values()) for c in rows.values()):,} raw rows; "
                     f"cap {PAPER_CAP:,}, budget {run.get('steps', PAPER_STEPS):,} steps x "
                     f"{PAPER_TOKENS_PER_BATCH:,} tokens{timing}")
    heads = ["rule", "jobs"]
    for run in runs:
        heads += [f"wall s @{run['scale']:g}", f"peak MB @{run['scale']:g}"]
    if len(runs) >= 2:
        heads += ["wall ratio", "peak ratio", "largest job"]
    table = [heads]
    rules = list(dict.fromkeys(r for run in runs for r in run["rules"]))
    for rule in rules:
        costs = [run["rules"].get(rule) for run in runs]
        row = [rule, "/".join(str(c.jobs) if c else "-" for c in costs)]
        for c in costs:
            row += [f"{c.wall_s:.1f}", f"{c.max_rss_mb:.0f}"] if c else ["-", "-"]
        if len(runs) >= 2 and costs[0] and costs[-1]:
            row += [_ratio(costs[-1].wall_s, costs[0].wall_s),
                    _ratio(costs[-1].max_rss_mb, costs[0].max_rss_mb), costs[-1].worst_job]
        table.append(row)
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(heads))]
    for r in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)))
    return "\n".join(lines)


def _ratio(large: float, small: float) -> str:
    return f"{large / small:.2f}" if small > 0 else "-"


def print_scale(result: dict) -> None:
    print(format_scale(result))


def run(scales: list[float], workdir: Path | None, cores: int, datasets: list[str] | None, keep: bool,
        budget_steps: int) -> int:
    """``flanpipe bench scale``."""
    print_scale(bench_scale(scales, workdir, cores, datasets, keep=keep, steps=budget_steps))
    return 0
