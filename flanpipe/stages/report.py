"""The report: ``results/report/index.md`` and its PNG figures, from the eval results and the catalog.

Figures: the held-out clusters (base vs instruction-tuned, zero-shot and few-shot), every dataset
with its bootstrap interval and template spread, the ablation curves (training clusters, instruction
format), the mixture composition (from the DuckDB catalog) and the training losses. The Markdown has
the tables behind them. Every score is read from files the workflow wrote; the report only resamples
the per-example scores in them: a cluster's interval, and the paired bootstrap of tuned minus base
on the same rows and templates, each model in its own format and both in the same one.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np

from flanpipe.core.config.registry import load_registry
from flanpipe.core.eval.metrics import paired_bootstrap, paired_power
from flanpipe.core.io import atomic_path, write_text_atomic
from flanpipe.core.text.keys import derive_seed

log = logging.getLogger(__name__)

COMPOSITION_SQL = """
SELECT mixture, cluster, sum(sampled) AS examples
FROM mixture_stats GROUP BY mixture, cluster ORDER BY mixture, cluster
"""
SETTINGS = (("base", False, "base, zero-shot"), ("base", True, "base, few-shot"),
            ("tuned", False, "FLAN, zero-shot"), ("tuned", True, "FLAN, few-shot"))
COLORS = {"base, zero-shot": "#bbbbbb", "base, few-shot": "#777777", "FLAN, zero-shot": "#4c72b0",
          "FLAN, few-shot": "#1f3a68"}


def _load(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)


def _setting(r: dict) -> str:
    kind = "base" if r["model"] == "base" else "tuned"
    return next(label for k, few, label in SETTINGS if k == kind and few == r["few_shot"])


def cluster_means(results: list[dict]) -> dict[str, dict[str, float]]:
    """cluster -> setting -> the mean over the cluster's datasets of their mean over templates."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        acc[r["cluster"]][_setting(r)].append(r["headline"]["mean"])
    return {c: {s: float(np.mean(v)) for s, v in by.items()} for c, by in acc.items()}


def example_means(r: dict, format_name: str | None = None) -> np.ndarray | None:
    """A result's per-example score, averaged over templates, in format ``format_name`` (default:
    the model's own); None where the metric is not a mean over examples."""
    block = r.get("by_format", {}).get(format_name or r.get("format"))
    scores = None if block is None else block.get("example_scores")
    if not scores or any(s is None for s in scores):
        return None
    return np.mean(np.array(scores, np.float64), axis=0)


def cluster_intervals(results: list[dict], seed: int, resamples: int) -> dict[str, dict[str, tuple]]:
    """cluster -> setting -> the bootstrap 95% interval of the cluster's mean over datasets, every
    dataset's examples resampled on their own (settings with a corpus-level metric are left out)."""
    groups: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[r["cluster"]][_setting(r)].append(example_means(r))
    out: dict[str, dict[str, tuple]] = defaultdict(dict)
    for cluster, by in groups.items():
        for setting, arrays in by.items():
            if any(a is None for a in arrays):
                continue
            ci = stratified_interval([arrays], derive_seed(seed, f"report/cluster/{cluster}/{setting}"),
                                     resamples)
            if ci is not None:
                out[cluster][setting] = ci
    return out


def stratified_interval(groups: list[list[np.ndarray]], seed: int, resamples: int) -> tuple | None:
    """The bootstrap 95% interval of a mean over groups (held-out clusters) of means over their
    datasets' example scores, each dataset's examples resampled on their own."""
    rng = np.random.default_rng(seed)
    draws = [float(np.mean([np.mean([a[rng.integers(0, len(a), len(a))].mean() for a in arrays])
                            for arrays in groups]))
             for _ in range(max(0, resamples))]
    return tuple(np.quantile(draws, [0.025, 0.975])) if draws else None


def ablation_intervals(results: list[dict], points: list[str], kind: str, seed: int,
                       resamples: int) -> dict[str, tuple]:
    """point -> the bootstrap 95% interval of its `average` (:func:`ablation_points`); ``points[i]``
    is result ``i``'s point, and ``kind`` names the ablation in the seed."""
    by: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r, point in zip(results, points, strict=True):
        by[str(point)][r["cluster"]].append(example_means(r))
    out = {}
    for point, clusters in by.items():
        groups = [clusters[c] for c in sorted(clusters)]
        if all(a is not None for arrays in groups for a in arrays):
            ci = stratified_interval(groups, derive_seed(seed, f"report/ablation/{kind}/{point}"), resamples)
            if ci is not None:
                out[point] = ci
    return out


