"""Dedup benchmark: our fingerprint kernels and DuckDB stats queries next to named peers, same run.

    flanpipe bench dedup [--rows 1000000] [--peer-rows 20000]

Three measurements on one synthetic table of (inputs, targets) rows with planted duplicates:

1. exact dedup, :func:`flanpipe.core.text.hashing.exact_hashes` + ``first_occurrence`` vs pandas
   ``DataFrame.duplicated`` (ours also catches duplicates that differ only in case or whitespace);
2. MinHash signatures (128 permutations, word 3-gram shingles), ``word_hashes`` + ``minhash`` vs
   datasketch ``MinHash`` with ``update_batch``, and how close both Jaccard estimates come to the truth;
3. per-dataset stats queries, DuckDB on the Arrow table in-process vs pandas ``groupby``;
4. near-duplicate precision and recall on SQuAD- and MNLI-shaped rows of real English (passages
   shared by several questions or hypotheses, planted copies: :func:`tests.synthetic.squad_shaped`,
   :func:`tests.synthetic.nli_shaped`, as the dedup tests use them), ours next to datasketch's
   ``MinHashLSH``, each with the registry's ``distinct`` fields and over all raw text.

Every figure is per core: Arrow, DuckDB and the Numba kernels run on one thread, as pandas and
datasketch do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.text import hashing as fp
from flanpipe.core.text.keys import derive_seed
from tests.synthetic import (
    WORD_RE,
    WORDS,
    Shaped,
    example_texts,
    load_passages,
    nli_shaped,
    ours_dropped,
    pair_similarity,
    shingles,
    squad_shaped,
)

SHINGLE = 3
NUM_PERM = 128
MINHASH_SEED = 1
JACCARD_PAIRS = 2_000
DATASETS = 62
TEMPLATES = 10

# Row kinds planted by synthetic_rows, and the share of rows of each kind.
ORIGINAL, EXACT, EXACT_VARIED, NEAR = 0, 1, 2, 3
KIND_SHARES = (0.85, 0.05, 0.05, 0.05)

STATS_BY_DATASET = """
SELECT dataset, count(*) AS n, avg(input_len) AS mean_input_len, avg(target_len) AS mean_target_len
FROM example_stats
GROUP BY dataset
ORDER BY dataset
"""
STATS_BY_TEMPLATE = """
SELECT dataset, template_id, count(*) AS n
FROM example_stats
GROUP BY dataset, template_id
ORDER BY dataset, template_id
"""

# --- synthetic rows ------------------------------------------------------------------------------

ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl pr sh st th tr".split()
NUCLEI = "a e i o u ai ea ee oo ou".split()
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st"]


def vocabulary(size: int = 4_000, seed: int = 0) -> np.ndarray:
    """``tests.synthetic.WORDS`` plus made-up words of 1-3 syllables: ``size`` distinct lower-case
    words.

    >>> v = vocabulary(100)
    >>> len(v), len(set(v)), v[0]
    (100, 100, 'the')
    """
    rng = np.random.default_rng(derive_seed(seed, "vocabulary"))
    words = dict.fromkeys(WORDS)
    while len(words) < size:
        syllables = rng.choice(3, p=(0.45, 0.45, 0.10)) + 1
        words[
            "".join(ONSETS[rng.integers(len(ONSETS))] + NUCLEI[rng.integers(len(NUCLEI))]
                    + CODAS[rng.integers(len(CODAS))] for _ in range(syllables))
        ] = None
    return np.array(list(words)[:size], dtype=object)


@dataclass(frozen=True)
class Plan:
    """Which rows repeat an earlier one: ``kind[i]`` (ORIGINAL, EXACT, EXACT_VARIED or NEAR) and
    ``source[i]``, the earlier original row that row ``i`` copies (``i`` itself for originals)."""

    kind: np.ndarray
    source: np.ndarray


def plant_duplicates(n: int, seed: int = 0) -> Plan:
    """The duplicate plan :func:`synthetic_rows` follows: ~10% exact duplicates (half of them with case
    or whitespace changed) and ~5% near duplicates, each of a random earlier original row.

    >>> p = plant_duplicates(1000)
    >>> bool((p.source <= np.arange(1000)).all() and (p.kind[p.source] == ORIGINAL).all())
    True
    """
    rng = np.random.default_rng(derive_seed(seed, "plan"))
    kind = rng.choice(len(KIND_SHARES), size=n, p=KIND_SHARES).astype(np.int8)
    kind[:1] = ORIGINAL
    originals = np.flatnonzero(kind == ORIGINAL)
    copies = np.flatnonzero(kind != ORIGINAL)
    before = np.searchsorted(originals, copies)  # originals earlier than each copy; >= 1 (row 0)
    source = np.arange(n)
    source[copies] = originals[(rng.random(len(copies)) * before).astype(np.int64)]
    return Plan(kind, source)


def _token_strings(vocab: np.ndarray, puncts: tuple[str, ...]) -> pa.Array:
    """Every spelling of every word: token ``w + len(vocab) * (case + 3 * punct)`` is word ``w`` in
    lower (case 0), Title (1) or UPPER (2) case, followed by punctuation mark ``puncts[punct]``."""
    forms = (str.lower, str.capitalize, str.upper)
    return pa.array([form(w) + p for p in puncts for form in forms for w in vocab], pa.string())


def _copy_rows(codes: np.ndarray, offsets: np.ndarray, rows: np.ndarray, source: np.ndarray) -> None:
    """Overwrite the tokens of ``rows`` with those of ``source[rows]`` (of the same length), in place."""
    lengths = offsets[rows + 1] - offsets[rows]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    target = np.repeat(offsets[rows], lengths) + within
    codes[target] = codes[np.repeat(offsets[source[rows]], lengths) + within]


def _texts(rng: np.random.Generator, vocab_size: int, plan: Plan, lengths: tuple[int, int],
           case_shares: tuple[float, float], punct_shares: tuple[float, ...] = (1.0,),
           ) -> tuple[np.ndarray, np.ndarray]:
    """(token codes, offsets) of one text per row, ``lengths`` words each (inclusive range), copied
    rows sharing their source's tokens. Each word is lower, Title or UPPER case (``case_shares`` of
    the first two) and followed by punctuation mark ``k`` with probability ``punct_shares[k]``. Texts
    start with a capital; with punctuation, they end with the last mark (a full stop) and the word
    after every full stop is capitalised too."""
    n = len(plan.kind)
    counts = rng.integers(lengths[0], lengths[1] + 1, size=n)[plan.source]
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    total = int(offsets[-1])
    # one byte per draw is precision enough for these shares; byte arrays keep the passes cheap
    u = rng.integers(0, 256, size=total, dtype=np.uint8)
    case = (u >= round(256 * case_shares[0])).view(np.uint8)
    case += u >= round(256 * (case_shares[0] + case_shares[1]))
    punct = np.zeros(total, np.uint8)
    capital = offsets[:-1]
    if len(punct_shares) > 1:
        u = rng.integers(0, 256, size=total, dtype=np.uint8)
        for share in np.cumsum(punct_shares)[:-1]:
            punct += u >= round(256 * share)
        stop = len(punct_shares) - 1
        punct[offsets[1:] - 1] = stop
        capital = np.concatenate([capital, np.flatnonzero(punct[:-1] == stop) + 1])
    case[capital] = np.maximum(case[capital], 1)
    punct *= 3
    punct += case  # the spelling: case + 3 * punct
    codes = punct.astype(np.int32)
    codes *= vocab_size
    codes += rng.integers(0, vocab_size, size=total, dtype=np.int32)
    _copy_rows(codes, offsets, np.flatnonzero(plan.kind != ORIGINAL), plan.source)
    return codes, offsets


def _join(tokens: pa.Array, codes: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Each row's tokens joined by single spaces, in Arrow (no Python string per row)."""
    words = tokens.take(pa.array(codes))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), words), " ")


