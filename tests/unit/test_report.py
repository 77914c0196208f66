"""The report's ablation sections read each result in its own token format."""

import json

import numpy as np

from flanpipe.core.text.keys import derive_seed
from flanpipe.stages.report import ablation_format_section, stratified_interval


def test_the_format_ablation_reads_each_result_in_its_own_token_format(tmp_path):
    """A result's `format` is the token format it was scored in (`eos`), and its point in the
    instruction-format ablation (`no_template`) is another thing: the point's interval comes from
    the `eos` block's per-example scores, by hand here, not from a block named after the point."""
    scores = {"instructions": [100.0, 0.0, 100.0, 100.0], "no_template": [0.0, 0.0, 100.0, 0.0]}
    paths = []
    for point, own in scores.items():
        path = tmp_path / "format" / point / "rte.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({
            "cluster": "nli", "model": f"format_{point}", "format": "eos",
            "headline": {"mean": float(np.mean(own))},
            "by_format": {"eos": {"example_scores": [own]},
                          "continuation": {"example_scores": [[0.0] * 4]}}}))
        paths.append(str(path))
    md = ablation_format_section(paths, None, list(scores), tmp_path, seed=7, resamples=200)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in "\n".join(md).splitlines()
            if line.startswith("| ")}
    for point, own in scores.items():
        seed = derive_seed(7, f"report/ablation/format/{point}")
        low, high = stratified_interval([[np.array(own)]], seed, 200)
        assert rows[point].endswith(f"| [{low:.1f}, {high:.1f}] |"), rows[point]
    assert (tmp_path / "ablation_format.png").stat().st_size > 0


def _result(run, model, dataset, scores, max_examples=None):
    """A zero-shot eval result as the evaluate stage writes it, reduced to what comparing reads."""
    import json

    r = {"cluster": "commonsense", "dataset": dataset, "few_shot": False, "model": model, "format": "text",
         "by_format": {"text": {"example_scores": [scores]}}, "templates": [{"template_id": 0}],
         "examples": len(scores), "eval_split": {"sha256": "ab" * 32},
         "config": {"seed": 1234, "evaluate": {"max_examples": max_examples}}}
    path = run / "results/eval" / model / f"{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))


def test_two_runs_compare_paired_over_the_same_rows_as_worked_by_hand(tmp_path, capsys):
    """Run A: base 50, tuned 75; run B: base 75, tuned 100 on the same four rows. Each run's gap is
    +25, B's tuned model is 25 above A's, and the gap moves by nothing: row by row B's gap
    (100, 0, 0, 0) is A's, so its interval is exactly [0, 0]."""
    from flanpipe.cli import main
    from flanpipe.stages.report import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    _result(a, "base", "copa", [0, 100, 0, 100])
    _result(a, "commonsense", "copa", [100, 100, 0, 100])
    _result(b, "base", "copa", [0, 100, 100, 100])
    _result(b, "commonsense", "copa", [100, 100, 100, 100])
    [row] = compare_runs(a, b, resamples=200)
    assert row[:2] == ["copa", "4"]
    assert [c.split(" ")[0] for c in row[2:]] == ["+25.0", "+25.0", "+25.0", "+0.0"]
    assert row[5] == "+0.0 [+0.0, +0.0]"
    assert main(["compare", str(a), str(b), "--bootstrap", "100"]) == 0
    assert "| copa | 4 | +25.0 [" in capsys.readouterr().out


def test_runs_that_scored_different_rows_are_not_compared(tmp_path):
    import pytest

    from flanpipe.stages.report import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    for run, n in ((a, None), (b, 3)):
        _result(run, "base", "copa", [0, 100, 0], max_examples=n)
        _result(run, "commonsense", "copa", [100, 100, 0], max_examples=n)
    with pytest.raises(ValueError, match="copa: the two runs scored different eval rows"):
        compare_runs(a, b)


def test_the_seed_spread_is_each_seeds_paired_difference_and_their_spread(tmp_path):
    """Three training seeds of one held-out model beside the base, on the same 5 rows and 2
    templates: each seed's tuned minus base is worked by hand from the example scores, their sd,
    range and the rows' interval (each seed's paired bootstrap, resampled here in NumPy) against the
    report's table, sentence and seeds.json."""
    from flanpipe.stages.report import seeds_section

    def result(model, fmt, scores):
        return {"cluster": "commonsense", "dataset": "copa", "model": model, "format": fmt, "few_shot": False,
                "templates": [{"template_id": 0}, {"template_id": 1}],
                "headline": {"mean": float(np.mean(scores))}, "by_format": {fmt: {"example_scores": scores}}}

    base = result("base", "continuation", [[0, 100, 0, 100, 0], [0, 100, 100, 0, 0]])
    tuned = {11: [[100, 100, 0, 100, 0], [100, 100, 100, 0, 0]],   # + 20 (two more rows of ten)
             4: [[100, 100, 100, 100, 100], [100, 100, 100, 100, 0]],  # + 50
             7: [[0, 100, 0, 100, 0], [0, 100, 100, 0, 0]]}  # + 0: the base's own scores
    paths = []
    for s, scores in tuned.items():
        path = tmp_path / f"results/eval/commonsense/seed-{s}/copa.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result("commonsense", "chat", scores)))
        paths.append(str(path))
    md = "\n".join(seeds_section(paths, [base], tmp_path, seed=9, resamples=400))
    deltas = {11: 20.0, 4: 50.0, 7: 0.0}
    sd = float(np.std(list(deltas.values()), ddof=1))  # 25.17
    b = np.mean(np.array(base["by_format"]["continuation"]["example_scores"], float), axis=0)
    halves = []
    for s, scores in tuned.items():
        a = np.mean(np.array(scores, float), axis=0)
        rng = np.random.default_rng(derive_seed(9, f"report/seeds/copa/{s}"))
        draws = [(a[rows].mean() - b[rows].mean()) for rows in (rng.integers(0, 5, 5) for _ in range(400))]
        low, high = np.percentile(draws, [2.5, 97.5])
        halves.append((high - low) / 2)
    spread = json.loads((tmp_path / "seeds.json").read_text())
    (row,) = spread
    assert [p["seed"] for p in row["seeds"]] == [4, 7, 11]
    assert [p["delta"] for p in row["seeds"]] == [deltas[4], deltas[7], deltas[11]]
    assert row["mean"] == np.mean(list(deltas.values())) and (row["min"], row["max"]) == (0.0, 50.0)
    assert abs(row["sd"] - sd) < 1e-12 and abs(row["row_half_width"] - np.mean(halves)) < 1e-9
    assert "| commonsense | copa | 4: +50.0 [" in md and f"| +23.3 | {sd:.1f} | +0.0 to +50.0 |" in md
    relation = "smaller" if 1.96 * sd < np.mean(halves) else "larger"
    assert (f"- copa: spread over seeds (sd {sd:.1f}, ±{1.96 * sd:.1f}) is {relation} than the row interval "
            f"(±{np.mean(halves):.1f})") in md
