"""Dedup: recall on injected near-duplicates, exact duplicates across datasets, the dropped files."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import DedupeConfig, DedupeSlice, FingerprintSlice, PoolSlice, parse_config
from flanpipe.core.text import hashing as fp
from flanpipe.stages.dedupe import dedupe, find_duplicates
from flanpipe.stages.fingerprint import fingerprint_dataset
from flanpipe.stages.pool import write_pool
from tests.synthetic import load_passages, nli_shaped, ours_dropped, pair_similarity, squad_shaped

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "po", "ru", "si", "ta") for b in range(60)]


def sentences(n: int, words: int, rng: np.random.Generator) -> list[list[str]]:
    return [list(rng.choice(VOCAB, words)) for _ in range(n)]


def perturb(ws: list[str], substitutions: int, rng: np.random.Generator) -> str:
    """A near-duplicate as real data has them: words swapped, other case and punctuation."""
    ws = list(ws)
    for i in rng.choice(len(ws), substitutions, replace=False):
        ws[i] = str(rng.choice(VOCAB))
    text = " ".join(ws)
    return (text.capitalize() + ".") if rng.random() < 0.5 else text.upper().replace(" ", ", ", 1)


def jaccard(a: str, b: str) -> float:
    def shingles(t):
        ws = fp_words(t)
        return {tuple(ws[i:i + 3]) for i in range(len(ws) - 2)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def fp_words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9]+", text.lower())


def signatures(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    w = fp.word_hashes(pa.array(texts))
    return fp.minhash(w, 3, 128, seed=7), w.counts


def test_recall_on_injected_near_duplicates():
    """Inject copies with 0-3 of 45 words swapped (true Jaccard ~1 down to ~0.6, computed exactly
    here): every copy at or above the threshold should be found, none of the originals dropped."""
    rng = np.random.default_rng(0)
    originals = sentences(4000, 45, rng)
    injected = rng.choice(len(originals), 800, replace=False)
    copies = [perturb(originals[i], k % 4, rng) for k, i in enumerate(injected)]
    texts = [" ".join(ws) for ws in originals] + copies
    true = np.array([jaccard(texts[i], c) for i, c in zip(injected, copies, strict=True)])
    sig, counts = signatures(texts)
    hashes = fp.exact_hashes(pa.array(texts), pa.array([""] * len(texts)))
    twin, reason = find_duplicates(hashes[:, 0], hashes[:, 1], sig, counts, DedupeConfig())
    found = twin[len(originals):] == injected
    above, clear = true >= 0.8, true >= 0.85
    print(f"near-duplicate recall: {found[above].mean():.3f} of {above.sum()} copies with Jaccard >= 0.8, "
          f"{found[clear].mean():.3f} of {clear.sum()} with >= 0.85; "
          f"{found[~above].mean():.3f} of {(~above).sum()} below 0.8 dropped")
    assert found[clear].mean() >= 0.98
    assert found[above].mean() >= 0.9
    assert found[true < 0.7].mean() <= 0.02
    assert int((twin[:len(originals)] >= 0).sum()) == 0  # no unrelated original is dropped
    assert set(reason[len(originals):][found].tolist()) == {2}


def test_exact_duplicates_are_found_before_near_ones_and_the_first_is_kept():
    texts = ["alpha beta gamma delta", "Alpha  beta gamma delta", "alpha beta gamma delta!", "other words"]
    sig, counts = signatures(texts)
    hashes = fp.exact_hashes(pa.array(texts), pa.array(["x"] * 4))
    twin, reason = find_duplicates(hashes[:, 0], hashes[:, 1], sig, counts, DedupeConfig())
    assert twin.tolist() == [-1, 0, 0, -1]
    assert reason.tolist() == [0, 1, 2, 0]  # whitespace/case: exact; punctuation: near


def test_switches_turn_each_kind_off():
    texts = ["alpha beta gamma delta", "alpha beta gamma delta", "alpha beta gamma delta!"]
    sig, counts = signatures(texts)
    hashes = fp.exact_hashes(pa.array(texts), pa.array(["x"] * 3))
    off = DedupeConfig(exact=False, near={"enabled": False})
    assert find_duplicates(hashes[:, 0], hashes[:, 1], sig, counts, off)[0].tolist() == [-1, -1, -1]
    only_exact = DedupeConfig(near={"enabled": False})
    assert find_duplicates(hashes[:, 0], hashes[:, 1], sig, counts, only_exact)[0].tolist() == [-1, 0, -1]


def write_raw(root, name, sentences_, labels):
    out = root / name
    out.mkdir(parents=True)
    n = len(sentences_)
    pq.write_table(pa.table({"idx": np.arange(n), "sentence": sentences_, "label": labels,
                             "row_index": np.arange(n)}), out / "train.parquet")
    pq.write_table(pa.table({"idx": [0], "sentence": ["an eval sentence"], "label": [0],
                             "row_index": [0]}), out / "eval.parquet")
    return out


def test_dedupe_across_datasets_records_the_kept_twin(tmp_path):
    sst2 = ["a tender , funny film", "the plot wanders for two hours", "a tender, funny film", "fine"]
    cola = ["the plot wanders for two hours", "Colorless green ideas sleep."]
    cfg = DedupeConfig()
    paths = []
    for name, rows, labels in (("sst2", sst2, [1, 0, 1, 1]), ("cola", cola, [0, 1])):
        raw = write_raw(tmp_path / "raw", name, rows, labels)
        write_pool(name, raw / "train.parquet", raw / "pool.parquet",
                   PoolSlice(seed=1, pool_factor=cfg.pool_factor, cap=100))
        paths.append(tmp_path / f"fp/{name}.parquet")
        fingerprint_dataset(name, raw / "pool.parquet", raw / "eval.parquet", paths[-1],
                            tmp_path / f"ng/{name}.parquet", FingerprintSlice.of(parse_config({"seed": 1})))
    report = dedupe(["sst2", "cola"], paths, tmp_path / "dedup", DedupeSlice.of(parse_config({"seed": 1})))
    sst2_dropped = pq.read_table(tmp_path / "dedup/sst2.dropped.parquet").to_pylist()
    cola_dropped = pq.read_table(tmp_path / "dedup/cola.dropped.parquet").to_pylist()
    # sst2 row 2 differs from row 0 in spacing around the comma only: same words, same label
    assert [(r["row_index"], r["reason"], r["kept_dataset"], r["kept_row_index"]) for r in sst2_dropped] == [
        (2, "near", "sst2", 0)]
    # cola row 0 has sst2 row 1's text; the targets differ (cola's label names are not sst2's), so it
    # is a near duplicate of the text, not an exact duplicate of the example
    cola_twins = [(r["row_index"], r["kept_dataset"], r["kept_row_index"]) for r in cola_dropped]
    assert cola_twins == [(0, "sst2", 1)]
    assert report["datasets"]["cola"]["near_across"] + report["datasets"]["cola"]["exact_across"] == 1
    assert json.loads((tmp_path / "dedup/report.json").read_text())["rows"] == 6


@pytest.fixture(scope="module")
def passages():
    """Paragraphs of real English (library docstrings, tests/data/english_passages.jsonl.gz)."""
    return load_passages()[:300]


@pytest.mark.parametrize("make", [squad_shaped, nli_shaped])
def test_rows_sharing_a_passage_are_never_near_duplicates(passages, make):
    """SQuAD shape: 300 real passages with 5 different questions each; MNLI shape: premises with 3
    hypotheses (one of them the entailed sentence with one word changed and the other label); plus 40
    case-only and 200 near copies. Precision: no distinct row is dropped. Recall: >= 99% of the
    copies whose true Jaccard (computed here, exactly, on all text and on the distinct fields) is at
    least 0.85."""
    shaped = make(passages, seed=3)
    dropped = ours_dropped(shaped)
    distinct = shaped.original < 0
    assert int(dropped[distinct].sum()) == 0
    similarity = pair_similarity(shaped)
    clear = ~distinct & (similarity >= 0.85)
    assert clear.sum() >= 100 and dropped[clear].mean() >= 0.99
    assert dropped[shaped.kind == "case"].all()
    assert dropped[~distinct & (similarity < 0.7)].mean() <= 0.05
    # the fixture is one the old rule (MinHash over all text fields joined) fails on
    assert ours_dropped(shaped, use_distinct=False)[distinct].mean() > 0.3
