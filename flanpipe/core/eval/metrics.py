"""Evaluation metrics named by the dataset registry (``metric:`` in ``datasets.yaml``).

One entry point, :func:`compute`, scores a whole eval set: ``predictions`` holds one string per
example, ``references`` one *list* of reference strings per example. :func:`primary` names the key
a results table reports. Every metric is also a plain function of the same two arguments.

=================  ==========================================================  ===============
metric             keys                                                        primary
=================  ==========================================================  ===============
accuracy           accuracy                                                    accuracy
f1                 f1 (macro over the reference labels), accuracy              f1
matthews_corr      matthews_corr (x100), accuracy                              matthews_corr
squad              exact_match, f1                                             f1
bleu               bleu, precision_1..precision_4, brevity_penalty,            bleu
                   length_ratio
rouge              rouge1, rouge2, rougeL, rougeLsum                           rougeL
pearson_spearman   pearson, spearman (both x100), unparsed (a count)           pearson
=================  ==========================================================  ===============

Percentages are 0..100 and correlations -100..100. ``brevity_penalty`` (0..1) and ``length_ratio``
(hypothesis / reference length) are plain ratios, ``unparsed`` a count of examples.

>>> scores = compute("squad", ["the Eiffel Tower", "Paris"], [["Eiffel Tower"], ["Paris, France"]])
>>> {key: round(value, 2) for key, value in scores.items()}
{'exact_match': 50.0, 'f1': 83.33}
>>> primary("squad")
'f1'

sacrebleu, rouge_score and scipy are imported inside the metrics that use them: rouge_score pulls
in NLTK, which takes seconds to import, and most callers of this module need none of the three.
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from flanpipe.core.config.registry import METRICS

Scores = dict[str, float]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BLEU_TOKENIZER = "13a"  # sacrebleu's default, the WMT standard


# --------------------------------------------------------------------------- input checks


def check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]],
                 allow_no_reference: bool = False) -> None:
    """Raise a clear error unless there is one prediction string and one list of references per example.

    >>> check_inputs(["yes"], [["yes"]])
    >>> check_inputs(["yes", "no"], [["yes"]])
    Traceback (most recent call last):
    ...
    ValueError: predictions has 2 examples but references has 1
    >>> check_inputs(["yes"], ["yes"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: references[0] is a string, not a list of references; pass one list per example, ...
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions has {len(predictions)} examples but references has {len(references)}")
    if not predictions:
        raise ValueError("no examples to score: predictions and references are empty")
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise TypeError(f"predictions[{i}] is a {type(prediction).__name__}, not a string")
        if isinstance(refs, str):
            raise TypeError(f"references[{i}] is a string, not a list of references; pass one list "
                            f'per example, e.g. [["yes"], ["no"]]')
        if not refs and not allow_no_reference:
            raise ValueError(f"references[{i}] is empty; every example needs at least one reference")
        for ref in refs:
            if not isinstance(ref, str):
                raise TypeError(f"references[{i}] holds a {type(ref).__name__}, not a string")


# --------------------------------------------------------------------------- labels


def normalize_label(text: str) -> str:
    """A label as accuracy compares it: surrounding whitespace stripped, case folded.

    >>> normalize_label("  Entailment\\n")
    'entailment'
    """
    return text.strip().casefold()


def gold_labels(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[str]:
    """Each example's gold label, normalised: the reference the prediction matches, else the first.

    Classification examples carry one reference, so this is simply that reference; with several
    (generation tasks scored by accuracy), a prediction that matches any of them counts as correct.

    >>> gold_labels(["Yes", "no"], [["yes"], ["maybe", "yes"]])
    ['yes', 'maybe']
    """
    golds = []
    for prediction, refs in zip(predictions, references, strict=True):
        pred = normalize_label(prediction)
        normalized = [normalize_label(r) for r in refs]
        golds.append(pred if pred in normalized else normalized[0])
    return golds


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The sorted labels of ``y_true`` and ``y_pred`` together, and counts[true, predicted] over them.

    >>> labels, counts = confusion_matrix(["a", "a", "b"], ["a", "b", "c"])
    >>> labels
    ['a', 'b', 'c']
    >>> counts.tolist()
    [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    """
    labels, codes = np.unique(np.array(list(y_true) + list(y_pred), dtype=str), return_inverse=True)
    k, n = len(labels), len(y_true)
    counts = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k)
    return labels.tolist(), counts


def accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Percent of predictions equal to one of their references, ignoring surrounding whitespace and case.

    The classifier already picks an option string, so this is plain equality; generation tasks
    scored by accuracy get the same comparison (no punctuation or article removal: that is
    ``squad``'s ``exact_match``).

    >>> accuracy(["positive ", "Negative", "neutral"], [["positive"], ["negative"], ["positive"]])
    {'accuracy': 66.66666666666667}
    """
    check_inputs(predictions, references)
    correct = sum(normalize_label(p) in {normalize_label(r) for r in refs}
                  for p, refs in zip(predictions, references, strict=True))
    return {"accuracy": 100.0 * correct / len(predictions)}


def macro_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Macro-averaged F1 over the labels that occur in the references, plus accuracy.

    Labels are compared as :func:`accuracy` compares them. A prediction outside the reference labels
    (a generated "maybe") is an error for its example's class but is not a class of its own, so the
    number of distinct wrong strings cannot move the average. This equals scikit-learn's
    ``f1_score(gold, pred, labels=sorted(set(gold)), average="macro")``.

    >>> macro_f1(["yes", "yes", "no", "maybe"], [["yes"], ["no"], ["no"], ["yes"]])  # (1/2 + 2/3) / 2
    {'f1': 58.33333333333333, 'accuracy': 50.0}
    """
    check_inputs(predictions, references)
    gold = gold_labels(predictions, references)
    pred = [normalize_label(p) for p in predictions]
    labels, counts = confusion_matrix(gold, pred)
    in_gold = counts.sum(axis=1) > 0  # the reference labels
    tp = np.diag(counts)[in_gold]
    fp = counts.sum(axis=0)[in_gold] - tp
    fn = counts.sum(axis=1)[in_gold] - tp
    f1 = 2 * tp / (2 * tp + fp + fn)  # each reference label has a gold example, so never 0 / 0
    return {"f1": 100.0 * float(f1.mean()), "accuracy": 100.0 * int(np.trace(counts)) / len(gold)}


def matthews_corr(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Matthews correlation (x100) over label strings, with its multi-class generalisation, plus accuracy.

    Same as scikit-learn's ``matthews_corrcoef(gold, pred)``: the confusion matrix spans the labels
    of both, and a degenerate matrix (everything predicted as one class) scores 0.

    >>> matthews_corr(["acceptable", "acceptable", "unacceptable", "acceptable"],
    ...               [["acceptable"], ["unacceptable"], ["unacceptable"], ["acceptable"]])
    {'matthews_corr': 57.73502691896258, 'accuracy': 75.0}
    """
    check_inputs(predictions, references)
    gold = gold_labels(predictions, references)
    _, int_counts = confusion_matrix(gold, [normalize_label(p) for p in predictions])
    counts = int_counts.astype(np.float64)  # the products below overflow int64 from ~55k examples
    t_sum, p_sum = counts.sum(axis=1), counts.sum(axis=0)
    n, correct = counts.sum(), np.trace(counts)
    cov_tp = correct * n - t_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    cov_pp = n * n - p_sum @ p_sum
    mcc = 0.0 if cov_tt * cov_pp == 0 else float(cov_tp / math.sqrt(cov_tt * cov_pp))
    return {"matthews_corr": 100.0 * mcc, "accuracy": 100.0 * int(np.trace(int_counts)) / len(gold)}


# --------------------------------------------------------------------------- SQuAD


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, drop ASCII punctuation, articles and extra spaces.

    >>> normalize_answer("The  Eiffel-Tower, (Paris)!")
    'eiffeltower paris'
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, reference: str) -> float:
    """1.0 if the two answers are equal after :func:`normalize_answer`, else 0.0.

    >>> squad_exact_match("the Eiffel tower", "Eiffel Tower")
    1.0
    """
    return float(normalize_answer(prediction) == normalize_answer(reference))


def squad_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of two normalised answers (0..1); two empty answers score 1, as in SQuAD v2.0.

    >>> squad_f1("in Paris France", "Paris")  # precision 1/3, recall 1
    0.5
    >>> squad_f1("", "")
    1.0
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(ref_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """The official SQuAD evaluation: exact match and token F1, each the best over an example's references.

    Follows the v2.0 script (which agrees with v1.1 on answerable questions): references that
    normalise to nothing are dropped, and an example left with none (an unanswerable SQuAD v2
    question, passed as ``[]`` or ``[""]``) is scored against the empty answer, so only an empty
    prediction gets it right. The primary key is ``f1``; closed-book QA (NQ, TriviaQA) is often
    quoted by ``exact_match``, which is in the result too.

    >>> squad(["Denver Broncos", "", "in 1998"], [["Broncos", "Denver Broncos"], [], ["1998"]])
    {'exact_match': 66.66666666666667, 'f1': 88.88888888888887}
    """
    check_inputs(predictions, references, allow_no_reference=True)
    em_total = f1_total = 0.0
    for prediction, refs in zip(predictions, references, strict=True):
        answers = [r for r in refs if normalize_answer(r)] or [""]
        em_total += max(squad_exact_match(prediction, a) for a in answers)
        f1_total += max(squad_f1(prediction, a) for a in answers)
    n = len(predictions)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n}


# --------------------------------------------------------------------------- BLEU and ROUGE


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Transpose per-example reference lists into sacrebleu's reference streams (one per position).

    sacrebleu needs every stream as long as the hypotheses, so an example with fewer references
    than the most repeats its first one. That leaves its BLEU statistics unchanged: n-gram counts
    are clipped by the maximum over references and the closest reference length is chosen, and a
    duplicate changes neither.

    >>> reference_streams([["a b", "a c"], ["d e"]])
    [['a b', 'd e'], ['a c', 'd e']]
    """
    width = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else refs[0] for refs in references] for j in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Corpus BLEU with sacrebleu's defaults (``13a`` tokenizer, exponential smoothing, case-sensitive).

    Also the four modified n-gram precisions (percent), the brevity penalty and the length ratio
    (both plain ratios), to tell short outputs from wrong ones.

    >>> scores = bleu(["the cat sat on the mat"], [["the cat sat on the mat", "a cat was on the mat"]])
    >>> round(scores["bleu"], 6), scores["brevity_penalty"]
    (100.0, 1.0)
    """
    import sacrebleu

    check_inputs(predictions, references)
    result = sacrebleu.corpus_bleu(list(predictions), reference_streams(references),
                                   tokenize=BLEU_TOKENIZER)
    scores = {"bleu": float(result.score)}
    scores.update({f"precision_{n + 1}": float(p) for n, p in enumerate(result.precisions)})
    scores["brevity_penalty"] = float(result.bp)
    scores["length_ratio"] = result.sys_len / result.ref_len if result.ref_len else 0.0
    return scores


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Mean ROUGE-1/2/L/Lsum F-measure (percent), each example scored against its best reference.

    Uses Google's ``rouge_score`` with the Porter stemmer. Its tokenizer lower-cases and keeps only
    ASCII letters and digits, so it suits English text only. ``rougeLsum`` treats newlines as
    sentence boundaries; texts are used as given, so on single-line texts it equals ``rougeL``.
    The primary key is ``rougeL``.

    >>> scores = rouge(["the cat sat"], [["the cat sat on the mat"]])  # P 3/3, R 3/6
    >>> round(scores["rouge1"], 2), round(scores["rouge2"], 2)
    (66.67, 57.14)
    """
    from rouge_score import rouge_scorer

    check_inputs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, references, strict=True):
        best = scorer.score_multi(list(refs), prediction)
        for rouge_type in ROUGE_TYPES:
            totals[rouge_type] += best[rouge_type].fmeasure
    return {k: 100.0 * float(total) / len(predictions) for k, total in totals.items()}


# --------------------------------------------------------------------------- correlations


def parse_float(text: str) -> float | None:
    """The number a text spells (surrounding whitespace allowed), or None; NaN and infinity are None.

    >>> parse_float(" 3.8 "), parse_float("4"), parse_float("about 3"), parse_float("nan")
    (3.8, 4.0, None, None)
    """
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def pearson_spearman(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Pearson and Spearman correlation (x100) of numeric predictions with the gold values (STS-B).

    An example's gold value is the mean of its references, which must all parse. A prediction that
    does not parse (see :func:`parse_float`) is replaced by the mean gold value of the eval set: a
    constant that carries no information, so it cannot raise the correlation the way dropping the
    example could, and it does not depend on the label scale as 0.0 would. ``unparsed`` counts
    them. Where a correlation is undefined (fewer than two examples, or constant predictions or
    golds) it is reported as 0. The primary key is ``pearson``, STS-B's official measure.

    >>> pearson_spearman(["1", "2", "3", "n/a"], [["1.0"], ["2.5"], ["2.0"], ["4.5"]])["unparsed"]
    1
    """
    from scipy import stats

    check_inputs(predictions, references)
    gold = np.empty(len(references))
    for i, refs in enumerate(references):
        values = [parse_float(r) for r in refs]
        if None in values:
            raise ValueError(f"references[{i}] = {list(refs)!r} does not parse as numbers")
        gold[i] = np.mean(values)
    parsed = [parse_float(p) for p in predictions]
    unparsed = sum(v is None for v in parsed)
    pred = np.array([gold.mean() if v is None else v for v in parsed])
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return {"pearson": 0.0, "spearman": 0.0, "unparsed": unparsed}
    return {"pearson": 100.0 * float(stats.pearsonr(pred, gold).statistic),
            "spearman": 100.0 * float(stats.spearmanr(pred, gold).statistic),
            "unparsed": unparsed}


# --------------------------------------------------------------------------- entry points


METRIC_FUNCTIONS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], Scores]] = {
    "accuracy": accuracy,
    "f1": macro_f1,
    "matthews_corr": matthews_corr,
    "squad": squad,
    "bleu": bleu,
    "rouge": rouge,
    "pearson_spearman": pearson_spearman,
}
PRIMARY = {
    "accuracy": "accuracy",
    "f1": "f1",
    "matthews_corr": "matthews_corr",
    "squad": "f1",
    "bleu": "bleu",
    "rouge": "rougeL",
    "pearson_spearman": "pearson",
}