def plot_clusters(results: list[dict], out: Path, intervals: dict | None = None) -> None:
    plt = _plt()
    means = cluster_means(results)
    intervals = intervals or {}
    clusters = list(means)
    labels = [label for _, _, label in SETTINGS if any(label in means[c] for c in clusters)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(clusters), 3.6))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = np.arange(len(clusters)) + i * width
        ys = [means[c].get(label, np.nan) for c in clusters]
        ax.bar(xs, ys, width, label=label, color=COLORS[label])
        for x, y, c in zip(xs, ys, clusters, strict=True):
            if label in intervals.get(c, {}):
                low, high = intervals[c][label]
                ax.errorbar(x, y, yerr=[[y - low], [high - y]], color="black", capsize=2, lw=0.8)
        for x, y in zip(xs, ys, strict=True):
            if not np.isnan(y):
                ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(clusters)) + width * (len(labels) - 1) / 2, clusters)
    ax.set_ylabel("score (mean over datasets and templates)\nbars: bootstrap 95% interval")
    ax.set_title("Held-out clusters: untuned base vs instruction-tuned")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def plot_datasets(results: list[dict], out: Path) -> None:
    """Per dataset and setting: the mean over templates, with the worst-to-best template range."""
    plt = _plt()
    datasets = sorted({r["dataset"] for r in results}, key=lambda d: (
        next(r["cluster"] for r in results if r["dataset"] == d), d))
    labels = [label for _, _, label in SETTINGS if any(_setting(r) == label for r in results)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(datasets), 3.6))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        for j, d in enumerate(datasets):
            r = next((r for r in results if r["dataset"] == d and _setting(r) == label), None)
            if r is None:
                continue
            h = r["headline"]
            x = j + i * width
            ax.bar(x, h["mean"], width, color=COLORS[label], label=label if j == 0 else None)
            if h.get("interval"):
                ax.errorbar(x, h["mean"], yerr=[[h["mean"] - h["interval"]["low"]],
                                                [h["interval"]["high"] - h["mean"]]],
                            color="black", capsize=2, lw=0.8)
            ax.plot([x, x], [h["worst"], h["best"]], ls="none", marker="_", color="#d62728", ms=6)
    ax.set_xticks(np.arange(len(datasets)) + width * (len(labels) - 1) / 2,
                  [f"{d}\n({next(r['primary'] for r in results if r['dataset'] == d)})" for d in datasets])
    ax.set_ylabel("score (bars: bootstrap 95% interval;\nred: worst and best template)")
    ax.set_title("Held-out datasets, every template")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def ablation_points(results: list[dict], points: list[str]) -> dict[str, dict[str, float]]:
    """point (cluster count, or instruction format; ``points[i]`` is result ``i``'s) -> held-out
    cluster -> mean score; plus `average`."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r, point in zip(results, points, strict=True):
        acc[str(point)][r["cluster"]].append(r["headline"]["mean"])
    out = {}
    for point, by in acc.items():
        row = {c: float(np.mean(v)) for c, v in sorted(by.items())}
        row["average"] = float(np.mean(list(row.values())))
        out[point] = row
    return out


def _error_bars(ax, xs: list, ys: list[float], intervals: dict[str, tuple], points: list[str]) -> None:
    """Black bars: each point's bootstrap 95% interval, where it has one."""
    for x, y, p in zip(xs, ys, points, strict=True):
        if p in intervals:
            low, high = intervals[p]
            ax.errorbar(x, y, yerr=[[y - low], [high - y]], color="black", capsize=3, lw=0.9)


