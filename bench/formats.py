"""What the scoring format does to a pretrained model's zero-shot accuracy, beside lm-evaluation-harness.

    flanpipe bench formats --model DIR --data DIR [--datasets arc_easy,boolq] [--rows 50]

For each dataset (a folder of ``DIR/<dataset>/`` in its hub schema, e.g. ``../shared/data/real``), a
seeded sample of ``--rows`` eval rows is scored by the model (any local Hugging Face causal LM folder
flanpipe did not train, e.g. SmolLM2 from ``flanpipe smollm2``) four ways, in the same run:

- **flanpipe, eos**: ``flanpipe.stages.evaluate`` in the training format, ``[BOS] prompt EOS |
  option EOS`` (how flanpipe scored every model before the formats);
- **flanpipe, continuation**: the same prompts in lm-eval's format (the default for such a model);
- **lm-eval, same prompts**: ``lm_eval``'s ``HFLM.loglikelihood`` on the (FLAN prompt, " " + option)
  strings of the first ``--peer-templates`` templates, tokenized by lm-eval itself;
- **lm-eval, its own prompt**: ``HFLM`` on the task's plain prompt as lm-eval's task defines it
  (ARC-Easy ``Question: ...\\nAnswer:``, BoolQ ``passage\\nQuestion: ...?\\nAnswer:`` with ``no`` /
  ``yes``), which has no FLAN template at all.

Accuracies are the mean over templates with the OPTIONS suffix and summed log-likelihood (the
headline), each with its bootstrap 95% interval over the rows; the lm-eval columns are over the
same rows.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from flanpipe.core.config import EvaluateSlice, SourceSpec, parse_config
from flanpipe.core.eval.metrics import bootstrap
from flanpipe.core.text.templates import load_bank, render_template
from flanpipe.stages.download import download_dataset
from flanpipe.stages.evaluate import eval_sample, evaluate_dataset

log = logging.getLogger(__name__)


def native_requests(dataset: str, rows: list[dict]) -> tuple[list[str], list[list[str]], list[int]]:
    """lm-eval's own prompt for the task: (contexts, continuations per row, gold index)."""
    if dataset == "arc_easy":
        keys = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "1": 0, "2": 1, "3": 2, "4": 3, "5": 4}
        return ([f"Question: {r['question']}\nAnswer:" for r in rows],
                [[f" {c}" for c in r["choices"]["text"]] for r in rows],
                [r["choices"]["label"].index(r["answerKey"]) if r["answerKey"] in r["choices"]["label"]
                 else keys[r["answerKey"]] for r in rows])
    if dataset == "boolq":
        return ([f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:" for r in rows],
                [[" no", " yes"] for _ in rows], [int(bool(r["answer"])) for r in rows])
    raise ValueError(f"bench formats: no lm-eval prompt for {dataset}; allowed: arc_easy, boolq")


def _peer_accuracy(peer, contexts: list[str], choices: list[list[str]], gold: list[int]) -> np.ndarray:
    from lm_eval.api.instance import Instance

    pairs = [(c, x) for c, opts in zip(contexts, choices, strict=True) for x in opts]
    requests = [Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)]
    ll = np.array([x for x, _ in peer.loglikelihood(requests, disable_tqdm=True)])
    bounds = np.cumsum([0] + [len(o) for o in choices])
    return np.array([100.0 * (int(np.argmax(ll[bounds[i]:bounds[i + 1]])) == g) for i, g in enumerate(gold)])


def bench_formats(model: str, data: str, datasets: list[str], rows: int = 50, peer_templates: int = 3,
                  threads: int = 2, seed: int = 1234) -> list[dict]:
    import pyarrow.parquet as pq
    import torch
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(threads)
    cfg = EvaluateSlice.of(parse_config({"seed": seed,
                                         "evaluate": {"max_examples": rows, "bootstrap": 1000}}))
    peer = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=8)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            raw = Path(tmp) / dataset
            download_dataset(dataset, SourceSpec(kind="local", path=str(Path(data) / dataset)), raw, seed)
            t0 = time.perf_counter()
            result = evaluate_dataset(dataset, model, raw, Path(tmp) / f"{dataset}.json", cfg, False,
                                      Path(model).name, threads=threads, format_name="eos")
            ours_s = time.perf_counter() - t0
            table = eval_sample(pq.read_table(raw / "eval.parquet"), rows, seed, dataset)
            bank = load_bank()[dataset]
            same = []
            t0 = time.perf_counter()
            for template in bank.eval_templates[:peer_templates]:
                rendered = render_template(bank, template, table, cfg.options)
                options = rendered.options.to_pylist()
                same.append(_peer_accuracy(peer, rendered.inputs.to_pylist(),
                                           [[" " + o for o in opts] for opts in options],
                                           list(rendered.answer_index)))
            same = np.mean(np.stack(same), axis=0)
            contexts, choices, gold = native_requests(dataset, table.to_pylist())
            native = _peer_accuracy(peer, contexts, choices, gold)
            peer_s = time.perf_counter() - t0
            n = table.num_rows

            def interval(values: np.ndarray) -> dict:
                return bootstrap(lambda r, v=values: float(v[r].mean()), len(values), 1000, seed)

            ours_same = {name: float(np.mean(block["example_scores"][:peer_templates], axis=0).mean())
                         for name, block in result["by_format"].items()}
            out.append({
                "dataset": dataset, "rows": n, "templates": result["headline"]["templates"],
                "eos": result["by_format"]["eos"]["headline"],
                "continuation": result["by_format"]["continuation"]["headline"],
                "first_templates": {"templates": peer_templates, **ours_same,
                                    "lm_eval": float(same.mean()), "lm_eval_interval": interval(same)},
                "lm_eval_native": {"accuracy": float(native.mean()), "interval": interval(native)},
                "seconds": {"flanpipe_both_formats": ours_s, "lm_eval": peer_s},
            })
            log.info("%s: %s", dataset, json.dumps(out[-1]["first_templates"]))
    return out


def print_formats(results: list[dict]) -> None:
    def ci(h: dict) -> str:
        i = h.get("interval")
        return f"{h['mean']:.1f} [{i['low']:.1f}, {i['high']:.1f}]" if i else f"{h['mean']:.1f}"

    print("accuracy, mean over templates (OPTIONS suffix, summed log-likelihood), bootstrap 95% interval")
    print("| dataset | rows | templates | flanpipe eos | flanpipe continuation | first k: eos | "
          "first k: continuation | first k: lm-eval | lm-eval's own prompt |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f, n = r["first_templates"], r["lm_eval_native"]
        print(f"| {r['dataset']} | {r['rows']} | {r['templates']} | {ci(r['eos'])} | "
              f"{ci(r['continuation'])} | "
              f"{f['eos']:.1f} | {f['continuation']:.1f} | {f['lm_eval']:.1f} | "
              f"{n['accuracy']:.1f} [{n['interval']['low']:.1f}, {n['interval']['high']:.1f}] |")
    for r in results:
        s = r["seconds"]
        print(f"{r['dataset']}: flanpipe (all templates, both formats, with and without OPTIONS) "
              f"{s['flanpipe_both_formats']:.0f} s; lm-eval ({r['first_templates']['templates']} templates "
              f"with OPTIONS, and its own prompt) {s['lm_eval']:.0f} s")


def run(model: str, data: str, datasets: list[str], rows: int, peer_templates: int, threads: int) -> int:
    """``flanpipe bench formats``."""
    print_formats(bench_formats(model, data, datasets, rows=rows, peer_templates=peer_templates,
                                threads=threads))
    return 0