def _check_metric(metric: str) -> None:
    if metric not in METRIC_FUNCTIONS:
        raise ValueError(f"unknown metric {metric!r}; the registry allows: {', '.join(METRICS)}")


def compute(metric: str, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus-level scores of ``predictions`` (one string per example) against ``references``.

    ``references`` holds one or more reference strings per example. Returns every sub-score of the
    metric (keys in the module docstring's table): 0..100 for percentages (accuracy, f1,
    exact_match, bleu, rouge*), -100..100 for correlations (x100).

    >>> compute("accuracy", ["yes", "No "], [["yes"], ["no"]])
    {'accuracy': 100.0}
    >>> compute("perplexity", ["a"], [["a"]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown metric 'perplexity'; the registry allows: accuracy, f1, matthews_corr, ...
    """
    _check_metric(metric)
    return METRIC_FUNCTIONS[metric](predictions, references)


def primary(metric: str) -> str:
    """The key of :func:`compute`'s result that a results table reports for ``metric``.

    >>> primary("rouge"), primary("squad"), primary("pearson_spearman")
    ('rougeL', 'f1', 'pearson')
    """
    _check_metric(metric)
    return PRIMARY[metric]


# --------------------------------------------------------------------------- uncertainty

PER_EXAMPLE = frozenset({"accuracy", "squad", "rouge"})
"""Metrics whose every key is a mean over examples: the bootstrap resamples per-example scores.
The others (macro f1, Matthews, BLEU, correlations) are computed again on every resample."""


def example_scores(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
                   ) -> np.ndarray | None:
    """Each example's own score of ``metric``'s primary key (their mean is :func:`compute`'s), or
    None where the metric is not a mean over examples.

    >>> example_scores("accuracy", ["yes", "no", "no"], [["yes"], ["yes"], ["no"]]).tolist()
    [100.0, 0.0, 100.0]
    """
    _check_metric(metric)
    if metric not in PER_EXAMPLE:
        return None
    key = PRIMARY[metric]
    if metric == "accuracy":
        check_inputs(predictions, references)
        return 100.0 * np.array([normalize_label(p) in {normalize_label(r) for r in refs}
                                 for p, refs in zip(predictions, references, strict=True)], np.float64)
    return np.array([compute(metric, [p], [list(refs)])[key] for p, refs in zip(predictions, references,
                                                                               strict=True)])


def template_mean(metric: str, predictions: Sequence[Sequence[str]],
                  references: Sequence[Sequence[Sequence[str]]]) -> Callable[[np.ndarray], float]:
    """The headline as a function of which examples are drawn: ``f(rows)`` is the mean over
    templates of ``metric``'s primary key on ``rows`` (``predictions[t]`` and ``references[t]`` are
    template ``t``'s). ``f(np.arange(n))`` is the headline itself."""
    key = PRIMARY[metric]
    per = [example_scores(metric, p, r) for p, r in zip(predictions, references, strict=True)]
    if all(s is not None for s in per):
        mean = np.mean(np.stack(per), axis=0)  # per example, over templates
        return lambda rows: float(mean[rows].mean())

    def score(rows: np.ndarray) -> float:
        return float(np.mean([compute(metric, [p[i] for i in rows], [r[i] for i in rows])[key]
                              for p, r in zip(predictions, references, strict=True)]))
    return score


def bootstrap(score: Callable[[np.ndarray], float], n: int, resamples: int, seed: int,
              level: float = 0.95) -> dict[str, float] | None:
    """The percentile bootstrap interval of ``score(rows)`` over ``n`` examples drawn with
    replacement, ``resamples`` times (seeded): ``{"low", "high", "level", "resamples"}``, or None
    with no resamples or no examples.

    >>> ones = np.r_[np.ones(60), np.zeros(40)]
    >>> ci = bootstrap(lambda rows: float(ones[rows].mean()), 100, 2000, seed=0)
    >>> 0.49 < ci["low"] < 0.52 and 0.68 < ci["high"] < 0.71
    True
    """
    if resamples <= 0 or n <= 0:
        return None
    draws = _resampled(score, n, resamples, seed)
    low, high = _percentiles(draws, level)
    return {"low": low, "high": high, "level": level, "resamples": resamples}


def _resampled(score: Callable[[np.ndarray], float], n: int, resamples: int, seed: int) -> np.ndarray:
    """``score`` of ``resamples`` seeded draws of ``n`` examples with replacement."""
    rng = np.random.default_rng(seed)
    return np.array([score(rng.integers(0, n, n)) for _ in range(resamples)])


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap(score_a: Callable[[np.ndarray], float], score_b: Callable[[np.ndarray], float], n: int,
                     resamples: int, seed: int, level: float = 0.95) -> dict[str, float] | None:
    """The interval of ``score_a - score_b`` with the *same* examples drawn for both on every
    resample (two models on the same rows and templates), and the share of resamples in which the
    difference is at or below zero (``p_not_better``: a one-sided bootstrap p-value for a > b).

    >>> a, b = np.r_[np.ones(70), np.zeros(30)], np.r_[np.ones(50), np.zeros(50)]
    >>> d = paired_bootstrap(lambda r: a[r].mean(), lambda r: b[r].mean(), 100, 2000, seed=0)
    >>> 0.1 < d["low"] < 0.2 < d["high"] < 0.3, d["p_not_better"] < 0.01
    (True, True)
    """
    if resamples <= 0 or n <= 0:
        return None
    diffs = _resampled(lambda rows: score_a(rows) - score_b(rows), n, resamples, seed)
    low, high = _percentiles(diffs, level)
    return {"delta": float(score_a(np.arange(n)) - score_b(np.arange(n))), "low": low, "high": high,
            "level": level, "resamples": resamples, "p_not_better": float(np.mean(diffs <= 0))}


def paired_power(differences: Sequence[float], half_width: float = 4.0, level: float = 0.95,
                 power: float = 0.8) -> dict[str, float]:
    """What ``n`` paired differences (tuned minus base per example, 0-100) can tell, by the normal
    approximation: their standard deviation ``sd``; the ``half_width`` of the ``level`` interval on
    their mean (``z * sd / sqrt(n)``, close to the paired bootstrap's); ``detectable``, the smallest
    true difference a two-sided test at ``1 - level`` finds with probability ``power``
    (``(z + z_power) * sd / sqrt(n)``); and the rows that an interval of plus or minus
    ``half_width`` and of half that would need (``(z * sd / w) ** 2``, rounded up).

    >>> p = paired_power([100.0, -100.0] * 50 + [0.0] * 100)   # sd 70.9 over 200 rows
    >>> round(p["sd"], 1), round(p["interval_half_width"], 1), round(p["detectable"], 1)
    (70.9, 9.8, 14.0)
    >>> p["rows_for_4"], p["rows_for_2"]
    (1207, 4826)
    """
    from statistics import NormalDist

    d = np.asarray(differences, np.float64)
    n = len(d)
    if n < 2:
        raise ValueError(f"paired_power needs at least 2 differences, got {n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    z_power = NormalDist().inv_cdf(power)
    sd = float(d.std(ddof=1))
    narrow = half_width / 2
    return {"n": n, "mean": float(d.mean()), "sd": sd, "interval_half_width": z * sd / math.sqrt(n),
            "detectable": (z + z_power) * sd / math.sqrt(n),
            f"rows_for_{half_width:g}": math.ceil((z * sd / half_width) ** 2),
            f"rows_for_{narrow:g}": math.ceil((z * sd / narrow) ** 2), "level": level, "power": power}