def plot_ablation_clusters(points: dict[str, dict[str, float]], order: list[str], out: Path,
                           intervals: dict[str, tuple] | None = None) -> None:
    plt = _plt()
    ks = sorted(points, key=int)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = sorted({c for p in points.values() for c in p if c != "average"})
    for c in [*series, "average"]:
        ax.plot([int(k) for k in ks], [points[k].get(c, np.nan) for k in ks], marker="o",
                lw=2.5 if c == "average" else 1.2, label=f"held-out {c}" if c != "average" else "average")
    _error_bars(ax, [int(k) for k in ks], [points[k]["average"] for k in ks], intervals or {}, ks)
    ax.set_xticks([int(k) for k in ks], [f"{k}\n+{order[int(k) - 1]}" for k in ks], fontsize=7)
    ax.set_xlabel("instruction-tuning clusters (added in order)")
    ax.set_ylabel("zero-shot score\n(bars: average's 95% interval)")
    ax.set_title("Ablation: number of instruction-tuning clusters")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def plot_ablation_format(points: dict[str, dict[str, float]], formats: list[str], out: Path,
                         intervals: dict[str, tuple] | None = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ys = [points.get(f, {}).get("average", np.nan) for f in formats]
    ax.bar(formats, ys, color=["#4c72b0" if f == "instructions" else "#999999" for f in formats])
    _error_bars(ax, list(range(len(formats))), ys, intervals or {}, formats)
    for x, y in enumerate(ys):
        ax.text(x + 0.08, y, f"{y:.1f}", ha="left", va="bottom", fontsize=8)
    ax.set_ylabel("zero-shot score, average of held-out\nclusters (bars: 95% interval)")
    ax.set_title("Ablation: instruction format at training time")
    _save(fig, out)


def composition(catalog: str | Path) -> list[tuple[str, str, int]]:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return [(m, c, int(n)) for m, c, n in con.sql(COMPOSITION_SQL).fetchall()]
    finally:
        con.close()


def plot_composition(rows: list[tuple[str, str, int]], out: Path) -> None:
    plt = _plt()
    mixtures = sorted({m for m, _, _ in rows})
    clusters = list(load_registry().clusters)
    total = {m: sum(n for mm, _, n in rows if mm == m) for m in mixtures}
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(mixtures)))
    left = np.zeros(len(mixtures))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(clusters):
        share = np.array([100 * sum(n for mm, cc, n in rows if mm == m and cc == c) / max(1, total[m])
                          for m in mixtures])
        if share.any():
            ax.barh(mixtures, share, left=left, color=cmap(i), label=c)
            left += share
    ax.set_xlabel("% of the mixture's examples")
    ax.set_title("Mixture composition by task cluster (catalog: mixture_stats)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def plot_losses(metrics_files: list[str], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for path in metrics_files:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["loss"]]  # (not the held-out curve's rows)
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label=model_label(path))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (target tokens)")
    ax.set_title("Instruction tuning, one model per held-out cluster")
    ax.legend(fontsize=8)
    _save(fig, out)


def base_tuned_pairs(results: list[dict]) -> list[tuple[tuple[str, str, bool], dict, dict]]:
    """((cluster, dataset, few-shot), base result, tuned result) for every held-out dataset and shot
    setting scored by both, in order."""
    by_key = defaultdict(dict)
    for r in results:
        by_key[(r["cluster"], r["dataset"], r["few_shot"])]["base" if r["model"] == "base" else "tuned"] = r
    return [(key, pair["base"], pair["tuned"]) for key, pair in sorted(by_key.items())
            if set(pair) == {"base", "tuned"}]


def power_rows(results: list[dict]) -> list[list[str]]:
    """Per paired held-out dataset (each model in its own format, the same rows and templates): the
    rows, the standard deviation of the per-row difference, the interval's half-width it gives, the
    smallest difference it detects (80% power, two-sided 5%) and the rows that +-4 and +-2 would need
    (:func:`flanpipe.core.eval.metrics.paired_power`)."""
    rows = []
    for (_, dataset, few), base, tuned in base_tuned_pairs(results):
        a, b = example_means(tuned), example_means(base)
        if (a is None or b is None or len(a) != len(b) or len(a) < 2
                or _template_ids(base) != _template_ids(tuned)):
            continue
        p = paired_power(a - b)
        rows.append([dataset, "few-shot" if few else "zero-shot", str(p["n"]), f"{p['sd']:.1f}",
                     f"+-{p['interval_half_width']:.1f}", f"{p['detectable']:.1f}", f"{p['rows_for_4']:,}",
                     f"{p['rows_for_2']:,}"])
    return rows


def model_label(metrics_file: str | Path) -> str:
    """A training run's name from its ``metrics.csv``: the mixture (``models/<mixture>/``), with its
    seed under ``experiment.seeds`` (``models/<mixture>/seed-<s>/``: ``<mixture> seed-<s>``)."""
    folder = Path(metrics_file).parent
    return f"{folder.parent.name} {folder.name}" if folder.name.startswith("seed-") else folder.name


