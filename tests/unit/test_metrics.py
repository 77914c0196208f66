"""Metrics against independent computations: hand-worked values and the reference libraries."""

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from flanpipe.core.config.registry import METRICS
from flanpipe.core.eval import metrics

# --------------------------------------------------------------------------- entry points


# One small valid input per metric, for the contract tests.
EXAMPLES = {
    "accuracy": (["yes", "no"], [["yes"], ["yes"]]),
    "f1": (["yes", "no"], [["yes"], ["yes"]]),
    "matthews_corr": (["yes", "no"], [["yes"], ["no"]]),
    "squad": (["Paris"], [["Paris, France"]]),
    "bleu": (["the cat sat on the mat"], [["the cat sat on a mat"]]),
    "rouge": (["the cat sat"], [["the cat sat on the mat"]]),
    "pearson_spearman": (["1", "2", "2.5"], [["1"], ["3"], ["2"]]),
}


def test_every_registry_metric_has_a_function_and_a_primary_key():
    assert set(metrics.METRIC_FUNCTIONS) == set(METRICS) == set(metrics.PRIMARY) == set(EXAMPLES)


@pytest.mark.parametrize("metric", METRICS)
def test_primary_key_is_in_the_result_and_values_are_plain_numbers(metric):
    scores = metrics.compute(metric, *EXAMPLES[metric])
    assert metrics.primary(metric) in scores
    assert all(type(v) in (float, int) for v in scores.values()), scores


def test_unknown_metric_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'perplexity'.*accuracy, f1, matthews_corr, squad, bleu, rouge"):
        metrics.compute("perplexity", ["a"], [["a"]])
    with pytest.raises(ValueError, match="'perplexity'"):
        metrics.primary("perplexity")


