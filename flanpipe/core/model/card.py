"""The model card of an exported model: ``models/{mixture}/hf/README.md``.

Built with ``huggingface_hub``'s card classes (:class:`~huggingface_hub.ModelCard`,
:class:`~huggingface_hub.ModelCardData`, :class:`~huggingface_hub.EvalResult`), so the YAML
metadata is the Hub's own (``library_name``, ``base_model``, ``datasets``, ``tags`` and, once the
evaluation exists, ``model-index`` with one result per held-out dataset) and
``huggingface_hub.ModelCard.load`` reads it back. The body says:

- the base checkpoint (a pretrained folder, or the new model's architecture and sizes);
- the mixture: its datasets with their clusters, rows and prompt types (zero-/few-shot, with or
  without OPTIONS: the mix stage's counts), the held-out clusters, the template bank;
- the training settings and the tokens seen;
- the held-out evaluation (dataset, shots, metric, mean over templates with its bootstrap interval),
  where ``results/eval/{mixture}/`` exists: ``flanpipe card`` (and ``flanpipe publish``) refresh it;
- each dataset's licence as the registry records it;
- the command that reproduces the model.

The train stage writes the card with every export; ``flanpipe card --model models/nli`` rewrites it
with whatever evaluation exists by then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flanpipe.core.io import write_text_atomic

CARD = "README.md"
PROMPT_TYPES = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
"""The mix stage's prompt-type counts per dataset: zero-/few-shot, with or without OPTIONS."""


@dataclass(frozen=True)
class CardInputs:
    """What a card is written from: the model folder's ``run.json``, the mixture's manifest
    (``data/mixtures/{mixture}/manifest.json``; None where it is not there), the eval results of
    the model (``results/eval/{mixture}/*.json``) and each dataset's registry entry (licence, hub id)."""

    run: dict
    mixture: dict | None = None
    evals: list[dict] = field(default_factory=list)
    licences: dict[str, str | None] = field(default_factory=dict)
    hub_ids: dict[str, str | None] = field(default_factory=dict)


def read_inputs(model_dir: str | Path, mixture_manifest: str | Path | None = None,
                eval_dir: str | Path | None = None) -> CardInputs:
    """The card's inputs for the model folder ``models/{mixture}`` (paths as the workflow lays them
    out, relative to the model folder's grandparent, unless given)."""
    from flanpipe.core.config.registry import load_registry

    model_dir = Path(model_dir)
    run = json.loads((model_dir / "run.json").read_text(encoding="utf-8"))
    root = model_dir.resolve().parent.parent
    mixture_manifest = Path(mixture_manifest or root / "data/mixtures" / run["mixture"] / "manifest.json")
    mixture = json.loads(mixture_manifest.read_text(encoding="utf-8")) if mixture_manifest.is_file() else None
    eval_dir = Path(eval_dir or root / "results/eval" / run["mixture"])
    evals = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(eval_dir.glob("*.json"))]
    registry = load_registry().datasets
    names = mixture["datasets"] if mixture else []
    return CardInputs(run, mixture, [e for e in evals if e.get("model") == run["mixture"]],
                      {n: getattr(registry.get(n), "license", None) for n in names},
                      {n: registry[n].hub.id if n in registry else None for n in names})


def build_card(inputs: CardInputs):
    """The :class:`~huggingface_hub.ModelCard` of a run."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run, mixture = inputs.run, inputs.mixture
    name = f"flanpipe-{run['mixture']}"
    model = run["config"]["train"]["model"]
    base = model["path"] if model["source"] == "pretrained" else None
    results = [EvalResult(task_type="text-generation", task_name=e.get("task", "held-out task"),
                          dataset_type=inputs_hub(e["dataset"], inputs),
                          dataset_name=e.get("paper_name", e["dataset"]),
                          dataset_split=(e.get("eval_split") or {}).get("registry_split"),
                          metric_type=e["primary"], metric_value=round(e["headline"]["mean"], 2),
                          metric_name=f"{e['primary']} ({'few' if e['few_shot'] else 'zero'}-shot)",
                          verified=False)
               for e in inputs.evals]
    data = ModelCardData(
        model_name=name if results else None, library_name="transformers", pipeline_tag="text-generation",
        tags=["flanpipe", "flan", "instruction-tuning"],
        base_model=base if base and "/" in base and not Path(base).exists() else None,
        datasets=sorted({h for h in inputs.hub_ids.values() if h}) or None,
        eval_results=results or None)
    body = "\n\n".join([f"# {name}", _summary(run, mixture), _base(model), _mixture(inputs), _training(run),
                        _evaluation(inputs.evals), _licences(inputs), _reproduce(run)])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def inputs_hub(dataset: str, inputs: CardInputs) -> str:
    """A dataset's hub id where the registry knows it, else its registry name."""
    return inputs.hub_ids.get(dataset) or dataset


def write_card(model_dir: str | Path, mixture_manifest: str | Path | None = None,
               eval_dir: str | Path | None = None, hf_dir: str | Path | None = None) -> Path:
    """Write (or rewrite) ``{model_dir}/hf/README.md`` (``hf_dir``: another export folder) atomically;
    returns its path."""
    card = build_card(read_inputs(model_dir, mixture_manifest, eval_dir))
    path = Path(hf_dir or Path(model_dir) / "hf") / CARD
    write_text_atomic(path, str(card))
    return path


