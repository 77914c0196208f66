"""Text fingerprints for dedup and decontamination: normalised exact hashes, word n-gram hashes and
MinHash signatures, computed by Numba kernels straight off Arrow string buffers (no Python string per
row, no Python loop per row).

Normalisation, shared by every fingerprint: Unicode lower case, and runs of ASCII whitespace collapsed
to one space with none at either end (exact hashes); words are maximal runs of letters and digits
(every non-ASCII byte counts as a letter), so punctuation and spacing never separate two texts
(n-grams and MinHash).

>>> a = pa.array(["The  cat sat.", "the cat sat.", "The cat sat!"])
>>> h = exact_hashes(a, pa.array(["x", "x", "x"]))
>>> bool((h[0] == h[1]).all()), bool((h[0] == h[2]).all())
(True, False)
>>> w = word_hashes(a)
>>> bool((w.hashes[:3] == w.hashes[3:6]).all() and (w.hashes[3:6] == w.hashes[6:]).all())
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

U0 = np.uint64(0)
U1 = np.uint64(1)
U8 = np.uint64(8)
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
STREAM1 = np.uint64(0xFF51AFD7ED558CCD)
STREAM2 = np.uint64(0xC4CEB9FE1A85EC53)
NGRAM_SEED = np.uint64(0x2545F4914F6CDD1D)
SIG_EMPTY = np.uint32(0xFFFFFFFF)


def mix64(z):
    """splitmix64's finaliser, the one scrambler of the package: every input bit flips each output
    bit with probability ~1/2. Takes a ``np.uint64`` or an array of them (wrap-around is the point);
    the Numba kernels below inline the same function (:data:`_mix64`), and every seeded draw of
    :mod:`flanpipe.core.text.keys` goes through it.

    >>> z = mix64(np.array([0, 1, 2], np.uint64))
    >>> int(z[0]), len(set(z.tolist()))
    (0, 3)
    """
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


_mix64 = njit(inline="always")(mix64)


@njit(inline="always")
def _absorb(word, h1, h2):
    h1 = (h1 ^ word) * STREAM1
    h1 ^= h1 >> np.uint64(32)
    h2 = (h2 + word) * STREAM2
    h2 = (h2 << np.uint64(27)) | (h2 >> np.uint64(37))
    return h1, h2


LANES = np.uint64(0x0101010101010101)
HIGHS = np.uint64(0x8080808080808080)
LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
SPACES = np.uint64(0x2020202020202020)
SEPARATOR = np.uint64(0x1F)

# Byte classes for the byte-at-a-time kernels: lower-cased value, and whether it is ASCII whitespace
# or part of a word.
LOWER = np.arange(256, dtype=np.uint64)
LOWER[65:91] += 32
IS_SPACE = np.zeros(256, np.bool_)
IS_SPACE[[9, 10, 11, 12, 13, 32]] = True
IS_WORD = np.zeros(256, np.bool_)
IS_WORD[48:58] = IS_WORD[65:91] = IS_WORD[97:123] = IS_WORD[128:] = True


@njit(inline="always")
def _lower8(w):
    """ASCII lower case of 8 packed bytes at once (SWAR); non-ASCII bytes are left alone."""
    h = w & LOW7
    at_least_a = h + LANES * np.uint64(0x80 - 0x41)  # lane high bit set where byte >= 'A'
    past_z = h + LANES * np.uint64(0x80 - 0x5B)  # ... where byte > 'Z'
    upper = at_least_a & ~past_z & ~w & HIGHS
    return w | (upper >> np.uint64(2))


@njit(inline="always")
def _flags(w, valid):
    """(spaces, controls): lane high bits of the bytes that are ' ', and of those below 0x0E."""
    x = w ^ SPACES
    spaces = ~(((x & LOW7) + LOW7) | x) & HIGHS & valid
    controls = ~((w & LOW7) + LANES * np.uint64(0x80 - 0x0E)) & ~w & HIGHS & valid
    return spaces, controls


@njit(inline="always")
def _fast_text(words, data, s, e, h1, h2):
    """Absorb text ``data[s:e]`` 8 bytes at a time, if it is already whitespace-normal.

    Returns (ok, high, h1, h2); not ok (the caller takes the byte path) when the text has a control
    byte, two spaces in a row, a space at either end, or ends in the buffer's last word; ``high`` has
    a bit set if the text holds a non-ASCII byte.
    """
    n = e - s
    high = U0
    if n == 0:
        return True, high, h1, h2
    q, r = s // 8, (s % 8) * 8
    if data[s] == 32 or data[e - 1] == 32 or (e + 7) // 8 >= len(words):
        return False, high, h1, h2
    last_space = U0
    for t in range(0, n, 8):
        lo = words[q + t // 8]
        w = lo if r == 0 else (lo >> np.uint64(r)) | (words[q + t // 8 + 1] << np.uint64(64 - r))
        valid = HIGHS
        if n - t < 8:
            keep = (U1 << np.uint64(8 * (n - t))) - U1
            w &= keep
            valid &= keep
        spaces, controls = _flags(w, valid)
        if controls or (spaces & (spaces << U8)) or (last_space and (spaces & np.uint64(0x80))):
            return False, high, h1, h2
        last_space = spaces >> np.uint64(63)
        high |= w & HIGHS
        h1, h2 = _absorb(_lower8(w), h1, h2)
    return True, high, h1, h2


@njit(inline="always")
def _slow_text(data, s, e, h1, h2):
    """Absorb the normalised form of ``data[s:e]``, one byte at a time: the same words as the fast
    path would absorb for the normalised text itself (little-endian packing, zero-padded tail)."""
    word, k = U0, 0
    pending, emitted = False, False
    high = U0
    for j in range(s, e):
        c = data[j]
        high |= np.uint64(c) & np.uint64(0x80)
        if IS_SPACE[c]:
            pending = emitted
            continue
        if pending:
            word |= np.uint64(32) << np.uint64(8 * k)
            k += 1
            if k == 8:
                h1, h2 = _absorb(word, h1, h2)
                word, k = U0, 0
        word |= LOWER[c] << np.uint64(8 * k)
        k += 1
        if k == 8:
            h1, h2 = _absorb(word, h1, h2)
            word, k = U0, 0
        pending, emitted = False, True
    if k:
        h1, h2 = _absorb(word, h1, h2)
    return high, h1, h2


@njit(inline="always")
def _text(words, data, s, e, h1, h2):
    ok, high, f1, f2 = _fast_text(words, data, s, e, h1, h2)
    return (high, f1, f2) if ok else _slow_text(data, s, e, h1, h2)


@njit(cache=True, nogil=True)
def _exact_hashes(words1, data1, off1, words2, data2, off2, out, non_ascii):
    """128-bit hash of the normalised pair (text1, text2) per row, into ``out[i, 0:2]``; rows with a
    non-ASCII byte are flagged in ``non_ascii`` (the caller lower-cases and hashes them again)."""
    for i in range(len(off1) - 1):
        high1, h1, h2 = _text(words1, data1, off1[i], off1[i + 1], FNV_OFFSET, GOLDEN)
        h1, h2 = _absorb(SEPARATOR, _mix64(h1), h2)
        high2, h1, h2 = _text(words2, data2, off2[i], off2[i + 1], h1, h2)
        out[i, 0] = _mix64(h1)
        out[i, 1] = _mix64(h2 ^ h1)
        non_ascii[i] = (high1 | high2) != U0


@njit(cache=True, nogil=True)
def _word_hashes(data, offsets):
    """64-bit FNV-1a hash of every word (lower-cased) of every text, and each text's first word."""
    n = len(offsets) - 1
    out = np.empty((offsets[n] - offsets[0]) // 2 + n + 1, np.uint64)
    starts = np.empty(n + 1, np.int64)
    m = 0
    for i in range(n):
        starts[i] = m
        h = FNV_OFFSET
        inword = False
        for j in range(offsets[i], offsets[i + 1]):
            c = data[j]
            if IS_WORD[c]:
                h = (h ^ LOWER[c]) * FNV_PRIME
                inword = True
            elif inword:
                out[m] = _mix64(h)
                m += 1
                h = FNV_OFFSET
                inword = False
        if inword:
            out[m] = _mix64(h)
            m += 1
    starts[n] = m
    return out[:m], starts  # a view: the untouched tail of the allocation is never paged in


@njit(inline="always")
def _gram(words, i, n):
    h = NGRAM_SEED
    for j in range(n):
        h = (h ^ words[i + j]) * STREAM1
        h ^= h >> np.uint64(29)
    return _mix64(h + np.uint64(n))


@njit(cache=True, nogil=True)
def _ngram_hashes(words, starts, n):
    """The hash of every run of ``n`` consecutive words within one text, and each text's first one."""
    docs = len(starts) - 1
    counts = np.maximum(starts[1:] - starts[:-1] - n + 1, 0)
    out_starts = np.zeros(docs + 1, np.int64)
    out_starts[1:] = np.cumsum(counts)
    out = np.empty(out_starts[docs], np.uint64)
    for d in range(docs):
        o = out_starts[d]
        for i in range(starts[d], starts[d] + counts[d]):
            out[o] = _gram(words, i, n)
            o += 1
    return out, out_starts


@njit(cache=True, nogil=True)
def _minhash(words, starts, shingle, a, b, out):
    """MinHash of each text's set of word ``shingle``-grams (the whole text if it is shorter).

    Permutation p maps a shingle's 32-bit hash x to ``(a[p] * x + b[p]) mod 2**32`` (a[p] odd, so it
    is a bijection); a text with no words gets the all-ones signature and is flagged by the caller.
    """
    perms = a.shape[0]
    sig = np.empty(perms, np.uint32)
    for d in range(len(starts) - 1):
        s, e = starts[d], starts[d + 1]
        sig[:] = SIG_EMPTY
        k = min(shingle, e - s)
        for i in range(s, e - k + 1 if k > 0 else s):
            x = np.uint32(_gram(words, i, k) >> np.uint64(32))
            for p in range(perms):  # 32-bit lanes, no branch: the loop vectorises
                sig[p] = min(sig[p], np.uint32(a[p] * x + b[p]))
        out[d, :] = sig


@njit(cache=True, nogil=True)
def first_occurrence(hi, lo, active):
    """For each active row, the first earlier active row with the same (hi, lo) key; else -1.

    One pass over an open-addressing table: O(n), stable by construction (rows are inserted in order).
    """
    n = len(hi)
    size = 1
    while size < 2 * n + 2:
        size *= 2
    mask = np.uint64(size - 1)
    table = np.full(size, -1, np.int64)
    twin = np.full(n, -1, np.int64)
    for i in range(n):
        if not active[i]:
            continue
        slot = (hi[i] ^ (lo[i] * GOLDEN)) & mask
        while True:
            j = table[slot]
            if j < 0:
                table[slot] = i
                break
            if hi[j] == hi[i] and lo[j] == lo[i]:
                twin[i] = j
                break
            slot = (slot + np.uint64(1)) & mask
    return twin


@njit(cache=True, nogil=True)
def band_keys(sig, distinct, bands, rows):
    """One 64-bit key per LSH band: the hash of the band's ``rows`` values of both signatures.

    ``distinct`` is the signature of the fields that tell examples apart (all ``SIG_EMPTY`` for a
    dataset without such fields), so two rows share a bucket only if they collide in both: questions
    that merely share a passage do not meet.
    """
    n = sig.shape[0]
    keys = np.empty((bands, n), np.uint64)
    for i in range(n):
        for band in range(bands):
            h = np.uint64(band) * GOLDEN
            for r in range(band * rows, (band + 1) * rows):
                h = (h ^ np.uint64(sig[i, r])) * STREAM2
                h ^= h >> np.uint64(31)
                h = (h ^ np.uint64(distinct[i, r])) * STREAM1
                h ^= h >> np.uint64(29)
            keys[band, i] = _mix64(h)
    return keys


@njit(inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(inline="always")
def _agree(sig, i, h):
    same = 0
    for p in range(sig.shape[1]):
        same += sig[i, p] == sig[h, p]
    return same


@njit(cache=True, nogil=True)
def lsh_components(keys, sig, distinct, active, threshold):
    """Union rows that share a band key and whose estimated Jaccard is at least ``threshold``, both
    over all their text (``sig``) and over the fields that tell examples apart (``distinct``).

    Each row is compared with the first active row holding the same key in that band (a star per
    bucket, so a bucket of size m costs m comparisons, never m**2). Returns each row's component root:
    the component's first row, so keeping roots keeps the first occurrence in the stable order.
    """
    bands, n = keys.shape
    need = math.ceil(threshold * sig.shape[1] - 1e-9)
    parent = np.arange(n)
    for band in range(bands):
        heads = first_occurrence(keys[band], keys[band], active)
        for i in range(n):
            h = heads[i]
            if h < 0:
                continue
            if _agree(sig, i, h) >= need and _agree(distinct, i, h) >= need:
                ri, rh = _find(parent, i), _find(parent, h)
                if ri != rh:
                    parent[max(ri, rh)] = min(ri, rh)
    for i in range(n):
        parent[i] = _find(parent, i)
    return parent


@njit(cache=True, nogil=True)
def _string_hashes(data, offsets, seed):
    """64-bit FNV-1a of each string's bytes as they are (no normalisation), mixed with ``seed``."""
    n = len(offsets) - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = FNV_OFFSET ^ seed
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * FNV_PRIME
        out[i] = _mix64(h + np.uint64(offsets[i + 1] - offsets[i]))
    return out


# --- Arrow plumbing ------------------------------------------------------------------------------

def _buffers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a string array, zero-copy where possible; nulls read as empty strings."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        offset_type = np.int32
    elif pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        offset_type = np.int64
    else:
        raise TypeError(f"expected a string array, got {arr.type}")
    _, offsets, data = arr.buffers()
    itemsize = np.dtype(offset_type).itemsize
    offsets = np.frombuffer(offsets, offset_type, count=len(arr) + 1, offset=arr.offset * itemsize)
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data, offsets.astype(np.int64, copy=False)


def _words_view(data: np.ndarray) -> np.ndarray:
    """The bytes as aligned little-endian uint64 words (a view if the buffer is aligned; the tail
    that does not fill a word is read byte by byte)."""
    whole = len(data) // 8 * 8
    if data.ctypes.data % 8 == 0:
        return data[:whole].view(np.uint64)
    return np.frombuffer(data[:whole].tobytes(), np.uint64)


def lower_unicode(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-case the rows that hold non-ASCII text (the kernels lower-case ASCII themselves)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    ascii_ = pc.fill_null(pc.string_is_ascii(arr), True)
    if pc.all(ascii_).as_py():
        return arr
    other = pc.invert(ascii_)
    return pc.replace_with_mask(arr, other, pc.utf8_lower(arr.filter(other)))


def exact_hashes(first: pa.Array, second: pa.Array) -> np.ndarray:
    """``(n, 2)`` uint64: a 128-bit hash of each normalised (first, second) pair."""
    if len(first) != len(second):
        raise ValueError("the two columns differ in length")
    out = _exact_hashes_ascii(first, second)
    if len(out[1]) and out[1].any():  # lower-case the non-ASCII rows in Arrow and hash them again
        rows = pa.array(np.flatnonzero(out[1]))
        out[0][rows.to_numpy()] = _exact_hashes_ascii(pc.utf8_lower(pc.take(first, rows)),
                                                      pc.utf8_lower(pc.take(second, rows)))[0]
    return out[0]


def _exact_hashes_ascii(first: pa.Array, second: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    d1, o1 = _buffers(first)
    d2, o2 = _buffers(second)
    out = np.empty((len(o1) - 1, 2), np.uint64)
    non_ascii = np.empty(len(o1) - 1, np.bool_)
    _exact_hashes(_words_view(d1), d1, o1, _words_view(d2), d2, o2, out, non_ascii)
    return out, non_ascii


@dataclass(frozen=True)
class Words:
    """Every word hash of every text: text ``i`` has ``hashes[starts[i]:starts[i + 1]]``."""

    hashes: np.ndarray
    starts: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)


def word_hashes(texts: pa.Array | pa.ChunkedArray) -> Words:
    data, offsets = _buffers(lower_unicode(texts))
    return Words(*_word_hashes(data, offsets))


def ngram_hashes(words: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, starts): every n-word run of each text; a text shorter than ``n`` words has none."""
    return _ngram_hashes(words.hashes, words.starts, n)


def string_hashes(texts: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each string exactly as it is: the stable key of a row (its id), from
    which its draws (cap priority, template per epoch) derive, so no draw depends on row positions.

    >>> h = string_hashes(pa.array(["rte:train:7", "rte:train:8", "rte:train:7"]), seed=1)
    >>> bool(h[0] == h[2]), bool(h[0] == h[1])
    (True, False)
    """
    data, offsets = _buffers(texts)
    return _string_hashes(data, offsets, np.uint64(seed % 2**64))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded MinHash permutations: odd multipliers and offsets below 2**32."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint64)
    return a.astype(np.uint32), b.astype(np.uint32)


def minhash(words: Words, shingle: int, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """``(n, num_perm)`` uint32 MinHash signatures of each text's word shingles (all ``SIG_EMPTY`` for
    a text with no words)."""
    a, b = permutations(num_perm, seed)
    out = np.empty((len(words.starts) - 1, num_perm), np.uint32)
    _minhash(words.hashes, words.starts, shingle, a, b, out)
    return out


@functools.lru_cache
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.1, fn_weight: float = 0.9
               ) -> tuple[int, int]:
    """(bands, rows) minimising weighted false positives plus false negatives around ``threshold``.

    The same search as datasketch's ``_optimal_param``, by the trapezoid rule. The default weights
    favour recall: every candidate pair is verified against the signatures, so a false positive only
    costs one comparison, while a false negative is a duplicate left in.
    """
    below, above = np.linspace(0.0, threshold, 1001), np.linspace(threshold, 1.0, 1001)
    best, best_cost = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - below**rows) ** bands, below)  # pairs below that share a band
            fn = np.trapezoid((1 - above**rows) ** bands, above)  # pairs above that share none
            cost = fp_weight * fp + fn_weight * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best