def heldout_curves(metrics_files: list[str]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Each model's held-out curve (``train.eval_every``) from its ``metrics.csv``: ``(model,
    dataset)`` -> the ``(step, score)`` points in step order, step 0 the base; {} where no run
    scored one."""
    curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for path in metrics_files:
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if r.get("eval_split") == "heldout":
                    key = (model_label(path), r["eval_dataset"])
                    curves.setdefault(key, []).append((int(r["step"]), float(r["eval_score"])))
    return {key: sorted(points) for key, points in curves.items()}


def plot_heldout_curves(curves: dict[tuple[str, str], list[tuple[int, float]]], out: Path) -> None:
    """Held-out score against training steps, one line per (model, held-out dataset), and the
    base's score (step 0) as a dashed horizontal line of the same colour: the paper's
    performance-against-steps view."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, ((model, dataset), points) in enumerate(sorted(curves.items())):
        color = plt.get_cmap("tab10")(i % 10)
        steps, scores = zip(*points, strict=True)
        ax.plot(steps, scores, marker="o", ms=3, color=color, label=f"{dataset} ({model} model)")
        base = dict(points).get(0)
        if base is not None:
            ax.axhline(base, color=color, ls="--", lw=0.9, alpha=0.7)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out score (mean over templates)")
    ax.set_title("Held-out score over instruction tuning (dashed: the base, step 0)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def curve_section(metrics_files: list[str], out_dir: Path) -> list[str]:
    """The held-out curves (``train.eval_every``): their figure and each curve's base, last and best
    point; [] where no run scored one."""
    curves = heldout_curves(metrics_files)
    if not curves:
        return []
    plot_heldout_curves(curves, out_dir / "heldout_curve.png")
    rows = []
    for (model, dataset), points in sorted(curves.items()):
        scores = dict(points)
        best = max(points, key=lambda p: (p[1], -p[0]))
        rows.append([model, dataset, f"{scores[0]:.1f}" if 0 in scores else "-",
                     f"{points[-1][1]:.1f} (step {points[-1][0]})", f"{best[1]:.1f} (step {best[0]})",
                     ", ".join(f"{s}: {x:.1f}" for s, x in points)])
    return ["## Held-out score over training", "",
            "Each model scored a fixed slice of its held-out datasets while it trained (`train.eval_every`, "
            "`train.eval_rows` rows, the evaluation's templates and headline variant): the same rows "
            "and prompts as `flanpipe evaluate` with `evaluate.max_examples` set to `train.eval_rows`. "
            "Dashed: the base (step 0). The best held-out step is shown, never used: a checkpoint is "
            "chosen on the training clusters' validation slices only (`train.select`).", "",
            "![held-out curve](heldout_curve.png)", "",
            *_table(["model", "held-out dataset", "base (step 0)", "last", "best", "every point"], rows)
            .splitlines(), ""]


def paired_rows(results: list[dict], seed: int, resamples: int) -> list[list[str]]:
    """Per held-out dataset and shot setting, tuned against base on the same rows and templates:
    each model's score in its own format and in the other, and tuned minus base with its paired
    bootstrap 95% interval, each model in its own format and both in the tuned model's (its
    training format, ``eos`` or ``text``). The share of the own-format gap that the same-format gap
    does not show is the format's."""
    rows = []
    for (cluster, dataset, few), base, tuned in base_tuned_pairs(results):
        cells = [cluster, dataset, "few-shot" if few else "zero-shot"]
        for r in (base, tuned):
            own = r["format"]
            other = next((n for n in r.get("by_format", {}) if n != own), None)
            cells.append(f"{r['headline']['mean']:.1f} ({own})")
            cells.append(f"{r['by_format'][other]['headline']['mean']:.1f} ({other})" if other else "-")
        trained = tuned["format"]
        for base_format, tuned_format in ((base["format"], trained), (trained, trained)):
            a, b = example_means(tuned, tuned_format), example_means(base, base_format)
            if a is None or b is None or len(a) != len(b) or _template_ids(base) != _template_ids(tuned):
                cells.append("-")
                continue
            d = paired_bootstrap(lambda rows, a=a: float(a[rows].mean()),
                                 lambda rows, b=b: float(b[rows].mean()),
                                 len(a), resamples, derive_seed(seed, f"report/paired/{dataset}/{few}"))
            delta = float(a.mean() - b.mean())
            cells.append(f"{delta:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" if d else f"{delta:+.1f}")
        rows.append(cells)
    return rows


def _interval(ci: tuple | None) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci is not None else "-"


def _template_ids(r: dict) -> list[int]:
    return [t["template_id"] for t in r["templates"]]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def prompt_banks(results: list[dict]) -> list[str]:
    """The report's line on whose prompts the results were scored with: the template bank and, for a
    FLAN bank, the checkout's file, git commit and sha256 (results written before banks existed were
    scored with flanpipe's own)."""
    banks = {json.dumps(r.get("bank", {"bank": "flanpipe"}), sort_keys=True) for r in results}
    lines = []
    for text in sorted(banks):
        bank = json.loads(text)
        if bank["bank"] == "flanpipe":
            lines.append("Prompts: flanpipe's own templates (`templatize.bank: flanpipe`).")
        else:
            commit = f"git commit `{bank['git_commit']}`, " if bank.get("git_commit") else ""
            lines.append(f"Prompts: FLAN's own templates (`templatize.bank: {bank['bank']}`), read from "
                         f"`{bank['flan_root']}/{bank['file']}` ({commit}sha256 `{bank['sha256'][:16]}`).")
    return [*lines, ""] if lines else []


def build_report(zero_shot: list[str], few_shot: list[str], ablation_clusters: list[str],
                 ablation_format: list[str], catalog: str | Path, models: list[str], out_dir: str | Path,
                 cluster_order: list[str], formats: list[str], seed: int = 1234, resamples: int = 1000,
                 ablation_labels: dict[str, list[str]] | None = None, seeds: list[str] | None = None) -> Path:
    """Write ``out_dir/index.md`` and its figures; returns the Markdown's path. ``seed`` and
    ``resamples``: the report's own bootstraps (cluster intervals, paired deltas, ablation points);
    ``ablation_labels``: each ablation result's point, in order (by default read from the model's
    name, ``clusters_k``, and the result's folder, ``format/<f>/``); ``seeds``: the held-out models'
    zero-shot results under each training seed (``.../seed-<s>/<dataset>.json``), for the spread over
    seeds (:func:`seeds_section`, also written to ``out_dir/seeds.json``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _load(zero_shot) + _load(few_shot)
    labels = ablation_labels or {}
    md = ["# flanpipe report", "",
          "Zero-shot (and few-shot) scores on held-out task clusters: each model never trained on the "
          "cluster it is evaluated on. Scores are the dataset's metric (0-100) per template; a dataset's "
          "score is the mean over its templates, with the best template and the spread beside it.", ""]
    md += prompt_banks(results + _load(ablation_clusters) + _load(ablation_format))
    if results:
        md += heldout_section(results, out_dir, seed, resamples)
        md += paired_section(results, seed, resamples)
        md += datasets_section(results, out_dir)
        md += variants_section(results)
    if seeds:
        md += seeds_section(seeds, results, out_dir, seed, resamples)
    if ablation_clusters:
        md += ablation_clusters_section(ablation_clusters, labels.get("clusters"), cluster_order, out_dir,
                                        seed, resamples)
    if ablation_format:
        md += ablation_format_section(ablation_format, labels.get("format"), formats, out_dir, seed,
                                      resamples)
    md += mixtures_section(catalog, out_dir)
    if models:
        plot_losses(models, out_dir / "training_loss.png")
        md += ["## Training", "", "![training loss](training_loss.png)", ""]
        md += curve_section(models, out_dir)
    md += ["Every number here comes from `results/eval/**.json`, `results/ablations/**.json` and "
           "`data/catalog.duckdb`.", ""]
    out = out_dir / "index.md"
    write_text_atomic(out, "\n".join(md))
    log.info("report -> %s (%d results)", out, len(results))
    return out


def heldout_section(results: list[dict], out_dir: Path, seed: int, resamples: int) -> list[str]:
    """The held-out clusters: their figure, and each cluster's mean per setting with its bootstrap
    interval."""
    intervals = cluster_intervals(results, seed, resamples)
    plot_clusters(results, out_dir / "heldout_clusters.png", intervals)
    trained = sorted({r["format"] for r in results if r["model"] != "base" and "format" in r}) or ["eos"]
    md = ["## Held-out clusters", "", "![held-out clusters](heldout_clusters.png)", "",
          "Each cell: the mean over the cluster's datasets, with its bootstrap 95% interval over "
          "examples. Each model is scored in its own format: the one a tuned model was "
          f"trained in ({', '.join(f'`{n}`' for n in trained)}), the untuned base as lm-eval scores "
          "a pretrained model (`continuation`).", ""]
    means = cluster_means(results)
    labels = [label for _, _, label in SETTINGS if any(label in v for v in means.values())]

    def cell(c: str, label: str) -> str:
        if label not in means[c]:
            return "-"
        ci = intervals.get(c, {}).get(label)
        return f"{means[c][label]:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
    return md + [_table(["cluster", *labels], [[c, *(cell(c, s) for s in labels)] for c in means]), ""]


def paired_section(results: list[dict], seed: int, resamples: int) -> list[str]:
    """Tuned against base on the same rows and templates (:func:`paired_rows`); none without pairs."""
    paired = paired_rows(results, seed, resamples)
    if not paired:
        return []
    return ["## Tuned against base, paired", "",
            "The same eval rows and templates for both models. Tuned minus base, with the paired "
            "bootstrap 95% interval over examples: each model in its own format (the headline), "
            "and both in the format the tuned model was trained in (`eos`, `text` or `chat`). "
            "Where the two differ, the format explains that part of the gap.", "",
            _table(["cluster", "dataset", "shots", "base (own)", "base (other)", "tuned (own)",
                    "tuned (other)", "tuned - base, own formats", "tuned - base, tuned's format"],
                   paired),
            ""] + power_section(results)


def power_section(results: list[dict]) -> list[str]:
    """What this budget can tell (:func:`power_rows`); none without pairs."""
    rows = power_rows(results)
    if not rows:
        return []
    return ["### Power", "",
            "From the per-row differences (tuned minus base, each in its own format, averaged over "
            "templates): their standard deviation, the 95% interval's half-width it gives (normal "
            "approximation), the smallest true difference this many rows detect with 80% power at "
            "the two-sided 5% level, and the rows an interval of +-4 and of +-2 points would need.", "",
            _table(["dataset", "shots", "rows", "sd of the difference", "95% half-width",
                    "detectable (80% power)", "rows for +-4", "rows for +-2"], rows), ""]


def result_seed(path: str | Path) -> int:
    """The training seed of a result under ``experiment.seeds``, read from its folder.

    >>> result_seed("results/eval/nli/seed-17/rte.json")
    17
    """
    folder = Path(path).parent.name
    if not folder.startswith("seed-"):
        raise ValueError(f"{path}: not a result under a training seed (results/eval/<cluster>/seed-<s>/)")
    return int(folder.removeprefix("seed-"))


def seed_spread(seeded: list[tuple[int, dict]], results: list[dict], seed: int, resamples: int) -> list[dict]:
    """Per held-out dataset, tuned minus base (zero-shot, each model in its own format, as the paired
    table's headline) under each training seed, and how much the seed moves it beside how much the
    rows do: the mean over seeds, their standard deviation (``ddof=1``) and range, and each seed's
    paired bootstrap 95% interval over rows, whose mean half-width is the row interval. ``seeded``:
    (training seed, result) pairs; ``results``: the rest, where the base's results are."""
    base = {(r["cluster"], r["dataset"]): r for r in results if r["model"] == "base" and not r["few_shot"]}
    by_dataset: dict[tuple[str, str], list[tuple[int, dict]]] = defaultdict(list)
    for training_seed, r in seeded:
        by_dataset[(r["cluster"], r["dataset"])].append((training_seed, r))
    out = []
    for (cluster, dataset), runs in sorted(by_dataset.items()):
        if (cluster, dataset) not in base:
            continue
        per_seed = [seed_delta(tuned, base[(cluster, dataset)], training_seed,
                               derive_seed(seed, f"report/seeds/{dataset}/{training_seed}"), resamples)
                    for training_seed, tuned in sorted(runs, key=lambda run: run[0])]
        deltas = np.array([p["delta"] for p in per_seed])
        halves = [(p["row_interval"][1] - p["row_interval"][0]) / 2 for p in per_seed if p["row_interval"]]
        sd = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else None
        row = {"cluster": cluster, "dataset": dataset, "seeds": per_seed, "mean": float(deltas.mean()),
               "sd": sd, "min": float(deltas.min()), "max": float(deltas.max()),
               "row_half_width": float(np.mean(halves)) if halves else None}
        row["verdict"] = seed_verdict(sd, row["row_half_width"])
        out.append(row)
    return out


def seed_delta(tuned: dict, base: dict, training_seed: int, seed: int, resamples: int) -> dict:
    """One training seed's tuned minus base, each in its own format, with its paired bootstrap 95%
    interval over rows (none where the two were not scored on the same rows and templates, or the
    metric is corpus-level: then the headlines' difference alone)."""
    a, b = example_means(tuned, tuned["format"]), example_means(base, base["format"])
    if a is None or b is None or len(a) != len(b) or _template_ids(base) != _template_ids(tuned):
        return {"seed": training_seed, "delta": tuned["headline"]["mean"] - base["headline"]["mean"],
                "row_interval": None}
    ci = paired_bootstrap(lambda rows: float(a[rows].mean()), lambda rows: float(b[rows].mean()), len(a),
                          resamples, seed)
    return {"seed": training_seed, "delta": float(a.mean() - b.mean()),
            "row_interval": None if ci is None else [ci["low"], ci["high"]]}


def seed_verdict(sd: float | None, row_half_width: float | None) -> str:
    """The sentence that says which spread dominates: the seeds' 95% range under a normal
    approximation (±1.96 sd) against the mean row interval's half-width.

    >>> seed_verdict(1.2, 3.5)
    'spread over seeds (sd 1.2, ±2.4) is smaller than the row interval (±3.5): the rows dominate'
    >>> seed_verdict(None, 3.5)
    'one seed: no spread over seeds'
    """
    if sd is None:
        return "one seed: no spread over seeds"
    if row_half_width is None:
        return f"spread over seeds (sd {sd:.1f}, ±{1.96 * sd:.1f}); no row interval to compare"
    seeds_half = 1.96 * sd
    if seeds_half < row_half_width:
        relation, dominant = "smaller than", "the rows dominate"
    elif seeds_half > row_half_width:
        relation, dominant = "larger than", "the seeds dominate"
    else:
        relation, dominant = "as wide as", "neither dominates"
    return (f"spread over seeds (sd {sd:.1f}, ±{seeds_half:.1f}) is {relation} the row interval "
            f"(±{row_half_width:.1f}): {dominant}")


def seeds_section(paths: list[str], results: list[dict], out_dir: Path, seed: int,
                  resamples: int) -> list[str]:
    """Tuned minus base over training seeds (:func:`seed_spread`), as a table and one sentence per
    dataset; the same numbers in ``out_dir/seeds.json``."""
    spread = seed_spread([(result_seed(p), r) for p, r in zip(paths, _load(paths), strict=True)], results,
                         seed, resamples)
    write_text_atomic(out_dir / "seeds.json", json.dumps(spread, indent=2) + "\n")
    if not spread:
        return []
    rows = []
    for row in spread:
        cells = [f"{p['seed']}: {p['delta']:+.1f}" + (
            f" [{p['row_interval'][0]:+.1f}, {p['row_interval'][1]:+.1f}]" if p["row_interval"] else "")
            for p in row["seeds"]]
        rows.append([row["cluster"], row["dataset"], "; ".join(cells), f"{row['mean']:+.1f}",
                     "-" if row["sd"] is None else f"{row['sd']:.1f}",
                     f"{row['min']:+.1f} to {row['max']:+.1f}",
                     "-" if row["row_half_width"] is None else f"±{row['row_half_width']:.1f}"])
    return ["## Tuned against base, over training seeds", "",
            "The same mixture trained under each seed of `experiment.seeds` (the data, templates and "
            "eval rows are the same for every seed: only training's randomness changes). Zero-shot "
            "tuned minus base, each model in its own format: each seed's value with its paired "
            "bootstrap 95% interval over rows, the mean over seeds, their standard deviation and "
            "range, and the row interval (the mean half-width of the seeds' intervals). The seeds' "
            "spread is compared as ±1.96 sd. The table's numbers are in `seeds.json`.", "",
            _table(["cluster", "dataset", "each seed [row interval]", "mean", "sd over seeds",
                    "min to max", "row interval"], rows), "",
            *(f"- {row['dataset']}: {row['verdict']}." for row in spread), ""]


def datasets_section(results: list[dict], out_dir: Path) -> list[str]:
    """Every result's headline: mean with its interval, best and worst template, spread."""
    plot_datasets(results, out_dir / "datasets.png")
    rows = []
    for r in sorted(results, key=lambda r: (r["cluster"], r["dataset"], _setting(r))):
        h = r["headline"]
        ci = h.get("interval")
        rows.append([r["cluster"], r["dataset"], _setting(r), r.get("format", "eos"),
                     f"{r['metric']} ({r['primary']})",
                     f"{h['mean']:.1f}" + (f" [{ci['low']:.1f}, {ci['high']:.1f}]" if ci else ""),
                     f"{h['best']:.1f} (#{h['best_template']})", f"{h['worst']:.1f}",
                     f"{h['std']:.2f}", str(h["templates"]), str(r["examples"]),
                     str(r["contamination"]["removed_rows"])])
    return ["## Datasets and templates", "", "![datasets](datasets.png)", "",
            _table(["cluster", "dataset", "setting", "format", "metric", "mean [95% interval]",
                    "best (template)", "worst", "std",
                    "templates", "examples", "contaminated train rows removed"], rows), ""]


def variants_section(results: list[dict]) -> list[str]:
    """Each result's mean under every scoring variant."""
    variant_names = sorted({v for r in results for v in r["variants"]})
    return ["### Scoring variants (mean over templates)", "",
            "Rank classification scores prompts with and without the OPTIONS suffix, and each option by "
            "its summed log-likelihood, per token, per character, or as PMI (minus its log-likelihood "
            "after the answer prefix alone).", "",
            _table(["dataset", "setting", *variant_names],
                   [[r["dataset"], _setting(r), *(f"{r['variants'][v]['mean']:.1f}" if v in r["variants"]
                                                  else "-" for v in variant_names)]
                    for r in sorted(results, key=lambda r: (r["dataset"], _setting(r)))]), ""]


def ablation_clusters_section(paths: list[str], labels: list[str] | None, cluster_order: list[str],
                              out_dir: Path, seed: int, resamples: int) -> list[str]:
    """The clusters ablation: each point (by default the model's ``clusters_k``), its figure and table."""
    loaded = _load(paths)
    labels = labels or [r["model"].removeprefix("clusters_") for r in loaded]
    points = ablation_points(loaded, labels)
    cis = ablation_intervals(loaded, labels, "point", seed, resamples)
    plot_ablation_clusters(points, cluster_order, out_dir / "ablation_clusters.png", cis)
    cols = sorted({c for p in points.values() for c in p if c != "average"}) + ["average"]
    return ["## Ablation: number of instruction-tuning clusters", "",
            f"Clusters added in order: {', '.join(cluster_order)}.", "",
            "![clusters ablation](ablation_clusters.png)", "",
            _table(["clusters", *cols, "average: 95% interval"],
                   [[k, *(f"{points[k].get(c, float('nan')):.1f}" for c in cols), _interval(cis.get(k))]
                    for k in sorted(points, key=int)]), ""]


def ablation_format_section(paths: list[str], labels: list[str] | None, formats: list[str], out_dir: Path,
                            seed: int, resamples: int) -> list[str]:
    """The instruction-format ablation: each point (by default the result's folder, ``format/<f>/``),
    its figure and table."""
    loaded = _load(paths)
    # (the labels stay beside the results: a result's own `format` is the token format it was scored in)
    labels = labels or [Path(p).parent.name for p in paths]
    points = ablation_points(loaded, labels)
    cis = ablation_intervals(loaded, labels, "format", seed, resamples)
    plot_ablation_format(points, formats, out_dir / "ablation_format.png", cis)
    cols = sorted({c for p in points.values() for c in p if c != "average"}) + ["average"]
    return ["## Ablation: instruction format", "",
            "Models trained on the same clusters with instructions, with the inputs alone "
            "(`no_template`) or with the dataset's name; all evaluated zero-shot with instructions.", "",
            "![format ablation](ablation_format.png)", "",
            _table(["format", *cols, "average: 95% interval"],
                   [[f, *(f"{points[f].get(c, float('nan')):.1f}" for c in cols), _interval(cis.get(f))]
                    for f in formats if f in points]), ""]


def mixtures_section(catalog: str | Path, out_dir: Path) -> list[str]:
    """Each mixture's examples per cluster, from the catalog, as a figure and a table."""
    rows = composition(catalog)
    plot_composition(rows, out_dir / "mixture_composition.png")
    return ["## Mixtures", "", "![mixture composition](mixture_composition.png)", "",
            _table(["mixture", "cluster", "examples"], [[m, c, str(n)] for m, c, n in rows]), ""]


def _zero_shot_pairs(results_dir: Path) -> dict[str, tuple[dict, dict]]:
    """dataset -> (base, tuned) zero-shot results of one run's ``results/eval``."""
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(results_dir).glob("*/*.json"))]
    return {dataset: (base, tuned) for (_, dataset, few), base, tuned in base_tuned_pairs(results) if not few}


