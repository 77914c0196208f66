"""The report: ``results/report/index.md`` and its PNG figures, from the eval results and the catalog.

Figures: the held-out clusters (base vs instruction-tuned, zero-shot and few-shot), every dataset
with its template spread, the ablation curves (training clusters, instruction format), the mixture
composition (from the DuckDB catalog) and the training losses. The Markdown has the tables behind
them. Everything is read from files the workflow wrote; nothing is recomputed.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np

from flanpipe.core.io import atomic_path, write_text_atomic
from flanpipe.core.registry import load_registry

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


def plot_clusters(results: list[dict], out: Path) -> None:
    plt = _plt()
    means = cluster_means(results)
    clusters = list(means)
    labels = [label for _, _, label in SETTINGS if any(label in means[c] for c in clusters)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(clusters), 3.6))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = np.arange(len(clusters)) + i * width
        ys = [means[c].get(label, np.nan) for c in clusters]
        ax.bar(xs, ys, width, label=label, color=COLORS[label])
        for x, y in zip(xs, ys, strict=True):
            if not np.isnan(y):
                ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(clusters)) + width * (len(labels) - 1) / 2, clusters)
    ax.set_ylabel("score (mean over datasets and templates)")
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
            ax.bar(j + i * width, h["mean"], width, color=COLORS[label], label=label if j == 0 else None)
            ax.errorbar(j + i * width, h["mean"], yerr=[[h["mean"] - h["worst"]], [h["best"] - h["mean"]]],
                        color="black", capsize=2, lw=0.8)
    ax.set_xticks(np.arange(len(datasets)) + width * (len(labels) - 1) / 2,
                  [f"{d}\n({next(r['primary'] for r in results if r['dataset'] == d)})" for d in datasets])
    ax.set_ylabel("score (whiskers: worst to best template)")
    ax.set_title("Held-out datasets, every template")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def ablation_points(results: list[dict], key: str) -> dict[str, dict[str, float]]:
    """point (cluster count, or format) -> held-out cluster -> mean score; plus `average`."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        acc[str(r[key])][r["cluster"]].append(r["headline"]["mean"])
    out = {}
    for point, by in acc.items():
        row = {c: float(np.mean(v)) for c, v in sorted(by.items())}
        row["average"] = float(np.mean(list(row.values())))
        out[point] = row
    return out


def plot_ablation_clusters(points: dict[str, dict[str, float]], order: list[str], out: Path) -> None:
    plt = _plt()
    ks = sorted(points, key=int)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = sorted({c for p in points.values() for c in p if c != "average"})
    for c in [*series, "average"]:
        ax.plot([int(k) for k in ks], [points[k].get(c, np.nan) for k in ks], marker="o",
                lw=2.5 if c == "average" else 1.2, label=f"held-out {c}" if c != "average" else "average")
    ax.set_xticks([int(k) for k in ks], [f"{k}\n+{order[int(k) - 1]}" for k in ks], fontsize=7)
    ax.set_xlabel("instruction-tuning clusters (added in order)")
    ax.set_ylabel("zero-shot score")
    ax.set_title("Ablation: number of instruction-tuning clusters")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, out)


