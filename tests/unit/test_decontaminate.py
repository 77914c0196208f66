"""Decontamination against hand-worked n-gram overlaps."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flanpipe.core.config import DecontaminateConfig
from flanpipe.core.config.registry import load_registry
from flanpipe.core.text import hashing as fp
from flanpipe.stages.decontaminate import contaminated_rows, decontaminate_dataset
from flanpipe.stages.fingerprint import eval_ngrams, ngram_size

EVAL = ("The bakery's owner, Samuel Okafor, wakes at four every morning to prepare bread for the day "
        "and opens the shop at seven.")


def eval_set(texts: list[str], n: int) -> tuple[int, np.ndarray]:
    grams, _ = fp.ngram_hashes(fp.word_hashes(pa.array(texts)), n)
    return n, np.unique(grams)


def test_a_shared_13_gram_is_found_and_a_12_gram_is_not():
    words = EVAL.split()
    train = [
        "Intro text. " + " ".join(words[3:16]) + " then more.",  # 13 consecutive eval words
        "Intro text. " + " ".join(words[3:15]) + " then more.",  # only 12
        "SAMUEL okafor WAKES at four every morning, to prepare bread for the day and opens",  # case, commas
        "nothing in common with the evaluation example at all, not even one long run of words",
    ]
    found = contaminated_rows(fp.word_hashes(pa.array(train)), {"rte": eval_set([EVAL], 13)})
    rows, counts = found["rte"]
    assert rows.tolist() == [0, 2]
    assert counts.tolist() == [1, 3]  # row 2 shares 15 consecutive eval words: three 13-grams


def test_short_eval_texts_shrink_the_ngram_but_not_below_the_minimum():
    cfg = DecontaminateConfig()
    assert ngram_size(np.array([20] * 95 + [9] * 5), cfg) == 9
    assert ngram_size(np.array([20] * 100), cfg) == 13
    assert ngram_size(np.array([3] * 100), cfg) == 8
    assert ngram_size(np.array([], dtype=int), cfg) == 13


def test_eval_ngrams_and_decontaminate_dataset_files(tmp_path):
    reg = load_registry()
    rte_eval = pa.table({"premise": [EVAL, "Short one."], "hypothesis": ["He bakes.", "Yes."],
                         "idx": [0, 1], "label": [0, 1], "row_index": [0, 1]})
    pq.write_table(rte_eval, tmp_path / "eval.parquet")
    meta = eval_ngrams(reg.datasets["rte"], tmp_path / "eval.parquet", tmp_path / "rte.ngrams.parquet",
                       DecontaminateConfig())
    assert meta["ngram"] == 8 and meta["unchecked_rows"] == 1  # "Short one. Yes." cannot match

    sst2 = pa.table({"idx": [0, 1, 2], "label": [1, 0, 1], "row_index": [0, 1, 2], "sentence": [
        "a film about a bakery where the owner wakes at four every morning to prepare bread",
        "the plot wanders", "prepare bread for the day and opens the shop at seven"]})
    pq.write_table(sst2, tmp_path / "pool.parquet")
    ids = ["sst2:train:0", "sst2:train:1", "sst2:train:2"]
    pq.write_table(pa.table({"row_index": [0, 1, 2], "example_id": ids}), tmp_path / "fp.parquet")
    meta = decontaminate_dataset("sst2", tmp_path / "pool.parquet", tmp_path / "fp.parquet",
                                 {"rte": tmp_path / "rte.ngrams.parquet"}, tmp_path / "out.parquet")
    decontaminate_dataset("sst2", tmp_path / "pool.parquet", tmp_path / "fp.parquet",
                          {"rte": tmp_path / "rte.ngrams.parquet"}, tmp_path / "by_row.parquet", batch_rows=1)
    assert pq.read_table(tmp_path / "by_row.parquet").equals(pq.read_table(tmp_path / "out.parquet"))
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["row_index"], r["eval_dataset"], r["eval_cluster"], r["ngram"]) for r in out] == [
        (0, "rte", "nli", 8), (2, "rte", "nli", 8)]
    assert meta["contaminated_rows"] == 2
