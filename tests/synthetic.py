"""Data with known structure, and the exact answers for it, shared by the tests and by the
benchmarks (``bench/``, which import it from here; no test imports ``bench/`` but the benchmarks'
own).

- RTE-schema rows of sentence-like text (:func:`synthetic_rte`);
- paragraphs of real English (:func:`load_passages`, ``tests/data/english_passages.jsonl.gz``) and
  SQuAD- and MNLI-shaped tables built from them, passages shared by several examples, with planted
  copies (:func:`squad_shaped`, :func:`nli_shaped`), with each copy's true Jaccard similarity to its
  original computed from scratch (:func:`pair_similarity`) and the rows our dedup drops
  (:func:`ours_dropped`);
- few-shot prompts built by the implementation :class:`~flanpipe.core.text.fewshot.FewShotPool`
  replaced, which re-encodes every joined prompt (:func:`previous_few_shot_inputs`): the exact
  answer the pool's token estimate must reproduce.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from flanpipe.core.config import DedupeConfig, FewShotConfig, FingerprintSlice, parse_config
from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.text.fewshot import whitespace_tokens
from flanpipe.core.text.keys import derive_seed, scramble, stable_keys
from flanpipe.core.text.templates import DatasetTemplates, Template, distinct_texts, render_template
from flanpipe.stages.dedupe import find_duplicates
from flanpipe.stages.fingerprint import plain_pairs, row_fingerprints

# --- RTE-schema rows ------------------------------------------------------------------------------

WORDS = ("the a one river city council library engineer teacher market storm bridge report season "
         "village museum scientist festival budget harbour train painter company garden election "
         "announced opened closed reported found built visited studied measured expected rose fell "
         "quickly after before during because although yesterday today every several many new old "
         "large small local national early late").split()


def synthetic_rte(n: int, seed: int = 0) -> pa.Table:
    """``n`` RTE-schema rows of random but sentence-like text (premise ~25 words, hypothesis ~9)."""
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS, dtype=object)

    def sentences(mean_words: int) -> list[str]:
        lengths = rng.integers(mean_words // 2, mean_words * 3 // 2, size=n)
        flat = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
        ends = np.cumsum(lengths)
        return [" ".join(flat[e - k:e]).capitalize() + "." for e, k in zip(ends, lengths, strict=True)]

    return pa.table({
        "premise": sentences(25), "hypothesis": sentences(9),
        "idx": pa.array(np.arange(n)), "label": pa.array(rng.integers(0, 2, size=n)),
        "row_index": pa.array(np.arange(n)),
    })


# --- real English with planted copies -----------------------------------------------------------

PASSAGES = Path(__file__).resolve().parent / "data/english_passages.jsonl.gz"
WORD_RE = re.compile(r"[a-z0-9\x80-\U0010ffff]+")  # the hashing kernels' word rule, on lower-cased text
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
CONTENT_RE = re.compile(r"^([A-Za-z]{5,})([,.;:]?)$")


def shingles(text: str, k: int = 3) -> list[bytes]:
    """The word ``k``-grams of a text as the kernels define them (the whole text if it is shorter),
    in Python, utf-8 encoded.

    >>> shingles("The cat, the HAT.", 3)
    [b'the cat the', b'cat the hat']
    """
    words = WORD_RE.findall(text.lower())
    k = min(k, len(words))
    return [" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)] if k else []


def load_passages(path: str | Path = PASSAGES, overlap: float = 0.3) -> list[str]:
    """Paragraphs of English prose (docstrings of the Python standard library and installed packages,
    40-250 words each, the source of each in the file), less any that shares ``overlap`` of its word
    3-grams with an earlier one (libraries repeat docstrings with small edits): every passage is its
    own."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    seen: dict[bytes, int] = {}
    out = []
    for text in texts:
        grams = set(shingles(text))
        shared: dict[int, int] = {}
        for g in grams:
            if g in seen:
                shared[seen[g]] = shared.get(seen[g], 0) + 1
        if max(shared.values(), default=0) < overlap * len(grams):
            out.append(text)
            for g in grams:
                seen.setdefault(g, len(out) - 1)
    return out


def _sentences(passage: str) -> list[str]:
    return [s for s in SENTENCE_RE.split(passage) if 6 <= len(s.split()) <= 40]