@pytest.mark.parametrize("metric", METRICS)
def test_length_mismatch_and_empty_input_are_errors(metric):
    with pytest.raises(ValueError, match="predictions has 2 examples but references has 1"):
        metrics.compute(metric, ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no examples"):
        metrics.compute(metric, [], [])


def test_flat_references_are_rejected_not_split_into_characters():
    with pytest.raises(TypeError, match=r"references\[0\] is a string"):
        metrics.compute("accuracy", ["yes", "no"], ["yes", "no"])
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        metrics.compute("accuracy", ["yes", "no"], [["yes"], []])


# --------------------------------------------------------------------------- accuracy, F1, MCC


def test_accuracy_strips_and_ignores_case_but_not_punctuation():
    predictions = [" Yes\n", "NO", "Paris.", "maybe"]
    references = [["yes"], ["no"], ["paris"], ["no", "Maybe"]]
    assert metrics.compute("accuracy", predictions, references) == {"accuracy": 75.0}


def random_labels(seed, n, gold_labels, pred_labels):
    rng = np.random.default_rng(seed)
    gold = rng.choice(gold_labels, size=n).tolist()
    # Mostly right, so the scores are far from chance and a wrong formula shows.
    pred = np.where(rng.random(n) < 0.6, gold, rng.choice(pred_labels, size=n)).tolist()
    return gold, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("labels", [["no", "yes"], ["entailment", "neutral", "contradiction"]])
def test_macro_f1_and_mcc_equal_sklearn(seed, labels):
    gold, pred = random_labels(seed, 300, labels, labels)
    refs = [[g] for g in gold]
    scores = metrics.compute("f1", pred, refs)
    assert scores["f1"] == pytest.approx(100 * f1_score(gold, pred, average="macro"))
    assert scores["accuracy"] == pytest.approx(100 * np.mean(np.array(gold) == np.array(pred)))
    mcc = metrics.compute("matthews_corr", pred, refs)
    assert mcc["matthews_corr"] == pytest.approx(100 * matthews_corrcoef(gold, pred))
    assert mcc["accuracy"] == scores["accuracy"] == metrics.compute("accuracy", pred, refs)["accuracy"]


@pytest.mark.parametrize("seed", [3, 4])
def test_stray_predicted_labels_match_sklearn_conventions(seed):
    """F1 averages over the reference labels only; MCC spans all labels, as sklearn's does."""
    gold, pred = random_labels(seed, 300, ["a", "b", "c"], ["a", "b", "c", "d", "e"])
    assert {"d", "e"} & set(pred)
    refs = [[g] for g in gold]
    expected_f1 = f1_score(gold, pred, labels=sorted(set(gold)), average="macro")
    assert metrics.compute("f1", pred, refs)["f1"] == pytest.approx(100 * expected_f1)
    assert metrics.compute("matthews_corr", pred, refs)["matthews_corr"] == pytest.approx(
        100 * matthews_corrcoef(gold, pred))


def test_mcc_on_many_examples_does_not_overflow():
    gold, pred = random_labels(5, 100_000, ["a", "b", "c"], ["a", "b", "c"])
    got = metrics.compute("matthews_corr", pred, [[g] for g in gold])["matthews_corr"]
    assert got == pytest.approx(100 * matthews_corrcoef(gold, pred))
    assert 40 < got < 100


def test_label_metrics_compare_labels_like_accuracy():
    scores = metrics.compute("f1", [" Yes", "no", "NO"], [["yes"], ["No"], ["yes"]])
    assert scores["accuracy"] == pytest.approx(200 / 3)
    # yes: tp 1, fn 1 -> 2/3; no: tp 1, fp 1 -> 2/3
    assert scores["f1"] == pytest.approx(200 / 3)


def test_mcc_hand_worked_and_degenerate():
    # tp 1 (yes/yes), tn 1, fp 1, fn 1 -> (1*1 - 1*1) / sqrt(2*2*2*2) = 0; and perfect -> 100
    preds, golds = ["yes", "no", "yes", "no"], [["yes"], ["no"], ["no"], ["yes"]]
    assert metrics.compute("matthews_corr", preds, golds)["matthews_corr"] == pytest.approx(0.0)
    assert metrics.compute("matthews_corr", ["yes", "no"], [["yes"], ["no"]])["matthews_corr"] == 100.0
    # one predicted class: the denominator is 0, scored 0 as sklearn does
    assert metrics.compute("matthews_corr", ["yes", "yes"], [["yes"], ["no"]])["matthews_corr"] == 0.0


# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(("prediction", "references", "em", "f1"), [
    ("the Eiffel tower", ["Eiffel Tower"], 1, 1),  # case and articles
    ("in Paris France", ["Paris"], 0, 2 * (1 / 3 * 1) / (1 / 3 + 1)),  # P 1/3, R 1
    ("Paris.", ["paris"], 1, 1),  # punctuation
    ("Denver", ["Denver Broncos"], 0, 2 * (1 * 1 / 2) / (1 + 1 / 2)),  # P 1, R 1/2
    ("Denver Broncos", ["Broncos", "Denver Broncos"], 1, 1),  # best reference
    ("the cat cat", ["cat"], 0, 2 * (1 / 2 * 1) / (1 / 2 + 1)),  # repeated tokens count once each
    ("Rome", ["Paris"], 0, 0),
    ("", [""], 1, 1),  # SQuAD v2 unanswerable, answered empty
    ("", [], 1, 1),
    ("Paris", [""], 0, 0),  # unanswerable, answered anyway
    ("", ["Paris"], 0, 0),
])
def test_squad_hand_worked(prediction, references, em, f1):
    scores = metrics.compute("squad", [prediction], [references])
    assert scores["exact_match"] == pytest.approx(100 * em)
    assert scores["f1"] == pytest.approx(100 * f1)


def test_squad_averages_over_examples():
    scores = metrics.compute("squad", ["the Eiffel tower", "in Paris France"], [["Eiffel Tower"], ["Paris"]])
    assert scores == pytest.approx({"exact_match": 50.0, "f1": (100 + 50) / 2})


# --------------------------------------------------------------------------- BLEU