def _summary(run: dict, mixture: dict | None) -> str:
    held = ", ".join(mixture["heldout_clusters"]) if mixture and mixture["heldout_clusters"] else "none"
    return (f"An instruction-tuned model trained by flanpipe on the `{run['mixture']}` "
            f"mixture of FLAN-style templated tasks (held-out clusters: {held}).")


def _base(model: dict) -> str:
    if model["source"] == "pretrained":
        return f"## Base checkpoint\n\n`{model['path']}` (a pretrained checkpoint, fine-tuned)."
    return (f"## Base checkpoint\n\nNone: a new `{model['architecture']}` model, randomly initialised, of "
            f"{model['num_layers']} layers, width {model['hidden_size']}, {model['num_heads']} heads.")


def _mixture(inputs: CardInputs) -> str:
    mixture = inputs.mixture
    if mixture is None:
        return "## Mixture\n\nThe mixture's manifest was not found beside the model; see `run.json`."
    rows = ["| dataset | cluster | rows | " + " | ".join(PROMPT_TYPES) + " |",
            "|---|---|---|" + "---|" * len(PROMPT_TYPES)]
    for s in mixture["stats"]:
        rows.append(f"| {s['dataset']} | {s['cluster']} | {s['sampled']} | "
                    + " | ".join(str(s.get(t, 0)) for t in PROMPT_TYPES) + " |")
    clusters = sorted({s["cluster"] for s in mixture["stats"]})
    held = ", ".join(mixture["heldout_clusters"]) or "none (the `all` mixture)"
    return ("## Mixture\n\n"
            f"{mixture['examples']} rows from {len(mixture['datasets'])} datasets in the clusters "
            f"{', '.join(clusters)}; held out (and decontaminated against): {held}. Each row is one "
            "template of the dataset's FLAN template bank (`flanpipe/data/templates/`), as a zero-shot or "
            "few-shot prompt, with or without an OPTIONS suffix (the prompt types: `zs_opt`, `zs_noopt`, "
            "`fs_opt`, `fs_noopt`).\n\n" + "\n".join(rows))


def _training(run: dict) -> str:
    train = run["config"]["train"]
    batch = run["batch"]
    tokens = run["steps"] * batch["tokens_per_step"]
    return ("## Training\n\n"
            f"| setting | value |\n|---|---|\n"
            f"| steps | {run['steps']} |\n| tokens per step | {batch['tokens_per_step']:,} "
            f"({batch['rows_per_step']} packed rows) |\n| tokens seen | {tokens:,} (packed slots, padding "
            f"included) |\n| optimizer | {train['optimizer']}, lr {train['lr']}, "
            f"warm-up {train['warmup_steps']} |\n"
            f"| precision | {run['precision']} |\n| adapter | {run['adapter']['kind']} |\n"
            f"| parameters | {run['parameters']:,} ({run['trainable_parameters']:,} trained) |\n"
            f"| ranks | {run['world_size']}, ZeRO-{train['zero_stage']} |\n| seed | {run['seed']} |")


def _evaluation(evals: list[dict]) -> str:
    if not evals:
        return ("## Held-out evaluation\n\nNot evaluated yet: `flanpipe card --model models/<name>` adds "
                "the table once `results/eval/<name>/` exists.")
    rows = ["| cluster | dataset | shots | metric | format | mean over templates | 95% interval "
            "| templates |", "|---|---|---|---|---|---|---|---|"]
    for e in sorted(evals, key=lambda e: (e.get("cluster", ""), e["dataset"], e["few_shot"])):
        h = e["headline"]
        ci = h.get("interval")
        interval = f"[{ci['low']:.1f}, {ci['high']:.1f}]" if ci else "-"
        shots = "few" if e["few_shot"] else "zero"
        rows.append(f"| {e.get('cluster', '-')} | {e['dataset']} | {shots}-shot | {e['primary']} | "
                    f"{e.get('format', 'eos')} | {h['mean']:.1f} | {interval} | {h['templates']} |")
    return ("## Held-out evaluation\n\nEach dataset of a cluster the model never trained on, scored on "
            "the templates of its bank (`templates`: how many; `evaluate.max_templates`), the mean over them "
            "with its bootstrap interval over examples.\n\n" + "\n".join(rows))


def _licences(inputs: CardInputs) -> str:
    if not inputs.licences:
        return "## Licences\n\nThe mixture's datasets are not known here."
    rows = ["| dataset | hub id | licence (registry) |", "|---|---|---|"]
    for name in sorted(inputs.licences):
        rows.append(f"| {name} | {inputs.hub_ids.get(name) or '-'} | "
                    f"{inputs.licences[name] or 'not recorded in the registry'} |")
    return ("## Licences\n\nThe model is trained on these datasets; their licences bind its use.\n\n"
            + "\n".join(rows))


def _reproduce(run: dict) -> str:
    commit = (run.get("code") or {}).get("git_commit") or "<commit>"
    return ("## Reproduce\n\n```bash\n"
            f"git checkout {commit}\n"
            f"snakemake --cores 2 models/{run['mixture']}/hf  # the config whose train slice run.json holds\n"
            "```")
