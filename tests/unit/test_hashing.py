"""The fingerprint kernels against plain-Python reference implementations."""

import re

import numpy as np
import pyarrow as pa
import pytest

from flanpipe.core.text import hashing as fp

WS = " \t\n\r\v\f"


def normalise(text: str) -> str:
    """The reference: Unicode lower case, ASCII whitespace runs collapsed, none at either end."""
    return re.sub(f"[{WS}]+", " ", text).strip(WS).lower()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9\x80-\U0010ffff]+", text.lower())


def random_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    pieces = ["a", "B", "cat", "Dog", "  ", " ", "\t", "\n", "é", "Ü", "ß", "!", ".", "x" * 9, "ÄÖ", ""]
    return ["".join(rng.choice(pieces, rng.integers(0, 12))) for _ in range(n)]


@pytest.mark.parametrize("offset", [0, 3])
def test_exact_hashes_agree_with_normalised_equality(offset):
    texts = random_texts(400, seed=1)
    firsts, seconds = texts[:200], texts[200:]
    # slices and large strings: the kernel must read Arrow offsets, not assume a fresh array
    a = pa.array(["pad"] * offset + firsts, pa.large_string()).slice(offset)
    b = pa.array(["pad"] * offset + seconds).slice(offset)
    h = fp.exact_hashes(a, b)
    keys = [(normalise(x), normalise(y)) for x, y in zip(firsts, seconds, strict=True)]
    by_key: dict = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, set()).add(tuple(h[i]))
    assert all(len(v) == 1 for v in by_key.values())  # equal normalised pairs hash equal
    assert len({next(iter(v)) for v in by_key.values()}) == len(by_key)  # different ones do not


def test_exact_hash_separates_the_two_columns():
    h = fp.exact_hashes(pa.array(["ab", "a", "a b"]), pa.array(["", "b", ""]))
    assert len({tuple(r) for r in h}) == 3


def test_exact_hashes_of_long_texts_cross_word_boundaries():
    base = "The quick brown fox jumps over the lazy dog " * 7
    variants = [base, base.upper(), "  " + base.replace(" ", "\n "), base + "!"]
    h = fp.exact_hashes(pa.array(variants), pa.array(["t"] * 4))
    assert (h[0] == h[1]).all() and (h[0] == h[2]).all() and not (h[0] == h[3]).all()


def test_word_hashes_split_like_the_reference():
    texts = random_texts(300, seed=2) + ["Hello, World!  hello world", ""]
    w = fp.word_hashes(pa.array(texts))
    assert w.counts.tolist() == [len(words(t)) for t in texts]
    vocab: dict = {}
    for i, t in enumerate(texts):
        for word, h in zip(words(t), w.hashes[w.starts[i]:w.starts[i + 1]], strict=True):
            assert vocab.setdefault(word, h) == h  # one word, one hash
    assert len(set(vocab.values())) == len(vocab)


def test_ngram_hashes_cover_every_run_once():
    w = fp.word_hashes(pa.array(["a b c d e", "a b c", "x", "c d e"]))
    grams, starts = fp.ngram_hashes(w, 3)
    assert np.diff(starts).tolist() == [3, 1, 0, 1]
    assert grams[0] == grams[3] and grams[2] == grams[4]  # "a b c" and "c d e" recur


def test_minhash_estimates_jaccard_without_bias():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(500)]
    a, b = [], []
    for _ in range(300):
        ws = list(rng.choice(vocab, 40))
        other = list(ws)
        for _ in range(rng.integers(0, 25)):
            other[rng.integers(0, 40)] = str(rng.choice(vocab))
        a.append(" ".join(ws))
        b.append(" ".join(other))

    def shingles(t):
        ws = words(t)
        return {tuple(ws[i:i + 3]) for i in range(len(ws) - 2)}

    true = np.array([len(shingles(x) & shingles(y)) / len(shingles(x) | shingles(y))
                     for x, y in zip(a, b, strict=True)])
    est = (fp.minhash(fp.word_hashes(pa.array(a)), 3) == fp.minhash(fp.word_hashes(pa.array(b)), 3)).mean(1)
    sd = np.sqrt(true * (1 - true) / 128)
    assert abs((est - true).mean()) < 0.01
    assert np.abs(est - true).mean() < 1.2 * sd.mean()  # the binomial error of 128 permutations


def test_minhash_of_identical_word_sequences_is_identical():
    s = fp.minhash(fp.word_hashes(pa.array(["One two, THREE four.", "one two three four", "one"])), 3)
    assert (s[0] == s[1]).all() and not (s[0] == s[2]).all()


def test_first_occurrence_matches_a_dict():
    rng = np.random.default_rng(4)
    hi = rng.integers(0, 50, 5000).astype(np.uint64)
    lo = rng.integers(0, 3, 5000).astype(np.uint64)
    active = rng.random(5000) > 0.1
    seen: dict = {}
    expect = []
    for i, (x, y, on) in enumerate(zip(hi, lo, active, strict=True)):
        if not on:
            expect.append(-1)
            continue
        first = seen.setdefault((x, y), i)
        expect.append(-1 if first == i else first)
    assert fp.first_occurrence(hi, lo, active).tolist() == expect


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.1, 0.9)])
def test_lsh_params_match_datasketch(threshold, weights):
    from datasketch.lsh import _optimal_param

    assert fp.lsh_params(threshold, 128, *weights) == _optimal_param(threshold, 128, *weights)
