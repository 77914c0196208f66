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
