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