def _substitute(rng: np.random.Generator, codes: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
                vocab_size: int) -> None:
    """Replace one word (and in half of ``rows`` a second one, elsewhere) by another word, keeping
    its case and punctuation, in place."""
    lengths = offsets[rows + 1] - offsets[rows]
    first = (rng.random(len(rows)) * lengths).astype(np.int64)
    second = (first + 1 + (rng.random(len(rows)) * (lengths - 1)).astype(np.int64)) % lengths
    twice = rng.random(len(rows)) < 0.5
    for pos in (offsets[rows] + first, (offsets[rows] + second)[twice]):
        old = codes[pos] % vocab_size
        codes[pos] += (old + rng.integers(1, vocab_size, size=len(pos))) % vocab_size - old


def _vary(rng: np.random.Generator, inputs: pa.Array, targets: pa.Array,
          rows: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """Change case or whitespace of ``rows`` (a quarter each: inputs lower-cased, upper-cased, spaces
    doubled, or stray whitespace at the ends of inputs and targets): the normalised pair is unchanged."""
    variant = rng.integers(0, 4, size=len(rows))
    edits = {
        "inputs": [
            (0, pc.utf8_lower), (1, pc.utf8_upper),
            (2, lambda a: pc.replace_substring(a, " ", "  ")),
            (3, lambda a: pc.binary_join_element_wise("\n", a, " \t", "")),
        ],
        "targets": [(3, lambda a: pc.binary_join_element_wise(" ", a, "  ", ""))],
    }
    columns = {"inputs": inputs, "targets": targets}
    for name, column_edits in edits.items():
        picked = [rows[variant == k] for k, _ in column_edits]
        changed = pa.concat_arrays([edit(columns[name].take(pa.array(r)))
                                    for r, (_, edit) in zip(picked, column_edits, strict=True)])
        where = np.concatenate(picked)
        mask = np.zeros(len(inputs), np.bool_)
        mask[where] = True
        # one pass over the column: the changed values in row order
        columns[name] = pc.replace_with_mask(columns[name], pa.array(mask),
                                             changed.take(pa.array(np.argsort(where, kind="stable"))))
    return columns["inputs"], columns["targets"]


def synthetic_rows(n: int, seed: int = 0) -> pa.Table:
    """``n`` rows of sentence-like ``inputs`` (~300 characters, mixed case, commas and full stops) and
    short ``targets`` (1-5 words), with the duplicates of :func:`plant_duplicates`.

    >>> t = synthetic_rows(2000)
    >>> t.column_names, t.num_rows
    (['inputs', 'targets'], 2000)
    """
    plan = plant_duplicates(n, seed)
    rng = np.random.default_rng(derive_seed(seed, "rows"))
    vocab = vocabulary(seed=seed)
    v = len(vocab)
    codes, offsets = _texts(rng, v, plan, (24, 52), (0.90, 0.08), (0.88, 0.07, 0.05))
    _substitute(rng, codes, offsets, np.flatnonzero(plan.kind == NEAR), v)
    inputs = _join(_token_strings(vocab, ("", ",", ".")), codes, offsets)
    codes, offsets = _texts(rng, v, plan, (1, 5), (0.80, 0.20))
    targets = _join(_token_strings(vocab, ("",)), codes, offsets)
    inputs, targets = _vary(rng, inputs, targets, np.flatnonzero(plan.kind == EXACT_VARIED))
    return pa.table({"inputs": inputs, "targets": targets})


def stats_rows(inputs: pa.Array, targets: pa.Array, seed: int = 0) -> pa.Table:
    """One row per example as the stats queries see it: dataset (62 names, a few large and many
    small), template_id (0-9) and the lengths of inputs and targets in characters."""
    rng = np.random.default_rng(derive_seed(seed, "stats"))
    names = pa.array([f"dataset_{i:02d}" for i in range(DATASETS)])
    weights = 1.0 / np.arange(1, DATASETS + 1)
    dataset = rng.choice(DATASETS, size=len(inputs), p=weights / weights.sum())
    return pa.table({
        "dataset": names.take(pa.array(dataset)),
        "template_id": pa.array(rng.integers(0, TEMPLATES, size=len(inputs), dtype=np.int32)),
        "input_len": pc.utf8_length(inputs), "target_len": pc.utf8_length(targets),
    })


# --- measurements --------------------------------------------------------------------------------

def _timed(fn: Callable[[], object], repeats: int = 1) -> tuple[object, float]:
    """(result, seconds) of the fastest of ``repeats`` calls of ``fn()``: short measurements take the
    best of a few, as a shared machine's noise only ever adds time."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if (elapsed := time.perf_counter() - start) < best:
            best, result = elapsed, out
    return result, best


def _ours_exact(inputs: pa.Array, targets: pa.Array) -> tuple[np.ndarray, float]:
    """(each row's first twin or -1, seconds spent hashing: the rest is the hash table)."""
    start = time.perf_counter()
    h = fp.exact_hashes(inputs, targets)
    hash_s = time.perf_counter() - start
    return fp.first_occurrence(h[:, 0], h[:, 1], np.ones(len(h), np.bool_)), hash_s


def _ours_minhash(inputs: pa.Array) -> tuple[np.ndarray, float]:
    """(signatures, seconds spent splitting and hashing words: the rest is the permutations)."""
    start = time.perf_counter()
    words = fp.word_hashes(inputs)
    words_s = time.perf_counter() - start
    return fp.minhash(words, SHINGLE, NUM_PERM, seed=MINHASH_SEED), words_s


def _peer_minhash(texts: list[str]) -> np.ndarray:
    """datasketch signatures: ``MinHash.generator`` reuses one MinHash's permutations (its fast
    path for many sets) and fills each copy with ``update_batch``."""
    from datasketch import MinHash

    sets = (shingles(t, SHINGLE) for t in texts)
    return np.array([m.hashvalues for m in MinHash.generator(sets, num_perm=NUM_PERM, seed=MINHASH_SEED)])


def _warm_up(inputs: pa.Array, targets: pa.Array) -> float:
    """Seconds for the first call of each kernel on a small slice: Numba's compile (or cache load)."""
    start = time.perf_counter()
    _ours_exact(inputs, targets)
    _ours_minhash(inputs)
    return time.perf_counter() - start


def _bench_exact(table: pa.Table, inputs: pa.Array, targets: pa.Array, plan: Plan) -> dict:
    (first, hash_s), ours_s = _timed(lambda: _ours_exact(inputs, targets), repeats=3)
    frame = table.select(["inputs", "targets"]).to_pandas()
    peer, peer_s = _timed(lambda: frame.duplicated(subset=["inputs", "targets"]).to_numpy(), repeats=3)
    ours = first >= 0
    planted = (plan.kind == EXACT) | (plan.kind == EXACT_VARIED)
    assert not (peer & ~ours).any(), "pandas found a duplicate that the normalised hash missed"
    assert peer[plan.kind == EXACT].all(), "pandas missed a verbatim duplicate"
    assert ours[planted].all(), "a planted exact duplicate was missed"
    assert (plan.source[first[ours]] == plan.source[ours]).all(), "a row marked a duplicate of the wrong row"
    n = len(first)
    return {
        "exact_ours_s": ours_s, "exact_hash_s": hash_s, "exact_ours_rows_per_s": n / ours_s,
        "exact_peer_s": peer_s, "exact_peer_rows_per_s": n / peer_s,
        "exact_ours_duplicates": int(ours.sum()), "exact_peer_duplicates": int(peer.sum()),
        "exact_planted": int(planted.sum()), "exact_planted_verbatim": int((plan.kind == EXACT).sum()),
    }


def _jaccard_accuracy(inputs: pa.Array, signatures: np.ndarray, plan: Plan, seed: int) -> dict:
    """Both estimates and the true Jaccard of random near-duplicate pairs (row, its source)."""
    rng = np.random.default_rng(derive_seed(seed, "pairs"))
    near = np.flatnonzero(plan.kind == NEAR)
    rows = rng.choice(near, size=min(JACCARD_PAIRS, len(near)), replace=False)
    pairs = np.stack([rows, plan.source[rows]], axis=1)
    texts = inputs.take(pa.array(pairs.reshape(-1))).to_pylist()
    sets = [shingles(t, SHINGLE) for t in texts]
    counts = fp.word_hashes(pa.array(texts)).counts
    assert (counts == [len(WORD_RE.findall(t.lower())) for t in texts]).all(), "the word rules differ"
    true = np.array([len(a & b) / len(a | b) for a, b in zip(map(set, sets[::2]), map(set, sets[1::2]),
                                                            strict=True)])
    ours = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)
    peer_sig = _peer_minhash(texts)
    peer = (peer_sig[0::2] == peer_sig[1::2]).mean(axis=1)
    return {
        "jaccard_pairs": len(pairs), "jaccard_true_mean": float(true.mean()),
        "jaccard_ours_mean": float(ours.mean()), "jaccard_peer_mean": float(peer.mean()),
        "jaccard_mae_ours_true": float(np.abs(ours - true).mean()),
        "jaccard_mae_peer_true": float(np.abs(peer - true).mean()),
        "jaccard_mae_ours_peer": float(np.abs(ours - peer).mean()),
    }


def _bench_minhash(inputs: pa.Array, peer_rows: int, plan: Plan, seed: int) -> dict:
    (signatures, words_s), ours_s = _timed(lambda: _ours_minhash(inputs))
    texts = inputs.slice(0, peer_rows).to_pylist()
    _peer_minhash(texts[:100])  # warm-up
    _, peer_s = _timed(lambda: _peer_minhash(texts))
    return {
        "minhash_ours_s": ours_s, "minhash_words_s": words_s, "minhash_ours_rows_per_s": len(inputs) / ours_s,
        "minhash_peer_s": peer_s, "minhash_peer_rows_per_s": peer_rows / peer_s,
    } | _jaccard_accuracy(inputs, signatures, plan, seed)


def _duckdb_stats(con) -> tuple[pa.Table, pa.Table]:
    return con.sql(STATS_BY_DATASET).to_arrow_table(), con.sql(STATS_BY_TEMPLATE).to_arrow_table()


def _pandas_stats(frame):
    by_dataset = frame.groupby("dataset", sort=True).agg(
        n=("input_len", "size"), mean_input_len=("input_len", "mean"), mean_target_len=("target_len", "mean"))
    return by_dataset, frame.groupby(["dataset", "template_id"], sort=True).size()


def _bench_stats(inputs: pa.Array, targets: pa.Array, seed: int) -> dict:
    import duckdb

    stats = stats_rows(inputs, targets, seed)
    frame = stats.to_pandas()  # the peer's input, built outside the timing as DuckDB's connection is
    con = duckdb.connect()
    con.execute("SET threads TO 1")
    con.register("example_stats", stats.slice(0, 1000))  # warm-up
    _duckdb_stats(con)
    _pandas_stats(frame.iloc[:1000])
    con.register("example_stats", stats)  # zero-copy: DuckDB scans the Arrow buffers
    (by_dataset, by_template), ours_s = _timed(lambda: _duckdb_stats(con), repeats=3)
    (peer_dataset, peer_template), peer_s = _timed(lambda: _pandas_stats(frame), repeats=3)
    assert by_dataset.column("dataset").to_pylist() == peer_dataset.index.tolist()
    assert by_dataset.column("n").to_pylist() == peer_dataset["n"].tolist()
    for name in ("mean_input_len", "mean_target_len"):
        assert np.allclose(by_dataset.column(name).to_numpy(), peer_dataset[name].to_numpy())
    assert list(zip(by_template.column("dataset").to_pylist(), by_template.column("template_id").to_pylist(),
                    by_template.column("n").to_pylist(), strict=True)) == [
        (d, t, n) for (d, t), n in peer_template.items()]
    n = stats.num_rows
    return {
        "stats_ours_s": ours_s, "stats_ours_rows_per_s": n / ours_s,
        "stats_peer_s": peer_s, "stats_peer_rows_per_s": n / peer_s, "stats_groups": len(by_template),
    }


def bench_dedup(rows: int = 1_000_000, peer_rows: int = 20_000, seed: int = 1234) -> dict:
    """Run the three measurements on ``rows`` synthetic rows (datasketch on the first ``peer_rows``)."""
    pa.set_cpu_count(1)  # per-core figures: Arrow's kernels on one thread
    start = time.perf_counter()
    table = synthetic_rows(rows, seed)
    build_s = time.perf_counter() - start
    plan = plant_duplicates(rows, seed)
    inputs, targets = table.column("inputs").combine_chunks(), table.column("targets").combine_chunks()
    result = {
        "rows": rows, "peer_rows": min(peer_rows, rows), "build_s": build_s,
        "mean_input_chars": pc.mean(pc.utf8_length(inputs)).as_py(),
        "mean_target_chars": pc.mean(pc.utf8_length(targets)).as_py(),
        "compile_s": _warm_up(inputs.slice(0, 1000), targets.slice(0, 1000)),
    }
    result |= _bench_exact(table, inputs, targets, plan)
    result |= _bench_minhash(inputs, result["peer_rows"], plan, seed)
    result |= _bench_stats(inputs, targets, seed)
    result["precision"] = bench_precision(seed=seed)
    for key in ("exact", "minhash", "stats"):  # ours / peer, in rows per second
        result[f"{key}_ratio"] = result[f"{key}_ours_rows_per_s"] / result[f"{key}_peer_rows_per_s"]
    return result


def print_dedup(r: dict) -> None:
    print(f"dedup benchmark: {r['rows']:,} synthetic rows (inputs ~{r['mean_input_chars']:.0f} chars, "
          f"targets ~{r['mean_target_chars']:.0f}), one core; built in {r['build_s']:.1f} s; "
          f"Numba warm-up {r['compile_s']:.2f} s (not timed below)")
    print(f"  {'measurement':<26} {'ours rows/s':>12}   {'peer':<28} {'peer rows/s':>12} {'ratio':>7}")
    lines = [
        ("exact dedup", "exact", "pandas DataFrame.duplicated"),
        (f"MinHash {NUM_PERM} perms, {SHINGLE} words", "minhash", f"datasketch ({r['peer_rows']:,} rows)"),
        ("stats group-by (DuckDB)", "stats", "pandas groupby"),
    ]
    for label, key, peer in lines:
        print(f"  {label:<26} {r[f'{key}_ours_rows_per_s']:>12,.0f}   {peer:<28} "
              f"{r[f'{key}_peer_rows_per_s']:>12,.0f} {r[f'{key}_ratio']:>6.1f}x")
    print(f"  our time split: exact {r['exact_ours_s']:.2f} s = hashing {r['exact_hash_s']:.2f} s + table "
          f"{r['exact_ours_s'] - r['exact_hash_s']:.2f} s; MinHash {r['minhash_ours_s']:.2f} s = words "
          f"{r['minhash_words_s']:.2f} s + signatures {r['minhash_ours_s'] - r['minhash_words_s']:.2f} s")
    varied = r["exact_planted"] - r["exact_planted_verbatim"]
    print(f"  exact duplicates planted {r['exact_planted']:,} ({r['exact_planted_verbatim']:,} verbatim, "
          f"{varied:,} with case or whitespace changed): found by ours {r['exact_ours_duplicates']:,}, "
          f"by pandas {r['exact_peer_duplicates']:,}")
    print(f"  Jaccard of {r['jaccard_pairs']:,} near-duplicate pairs "
          f"(true mean {r['jaccard_true_mean']:.3f}), mean abs. error vs true: "
          f"ours {r['jaccard_mae_ours_true']:.4f}, "
          f"datasketch {r['jaccard_mae_peer_true']:.4f}; ours vs datasketch {r['jaccard_mae_ours_peer']:.4f}")
    print_precision(r["precision"])
    exact_ok = r["exact_ours_rows_per_s"] >= 2_000_000
    minhash_ok = r["minhash_ratio"] >= 5
    print(f"  targets: exact dedup >= 2,000,000 rows/s per core: {'met' if exact_ok else 'NOT MET'} "
          f"({r['exact_ours_rows_per_s']:,.0f}); MinHash >= 5x datasketch: "
          f"{'met' if minhash_ok else 'NOT MET'} ({r['minhash_ratio']:.1f}x)")


# --- precision and recall on data with real structure ---------------------------------------------

def peer_dropped(shaped: Shaped, use_distinct: bool, threshold: float = 0.8) -> np.ndarray:
    """datasketch's ``MinHashLSH`` over all raw text, rows in order, each dropped if an earlier kept
    row is a candidate whose estimated Jaccard reaches ``threshold`` (and, with ``use_distinct``,
    whose example is alike too: distinct text at the threshold, same label)."""
    from datasketch import MinHash, MinHashLSH

    inputs, distinct, labels = example_texts(shaped)
    full = list(MinHash.generator((shingles(t) for t in inputs), num_perm=NUM_PERM, seed=MINHASH_SEED))
    dist = list(MinHash.generator((shingles(t) for t in distinct), num_perm=NUM_PERM, seed=MINHASH_SEED))
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    dropped = np.zeros(len(inputs), bool)
    for i, m in enumerate(full):
        for j in lsh.query(m):
            same = not use_distinct or (dist[i].jaccard(dist[j]) >= threshold
                                        and (labels is None or labels[i] == labels[j]))
            if m.jaccard(full[j]) >= threshold and same:
                dropped[i] = True
                break
        if not dropped[i]:
            lsh.insert(i, m)
    return dropped


def precision_recall(shaped: Shaped, dropped: np.ndarray, similarity: np.ndarray) -> dict:
    """Distinct rows wrongly dropped, and the share of planted copies found at true Jaccard >= 0.85."""
    distinct = shaped.original < 0
    clear = ~distinct & (similarity >= 0.85)
    return {"distinct_rows": int(distinct.sum()), "distinct_dropped": int(dropped[distinct].sum()),
            "copies": int((~distinct).sum()), "copies_clear": int(clear.sum()),
            "recall_clear": float(dropped[clear].mean()) if clear.any() else 1.0,
            "recall_all": float(dropped[~distinct].mean()),
            "precision": float((~distinct & dropped).sum() / max(int(dropped.sum()), 1))}


def bench_precision(passages: int = 600, seed: int = 0) -> dict:
    """Precision and recall of four rules on SQuAD- and MNLI-shaped English with planted copies."""
    texts = load_passages()[:passages]
    out = {}
    for shaped in (squad_shaped(texts, seed=seed), nli_shaped(texts, seed=seed)):
        sim = pair_similarity(shaped)
        out[shaped.dataset] = {
            "rows": shaped.table.num_rows, "passages": len(texts),
            "flanpipe, distinct fields": precision_recall(shaped, ours_dropped(shaped, True), sim),
            "flanpipe, all text (before)": precision_recall(shaped, ours_dropped(shaped, False), sim),
            "datasketch, distinct fields": precision_recall(shaped, peer_dropped(shaped, True), sim),
            "datasketch, all text": precision_recall(shaped, peer_dropped(shaped, False), sim),
        }
    return out


def print_precision(r: dict) -> None:
    for name, res in r.items():
        print(f"near-duplicate precision on {name}-shaped English: {res['rows']:,} rows from "
              f"{res['passages']} passages shared by several examples, 40 case-only + 200 near copies")
        print(f"  {'rule':<30} {'distinct rows dropped':>24} {'recall, J >= 0.85':>20} {'recall, all':>12}")
        for rule, m in res.items():
            if not isinstance(m, dict):
                continue
            print(f"  {rule:<30} {m['distinct_dropped']:>8,} of {m['distinct_rows']:,} "
                  f"({100 * m['distinct_dropped'] / m['distinct_rows']:4.1f}%) "
                  f"{m['recall_clear']:>12.3f} of {m['copies_clear']:>3} {m['recall_all']:>12.3f}")


def run(rows: int, peer_rows: int) -> int:
    """``flanpipe bench dedup``."""
    print_dedup(bench_dedup(rows, peer_rows))
    return 0