def _same_rows(a: dict, b: dict) -> bool:
    """Whether two results scored the same eval rows in the same order: the same eval file, seed and
    row sample (``evaluate.max_examples``)."""
    return (a["eval_split"]["sha256"] == b["eval_split"]["sha256"] and a["examples"] == b["examples"]
            and a["config"]["seed"] == b["config"]["seed"]
            and a["config"]["evaluate"]["max_examples"] == b["config"]["evaluate"]["max_examples"])


def compare_runs(run_a: str | Path, run_b: str | Path, seed: int = 1234, resamples: int = 1000
                 ) -> list[list[str]]:
    """Two runs of the held-out experiment on the same eval rows (two template banks, two formats,
    two training budgets): per held-out dataset scored by both, each run's tuned minus base and B
    minus A of the tuned models and of the tuned-minus-base gaps, with paired bootstrap 95%
    intervals over the same rows (each model in its own format, averaged over its templates).
    ``run_a``/``run_b``: the workflow's working directories (their ``results/eval``; a run under
    ``experiment.seeds`` keeps its seeds' results in ``seed-<s>/`` folders, which this does not
    read). A dataset whose rows differ between the runs is refused."""
    a_pairs, b_pairs = (_zero_shot_pairs(Path(run) / "results/eval") for run in (run_a, run_b))
    rows = []
    for dataset in sorted(set(a_pairs) & set(b_pairs)):
        (a_base, a_tuned), (b_base, b_tuned) = a_pairs[dataset], b_pairs[dataset]
        if not all(_same_rows(a_base, r) for r in (a_tuned, b_base, b_tuned)):
            raise ValueError(f"{dataset}: the two runs scored different eval rows (eval file, seed or "
                             "evaluate.max_examples differ); their results cannot be paired")
        means = [example_means(r) for r in (a_base, a_tuned, b_base, b_tuned)]
        if any(m is None for m in means):
            continue
        ab, at, bb, bt = means
        cells = [dataset, str(len(ab))]
        for name, x, y in (("a", at, ab), ("b", bt, bb), ("tuned", bt, at), ("gap", bt - bb, at - ab)):
            d = paired_bootstrap(lambda rows, x=x: float(x[rows].mean()),
                                 lambda rows, y=y: float(y[rows].mean()), len(x), resamples,
                                 derive_seed(seed, f"report/compare/{dataset}/{name}"))
            delta = float(x.mean() - y.mean())
            cells.append(f"{delta:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" if d else f"{delta:+.1f}")
        rows.append(cells)
    return rows


COMPARE_HEADER = ["dataset", "rows", "A: tuned - base", "B: tuned - base", "B - A, tuned",
                  "B - A, of tuned - base"]
"""The columns of :func:`compare_runs`' rows."""