HYPOTHESES = ["The cat sat on the mat.", "It is raining heavily today in the city.",
              "He read the book quickly before dinner."]
REFERENCES = [["The cat is sitting on the mat.", "A cat sat on the mat."],
              ["Today it rains heavily in the city.", "It is pouring in the city today."],
              ["Before dinner he read the book fast.", "He quickly read the book before supper."]]


def test_bleu_equals_sacrebleu_with_references_transposed():
    streams = [[refs[0] for refs in REFERENCES], [refs[1] for refs in REFERENCES]]
    expected = sacrebleu.corpus_bleu(HYPOTHESES, streams)
    scores = metrics.compute("bleu", HYPOTHESES, REFERENCES)
    assert scores["bleu"] == pytest.approx(expected.score)
    assert [scores[f"precision_{n}"] for n in (1, 2, 3, 4)] == pytest.approx(expected.precisions)
    assert scores["brevity_penalty"] == pytest.approx(expected.bp)
    assert scores["length_ratio"] == pytest.approx(expected.sys_len / expected.ref_len)
    # The per-example lists passed untransposed would score differently: the test can fail.
    assert sacrebleu.corpus_bleu(HYPOTHESES, REFERENCES).score != pytest.approx(expected.score)


def test_bleu_ragged_references_equal_fewer_references():
    """An example's repeated first reference adds nothing: its score is that of its own references."""
    ragged = [REFERENCES[0], REFERENCES[1][:1], REFERENCES[2]]
    streams = [[refs[0] for refs in ragged], [REFERENCES[0][1], REFERENCES[1][0], REFERENCES[2][1]]]
    assert metrics.compute("bleu", HYPOTHESES, ragged)["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(HYPOTHESES, streams).score)
    doubled = [[refs[0], refs[0]] for refs in REFERENCES]
    single = [[refs[0]] for refs in REFERENCES]
    assert metrics.compute("bleu", HYPOTHESES, doubled) == pytest.approx(
        metrics.compute("bleu", HYPOTHESES, single))


def test_bleu_hand_checkable_extremes():
    identical = metrics.compute("bleu", HYPOTHESES, [[h] for h in HYPOTHESES])
    assert identical["bleu"] == pytest.approx(100.0)
    assert identical["brevity_penalty"] == 1.0
    no_overlap = metrics.compute("bleu", ["alpha beta gamma delta"], [["one two three four"]])
    assert no_overlap["bleu"] == 0.0
    assert no_overlap["precision_1"] == 0.0


# --------------------------------------------------------------------------- ROUGE


def test_rouge_hand_worked():
    scores = metrics.compute("rouge", ["the cat sat"], [["the cat sat on the mat"]])
    assert scores["rouge1"] == pytest.approx(100 * 2 * (1 * 3 / 6) / (1 + 3 / 6))  # P 3/3, R 3/6
    assert scores["rouge2"] == pytest.approx(100 * 2 * (1 * 2 / 5) / (1 + 2 / 5))  # P 2/2, R 2/5
    assert scores["rougeL"] == pytest.approx(200 / 3)  # LCS 3
    assert scores["rougeLsum"] == scores["rougeL"]  # one line each
    assert metrics.compute("rouge", ["The cats"], [["the cat"]])["rouge1"] == pytest.approx(100.0)  # stemmer


def test_rouge_lsum_splits_sentences_on_newlines():
    scores = metrics.compute("rouge", ["a b\nc d"], [["c d\na b"]])
    assert scores["rougeL"] == pytest.approx(50.0)  # LCS of "a b c d" and "c d a b" is 2 of 4
    assert scores["rougeLsum"] == pytest.approx(100.0)  # each reference sentence found whole


def test_rouge_equals_rouge_score_best_reference_mean():
    predictions = ["the quick brown fox jumps", "rain is expected tomorrow in the north",
                   "stocks fell sharply on monday"]
    references = [["a quick brown fox jumped over the dog"],
                  ["tomorrow brings rain to northern areas", "rain expected in the north tomorrow"],
                  ["on monday shares dropped", "stocks fell on monday", "markets were down"]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = metrics.compute("rouge", predictions, references)
    for rouge_type in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        best = [max(scorer.score(r, p)[rouge_type].fmeasure for r in refs)
                for p, refs in zip(predictions, references, strict=True)]
        assert scores[rouge_type] == pytest.approx(100 * np.mean(best)), rouge_type
    first_only = metrics.compute("rouge", predictions, [refs[:1] for refs in references])
    assert scores["rouge1"] > first_only["rouge1"]  # the best reference, not the first, counts


# --------------------------------------------------------------------------- correlations


def test_pearson_spearman_equal_scipy_and_numpy():
    pred = [0.5, 1.2, 2.8, 3.1, 4.9, 2.0]
    gold = [0.0, 1.5, 2.5, 3.8, 4.6, 1.0]
    scores = metrics.compute("pearson_spearman", [str(p) for p in pred], [[str(g)] for g in gold])
    assert scores["pearson"] == pytest.approx(100 * stats.pearsonr(pred, gold).statistic)
    assert scores["pearson"] == pytest.approx(100 * np.corrcoef(pred, gold)[0, 1])
    assert scores["spearman"] == pytest.approx(100 * stats.spearmanr(pred, gold).statistic)
    assert scores["unparsed"] == 0


def test_spearman_hand_worked():
    # Monotonic but not linear: ranks agree exactly, values do not lie on a line.
    scores = metrics.compute("pearson_spearman", ["1", "2", "3", "10"], [["1"], ["2"], ["3"], ["4"]])
    assert scores["spearman"] == pytest.approx(100.0)
    assert scores["pearson"] < 95


def test_unparsed_predictions_take_the_mean_gold_and_are_counted():
    scores = metrics.compute("pearson_spearman", ["1", "about two", "3", "nan"],
                             [["1"], ["2"], ["3"], ["2"]])
    assert scores["unparsed"] == 2
    pred, gold = [1, 2, 3, 2], [1, 2, 3, 2]  # the mean gold is 2
    assert scores["pearson"] == pytest.approx(100 * stats.pearsonr(pred, gold).statistic)


def test_correlation_edge_cases():
    constant = metrics.compute("pearson_spearman", ["2", "2", "2"], [["1"], ["2"], ["3"]])
    assert constant == {"pearson": 0.0, "spearman": 0.0, "unparsed": 0}
    with pytest.raises(ValueError, match=r"references\[1\]"):
        metrics.compute("pearson_spearman", ["1", "2"], [["1"], ["high"]])


def test_paired_power_agrees_with_the_statistics_module_and_the_paired_bootstrap():
    """Two models' right/wrong on 800 rows that mostly agree (as a base and its tuned copy): the
    standard deviation is the statistics module's, the normal interval's half-width is within 10% of
    the paired bootstrap's, and the rows asked for +-2 would give that half-width."""
    import statistics

    from flanpipe.core.eval.metrics import paired_bootstrap, paired_power

    rng = np.random.default_rng(7)
    base = (rng.random(800) < 0.6).astype(float) * 100
    flip = rng.random(800) < 0.25
    tuned = np.where(flip, 100 - base, base)
    p = paired_power(tuned - base)
    assert p["n"] == 800 and p["sd"] == pytest.approx(statistics.stdev((tuned - base).tolist()))
    d = paired_bootstrap(lambda r: tuned[r].mean(), lambda r: base[r].mean(), 800, 4000, seed=1)
    assert p["interval_half_width"] == pytest.approx((d["high"] - d["low"]) / 2, rel=0.1)
    assert 1.96 * p["sd"] / np.sqrt(p["rows_for_2"]) <= 2.0 < 1.96 * p["sd"] / np.sqrt(p["rows_for_2"] - 1)
    assert p["detectable"] == pytest.approx((1.959964 + 0.841621) * p["sd"] / np.sqrt(800))