def plot_ablation_format(points: dict[str, dict[str, float]], formats: list[str], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ys = [points.get(f, {}).get("average", np.nan) for f in formats]
    ax.bar(formats, ys, color=["#4c72b0" if f == "instructions" else "#999999" for f in formats])
    for x, y in enumerate(ys):
        ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("zero-shot score (average of held-out clusters)")
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
            rows = list(csv.DictReader(f))
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows],
                label=Path(path).parent.name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (target tokens)")
    ax.set_title("Instruction tuning, one model per held-out cluster")
    ax.legend(fontsize=8)
    _save(fig, out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def build_report(zero_shot: list[str], few_shot: list[str], ablation_clusters: list[str],
                 ablation_format: list[str], catalog: str | Path, models: list[str], out_dir: str | Path,
                 cluster_order: list[str], formats: list[str]) -> Path:
    """Write ``out_dir/index.md`` and its figures; returns the Markdown's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _load(zero_shot) + _load(few_shot)
    md = ["# flanpipe report", "",
          "Zero-shot (and few-shot) scores on held-out task clusters: each model never trained on the "
          "cluster it is evaluated on. Scores are the dataset's metric (0-100) per template; a dataset's "
          "score is the mean over its templates, with the best template and the spread beside it.", ""]
    if results:
        plot_clusters(results, out_dir / "heldout_clusters.png")
        plot_datasets(results, out_dir / "datasets.png")
        md += ["## Held-out clusters", "", "![held-out clusters](heldout_clusters.png)", ""]
        means = cluster_means(results)
        labels = [label for _, _, label in SETTINGS if any(label in v for v in means.values())]
        md += [_table(["cluster", *labels], [[c, *(f"{v[s]:.1f}" if s in v else "-" for s in labels)]
                                             for c, v in means.items()]), ""]
        md += ["## Datasets and templates", "", "![datasets](datasets.png)", ""]
        rows = []
        for r in sorted(results, key=lambda r: (r["cluster"], r["dataset"], _setting(r))):
            h = r["headline"]
            rows.append([r["cluster"], r["dataset"], _setting(r), f"{r['metric']} ({r['primary']})",
                         f"{h['mean']:.1f}", f"{h['best']:.1f} (#{h['best_template']})", f"{h['worst']:.1f}",
                         f"{h['std']:.2f}", str(h["templates"]), str(r["examples"]),
                         str(r["contamination"]["removed_rows"])])
        md += [_table(["cluster", "dataset", "setting", "metric", "mean", "best (template)", "worst", "std",
                       "templates", "examples", "contaminated train rows removed"], rows), ""]
        md += ["### Scoring variants (mean over templates)", "",
               "Rank classification scores prompts with and without the OPTIONS suffix, and each option by "
               "its summed log-likelihood, per token or per character.", ""]
        variant_names = sorted({v for r in results for v in r["variants"]})
        md += [_table(["dataset", "setting", *variant_names],
                      [[r["dataset"], _setting(r), *(f"{r['variants'][v]['mean']:.1f}" if v in r["variants"]
                                                     else "-" for v in variant_names)]
                       for r in sorted(results, key=lambda r: (r["dataset"], _setting(r)))]), ""]
    if ablation_clusters:
        points = ablation_points(_load(ablation_clusters), "model")
        points = {k.removeprefix("clusters_"): v for k, v in points.items()}
        plot_ablation_clusters(points, cluster_order, out_dir / "ablation_clusters.png")
        md += ["## Ablation: number of instruction-tuning clusters", "",
               f"Clusters added in order: {', '.join(cluster_order)}.", "",
               "![clusters ablation](ablation_clusters.png)", ""]
        cols = sorted({c for p in points.values() for c in p if c != "average"}) + ["average"]
        md += [_table(["clusters", *cols], [[k, *(f"{points[k].get(c, float('nan')):.1f}" for c in cols)]
                                            for k in sorted(points, key=int)]), ""]
    if ablation_format:
        loaded = _load(ablation_format)
        for r, path in zip(loaded, ablation_format, strict=True):
            r["format"] = Path(path).parent.name
        points = ablation_points(loaded, "format")
        plot_ablation_format(points, formats, out_dir / "ablation_format.png")
        md += ["## Ablation: instruction format", "",
               "Models trained on the same clusters with instructions, with the inputs alone "
               "(`no_template`) or with the dataset's name; all evaluated zero-shot with instructions.", "",
               "![format ablation](ablation_format.png)", ""]
        cols = sorted({c for p in points.values() for c in p if c != "average"}) + ["average"]
        md += [_table(["format", *cols], [[f, *(f"{points[f].get(c, float('nan')):.1f}" for c in cols)]
                                          for f in formats if f in points]), ""]
    rows = composition(catalog)
    plot_composition(rows, out_dir / "mixture_composition.png")
    md += ["## Mixtures", "", "![mixture composition](mixture_composition.png)", "",
           _table(["mixture", "cluster", "examples"], [[m, c, str(n)] for m, c, n in rows]), ""]
    if models:
        plot_losses(models, out_dir / "training_loss.png")
        md += ["## Training", "", "![training loss](training_loss.png)", ""]
    md += ["Every number here comes from `results/eval/**.json`, `results/ablations/**.json` and "
           "`data/catalog.duckdb`.", ""]
    out = out_dir / "index.md"
    write_text_atomic(out, "\n".join(md))
    log.info("report -> %s (%d results)", out, len(results))
    return out