def _question(sentence: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """A SQuAD-like question about one sentence: a content word becomes "what", the clause around it
    (at most 14 words) is kept; the word is the answer.

    >>> s = "The parser reads every token before it builds the tree."
    >>> q, a = _question(s, np.random.default_rng(0))
    >>> "what" in q.split() and q.endswith("?") and a in s and a not in q.split()
    True
    """
    words = sentence.split()
    spots = [i for i, w in enumerate(words) if CONTENT_RE.match(w)]
    if not spots:
        return None
    i = int(rng.choice(spots))
    answer = CONTENT_RE.match(words[i]).group(1)
    lo = max(0, i - 7)
    clause = [*words[lo:i], "what", *words[i + 1:lo + 14]]
    return " ".join(clause).rstrip(".,;:!?") + "?", answer


@dataclass(frozen=True)
class Shaped:
    """A raw table in a registry dataset's schema with planted copies: ``original[i]`` is the row that
    row ``i`` copies (-1 for a distinct example), ``kind`` is "case" or "near" for copies."""

    dataset: str
    table: pa.Table
    original: np.ndarray
    kind: np.ndarray


def _plant(rng: np.random.Generator, rows: list[dict], fields: tuple[str, ...], case_only: int,
           near: int, vocab: list[str]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Append ``case_only`` copies in other case and ``near`` copies with 0-3 words of one long field
    replaced and punctuation changed, each of a distinct random row."""
    n = len(rows)
    chosen = rng.choice(n, case_only + near, replace=False)
    copies, kinds = [], []
    for k, i in enumerate(chosen):
        row = dict(rows[i])
        if k < case_only:
            for f in fields:
                row[f] = row[f].upper() if rng.random() < 0.5 else row[f].lower()
            kinds.append("case")
        else:
            f = fields[0]
            words = row[f].split()
            for j in rng.choice(len(words), k % 4, replace=False):
                words[j] = str(rng.choice(vocab))
            row[f] = " ".join(words).replace(",", "", 1) + " "
            kinds.append("near")
        copies.append(row)
    original = np.concatenate([np.full(n, -1), chosen])
    return rows + copies, original, np.array([""] * n + kinds, object)


def squad_shaped(passages: list[str], questions: int = 5, case_only: int = 40, near: int = 200,
                 seed: int = 0) -> Shaped:
    """SQuAD v1 rows: each passage with ``questions`` different questions (several may ask about
    the same sentence), plus planted copies."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, passage in enumerate(passages):
        sentences = _sentences(passage)
        asked = set()
        for _ in range(questions * 4):
            if len(asked) == questions:
                break
            qa = _question(sentences[int(rng.integers(len(sentences)))], rng)
            if qa is None or qa in asked:
                continue
            asked.add(qa)
            q, a = qa
            rows.append({"id": f"{p}-{len(asked)}", "title": f"passage {p}", "context": passage,
                         "question": q, "answers": {"text": [a], "answer_start": [max(passage.find(a), 0)]}})
    vocab = sorted({w for p in passages[:50] for w in p.split()})
    rows, original, kind = _plant(rng, rows, ("context", "question"), case_only, near, vocab)
    for i, r in enumerate(rows):
        r["id"], r["row_index"] = f"{r['id']}#{i}", i
    return Shaped("squad_v1", pa.Table.from_pylist(rows), original, kind)


def nli_shaped(passages: list[str], hypotheses: int = 3, case_only: int = 40, near: int = 200,
               seed: int = 0) -> Shaped:
    """MNLI rows: each premise with ``hypotheses`` hypotheses: a sentence it contains (entailment),
    the same with one word changed (contradiction) and a sentence of another passage (neutral)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, premise in enumerate(passages):
        own, other = _sentences(premise), _sentences(passages[(p + 1) % len(passages)])
        sentence = own[int(rng.integers(len(own)))]
        words = sentence.split()
        spots = [i for i, w in enumerate(words) if CONTENT_RE.match(w)] or [0]
        changed = list(words)
        changed[int(rng.choice(spots))] = "nothing"
        candidates = [(sentence, 0), (" ".join(changed), 2), (other[int(rng.integers(len(other)))], 1)]
        for h, label in candidates[:hypotheses]:
            rows.append({"premise": premise, "hypothesis": h, "label": label})
    vocab = sorted({w for p in passages[:50] for w in p.split()})
    rows, original, kind = _plant(rng, rows, ("premise", "hypothesis"), case_only, near, vocab)
    for i, r in enumerate(rows):
        r["idx"], r["row_index"] = i, i
    return Shaped("mnli", pa.Table.from_pylist(rows), original, kind)


def true_jaccard(a: str, b: str) -> float:
    """The exact Jaccard similarity of two texts' word-shingle sets, from scratch in Python."""
    sa, sb = set(shingles(a)), set(shingles(b))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def example_texts(shaped: Shaped) -> tuple[list[str], list[str], list[str] | None]:
    """(all raw text, the distinct text, the label or None) per row, as dedup defines them: the
    distinct fields, plus the target for a generation task; a classification task's label must be
    equal instead."""
    spec = load_registry().datasets[shaped.dataset]
    inputs, targets = plain_pairs(spec, shaped.table)
    inputs, targets = inputs.to_pylist(), [t.lower() for t in targets.to_pylist()]
    distinct = distinct_texts(spec, shaped.table).to_pylist()
    if spec.task.type == "generation":
        return inputs, [f"{d} {t}" for d, t in zip(distinct, targets, strict=True)], None
    return inputs, distinct, targets


def pair_similarity(shaped: Shaped) -> np.ndarray:
    """For each planted copy, the true Jaccard with its original: the lower of all its raw text and
    its distinct fields plus target, the two things a near duplicate must share (a copy keeps its
    original's label)."""
    inputs, distinct, labels = example_texts(shaped)
    out = np.full(len(inputs), np.nan)
    for i in np.flatnonzero(shaped.original >= 0):
        j = shaped.original[i]
        same_label = labels is None or labels[i] == labels[j]
        out[i] = min(true_jaccard(inputs[i], inputs[j]), true_jaccard(distinct[i], distinct[j])) * same_label
    return out


def ours_dropped(shaped: Shaped, use_distinct: bool = True, seed: int = 1) -> np.ndarray:
    """The rows our dedup drops (the first of each group kept), with or without the registry's
    distinct fields."""
    spec = load_registry().datasets[shaped.dataset]
    if not use_distinct:
        spec = spec.model_copy(update={"distinct": ()})
    cfg = DedupeConfig()
    f = row_fingerprints(spec, shaped.table, FingerprintSlice.of(parse_config({"seed": seed})))
    twin, _ = find_duplicates(f.exact[:, 0], f.exact[:, 1], f.signature, f.words, cfg, f.distinct_signature)
    return twin >= 0


# --- few-shot prompts, exactly -------------------------------------------------------------------


def previous_few_shot_inputs(spec: DatasetSpec, bank: DatasetTemplates, template: Template,
                             eval_raw: pa.Table, train_raw: pa.Table, cfg: FewShotConfig, seed: int,
                             count_tokens: Callable[[str], int] = whitespace_tokens,
                             options_style: str = "dash") -> list[str]:
    """``few_shot_inputs`` as it was before ``FewShotPool``: the same ring, walked per row in Python
    over the whole rendered train split, each joined prompt re-encoded while it is over the budget.
    Its prompts are exact, so the tests compare the pool's with them, and ``bench fewshot`` times the
    pool against it."""
    ev = render_template(bank, template, eval_raw, options_style)
    tr = render_template(bank, template, train_raw, options_style)
    ev_inputs, tr_inputs, tr_targets = (ev.inputs.to_pylist(), tr.inputs.to_pylist(),
                                        tr.targets.to_pylist())
    salt = derive_seed(seed, f"few_shot/{spec.name}/{template.id}")
    train_keys, eval_keys = stable_keys(spec, train_raw), stable_keys(spec, eval_raw)
    ring = scramble(train_keys, salt)
    order = np.argsort(ring, kind="stable")
    starts = np.searchsorted(ring[order], scramble(eval_keys, salt ^ 0x5EED))
    n = len(order)
    out = []
    for row, query in enumerate(ev_inputs):
        chosen = []
        for step in range(n):
            j = int(order[(starts[row] + step) % n])
            if train_keys[j] != eval_keys[row] and tr_inputs[j] != query:
                chosen.append(f"{tr_inputs[j]}\n{tr_targets[j]}")
                if len(chosen) == cfg.k:
                    break
        while True:
            prompt = cfg.delimiter.join([*chosen, query])
            if not chosen or count_tokens(prompt) <= cfg.max_tokens:
                break
            chosen = chosen[1:]
        out.append(prompt)
    return out
