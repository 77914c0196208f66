"""The DAG planner: what a config asks the workflow to build. Mixtures (one per held-out cluster,
``all``, the ablations'), the datasets each trains on and is kept clear of, the evaluations, and the
config slice each rule reads. ``rules/common.smk`` calls it; the stages never do (they receive their
slice).

>>> plan = Plan(parse_config({}))
>>> plan.mixtures()
['nli', 'commonsense', 'closed_book_qa', 'all']
"""

from __future__ import annotations

import logging
from typing import Any

from flanpipe.core.config import (  # noqa: F401 (parse_config: doctests)
    BaseModelSlice,
    Config,
    DedupeSlice,
    DownloadSlice,
    EvaluateSlice,
    FingerprintSlice,
    MixSlice,
    PackSlice,
    PoolSlice,
    ReportSlice,
    Slice,
    TemplatizeSlice,
    TokenizerSlice,
    TrainSlice,
    parse_config,
)
from flanpipe.core.config.registry import load_registry
from flanpipe.core.config.slices import SOURCE_READERS

log = logging.getLogger(__name__)

SLICES: dict[str, type[Slice]] = {
    "download": DownloadSlice, "pool": PoolSlice, "templatize": TemplatizeSlice,
    "fingerprint": FingerprintSlice, "dedupe": DedupeSlice, "mix": MixSlice, "tokenizer": TokenizerSlice,
    "pack": PackSlice, "train": TrainSlice, "base_model": BaseModelSlice, "evaluate": EvaluateSlice,
    "report": ReportSlice}
"""Each rule's slice (rules not listed read no config key: decontaminate and catalog take lists the
planner derives)."""


class Plan:
    """The workflow a :class:`~flanpipe.core.config.Config` describes."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        for name, missing in cfg.left_out().items():
            log.warning("%s is left out of this run: its optional source lacks %s", name, ", ".join(missing))

    def slice(self, rule: str, dataset: str | None = None, format: str | None = None,
              mixture: str | None = None, seed: int | None = None) -> dict[str, Any]:
        """The config slice rule ``rule`` reads (its Snakemake ``params``), as JSON-able values: a
        download's is its dataset's source; the format ablation's templatize has its own format; a
        mixture's train, with ``train.eval_every``, the datasets of its curve
        (:meth:`curve_datasets`); a training under one of ``experiment.seeds`` has that ``seed``.

        >>> Plan(parse_config({})).slice("pool")
        {'seed': 1234, 'pool_factor': 4.0, 'cap': 30000}
        >>> Plan(parse_config({})).slice("train", seed=7)["seed"]
        7
        """
        if rule == "download":
            source = self.cfg.download.source_for(dataset)
            reader = SOURCE_READERS.get(source.kind)
            return DownloadSlice(seed=self.cfg.seed, source=source, reader=reader).params()
        if rule == "pool":
            return PoolSlice.of(self.cfg, dataset=dataset).params()
        if rule == "templatize":
            return TemplatizeSlice.of(self.cfg, dataset=dataset, **({"format": format} if format else {})
                                      ).params()
        if rule == "train" and (seed is not None or self.cfg.train.eval_every is not None):
            fields: dict[str, Any] = {} if seed is None else {"seed": seed}
            if mixture is not None and self.cfg.train.eval_every is not None:
                fields["heldout"], fields["validation"] = self.curve_datasets(mixture)
            return TrainSlice.of(self.cfg, **fields).params()
        return SLICES[rule].of(self.cfg).params()

    def curve_datasets(self, mixture: str) -> tuple[list[str], list[str]]:
        """The datasets a mixture's training scores (``train.eval_every``): the held-out ones it is
        evaluated on, and (``train.select: best_val``) the validation ones that choose its
        checkpoint: ``train.val_datasets`` (or every dataset) among those it trains on, never one
        of a cluster any model holds out; each with an eval split whose options can be ranked.

        >>> plan = Plan(parse_config({"train": {"eval_every": 5, "select": "best_val"}}))
        >>> plan.curve_datasets("nli")
        (['rte'], ['sst2', 'boolq', 'winogrande', 'cola', 'ag_news'])
        """
        registry = load_registry()

        def rankable(name: str) -> bool:
            spec = registry.datasets[name]
            return spec.splits.eval is not None and spec.task.type != "generation"

        heldout = [d for d in self.datasets_in(self.heldout_for(mixture)) if rankable(d)]
        if self.cfg.train.select != "best_val":
            return heldout, []
        kept_out = {c for h in self.eval_clusters() for c in registry.excluded_clusters(h)}
        named = self.cfg.train.val_datasets
        validation = [d for d in self.mixture_datasets(mixture) if rankable(d)
                      and (named is None or d in named) and not set(registry.clusters_of(d)) & kept_out]
        if not validation:
            raise ValueError(f"train.val_datasets: mixture {mixture} trains on none of {named} (with an eval "
                             "split and options to rank), so train.select: best_val has nothing to choose "
                             "with; allowed: datasets the mixture trains on")
        return heldout, validation

    def dataset_names(self) -> list[str]:
        """The registry names this run uses, in registry order."""
        return self.cfg.dataset_names()

    def given_tokenizer(self) -> str | None:
        """The tokenizer the run uses as it is, in place: the pretrained checkpoint's folder
        (`tokenize.tokenizer.source: auto`), or `tokenize.tokenizer.path` when that is not a
        SentencePiece `.model` file (a `.model` file is copied to `models/tokenizer/spm.model`);
        None when the run trains its own.

        >>> pretrained = {"model": {"source": "pretrained", "path": "/ckpt/smollm2"}}
        >>> Plan(parse_config({"train": pretrained})).given_tokenizer()
        '/ckpt/smollm2'
        >>> Plan(parse_config({})).given_tokenizer() is None
        True
        """
        tok = self.cfg.tokenize.tokenizer
        if tok.source == "auto" and self.cfg.train.model.source == "pretrained":
            return self.cfg.train.model.path
        if tok.source == "file" and not tok.path.endswith(".model"):
            return tok.path
        return None

    def mixtures(self) -> list[str]:
        """The main mixtures: one per held-out cluster, then `all` (``all_model``)."""
        return [*self.cfg.heldout_clusters, *(["all"] if self.cfg.all_model else [])]

    def _points(self) -> list[str]:
        """Every ablation point's mixture, before reuse: `clusters_k` on the first k of
        `ablations.clusters`, and `format_<f>` on all of them in another instruction format (the
        `instructions` point, or whichever is `templatize.format`, is `clusters_N` itself)."""
        abl = self.cfg.ablations
        if not abl.enabled:
            return []
        n = len(abl.clusters)
        out = [f"clusters_{k}" for k in range(1, n + 1)] if "clusters" in abl.kinds else []
        if "format" in abl.kinds:
            out += [f"format_{f}" for f in abl.formats if f != self.cfg.templatize.format]
            if "clusters" not in abl.kinds and self.cfg.templatize.format in abl.formats:
                out.append(f"clusters_{n}")
        return out

    def _signature(self, mixture: str) -> tuple:
        return (tuple(self.mixture_datasets(mixture)), self.mixture_format(mixture),
                tuple(self.heldout_for(mixture)))

    def model_of(self, mixture: str) -> str:
        """The mixture whose model stands for ``mixture``: a main mixture with the same datasets,
        format and held-out clusters (an ablation point that is a held-out model: the clusters
        ablation's last point when it is a leave-one-out's training set), or ``mixture`` itself.

        >>> abl = {"enabled": True, "heldout": ["nli"], "clusters": ["sentiment", "commonsense"]}
        >>> plan = Plan(parse_config({"datasets": ["rte", "sst2", "copa"], "heldout_clusters": ["nli"],
        ...                           "ablations": abl}))
        >>> plan.model_of("clusters_2"), plan.model_of("clusters_1"), plan.ablation_mixtures()
        ('nli', 'clusters_1', ['clusters_1', 'format_no_template', 'format_dataset_name'])
        """
        if mixture in self.mixtures():
            return mixture
        signature = self._signature(mixture)
        return next((m for m in self.cfg.heldout_clusters if self._signature(m) == signature), mixture)

    def ablation_mixtures(self) -> list[str]:
        """The ablations' mixtures that are built (:meth:`_points` less those a held-out model
        stands for)."""
        return [m for m in self._points() if self.model_of(m) == m]

    def all_mixtures(self) -> list[str]:
        return [*self.mixtures(), *self.ablation_mixtures()]

    def format_mixture(self, fmt: str) -> str:
        """The model of the format ablation's point ``fmt``."""
        if fmt == self.cfg.templatize.format:
            return self.model_of(f"clusters_{len(self.cfg.ablations.clusters)}")
        return self.model_of(f"format_{fmt}")

    def mixture_format(self, mixture: str) -> str:
        """The instruction format a mixture's examples are rendered in."""
        if mixture.startswith("format_"):
            return mixture.removeprefix("format_")
        return self.cfg.templatize.format

    def _ablation_clusters(self, mixture: str) -> list[str] | None:
        if mixture.startswith("clusters_"):
            return self.cfg.ablations.clusters[:int(mixture.removeprefix("clusters_"))]
        if mixture.startswith("format_"):
            return list(self.cfg.ablations.clusters)
        return None

    def mixture_datasets(self, mixture: str) -> list[str]:
        """The run's datasets a mixture trains on (a held-out cluster and the clusters excluded with
        it are left out; an ablation mixture takes its clusters)."""
        if mixture == "all":
            return self.cfg.dataset_names()
        registry = load_registry()
        clusters = self._ablation_clusters(mixture)
        train = set(clusters if clusters is not None else registry.training_clusters(mixture))
        return [d for d in self.cfg.dataset_names() if registry.trains_in(d, train)]

    def heldout_for(self, mixture: str) -> list[str]:
        """The clusters whose eval sets a mixture is decontaminated against (and evaluated on)."""
        if mixture == "all":
            return list(self.cfg.heldout_clusters)
        if self._ablation_clusters(mixture) is not None:
            return list(self.cfg.ablations.heldout)
        return [mixture]

    def eval_clusters(self) -> list[str]:
        """Every cluster some model is evaluated on: the held-out clusters and the ablations'."""
        extra = self.cfg.ablations.heldout if self.cfg.ablations.enabled else []
        return list(dict.fromkeys([*self.cfg.heldout_clusters, *extra]))

    def datasets_in(self, clusters: list[str]) -> list[str]:
        """The run's datasets in ``clusters``, in registry order."""
        registry = load_registry()
        return [d for d in self.cfg.dataset_names() if registry.datasets[d].cluster in clusters]

    def heldout_datasets(self) -> list[str]:
        """The run's datasets in any evaluated cluster (their eval splits are decontaminated against)."""
        return self.datasets_in(self.eval_clusters())

    def templatized_folder(self, mixture: str) -> str:
        """Where a mixture's templatized files are: the run's format, or the format ablation's own."""
        fmt = self.mixture_format(mixture)
        return "data/templatized" if fmt == self.cfg.templatize.format else f"data/templatized/formats/{fmt}"

    def tokenizer_path(self, mixture: str) -> str:
        """The tokenizer a mixture is packed with: a checkpoint's own (or a given ``tokenizer.json``),
        read in place; else the shared SentencePiece model, or the mixture's own."""
        from flanpipe.core.tokens.tokenizers import tokenizer_file

        given = self.given_tokenizer()
        if given is not None:
            return str(tokenizer_file(given))
        tokenizer = self.cfg.tokenize.tokenizer
        if tokenizer.shared or tokenizer.source == "file":
            return "models/tokenizer/spm.model"
        return f"models/tokenizer/{mixture}/spm.model"

    def tokenizer_source(self, mixture: str = "all") -> dict[str, str]:
        """What the ``tokenizer`` rule makes the tokenizer from: a given ``.model`` file, or a
        mixture's shards and manifest (``all`` for the shared tokenizer)."""
        tokenizer = self.cfg.tokenize.tokenizer
        if tokenizer.source == "file":
            return {"model": tokenizer.path}
        return {"shards": f"data/mixtures/{mixture}/shards",
                "mixture_manifest": f"data/mixtures/{mixture}/manifest.json"}

    # --- seeds (experiment.seeds): one training and one evaluation per (model, seed) ---------------

    def seeds(self) -> list[int | None]:
        """The training seeds of each main mixture: ``experiment.seeds``, or ``[None]`` (one training
        with the root seed, in the folders of a run without seeds).

        >>> Plan(parse_config({})).seeds(), Plan(parse_config({"experiment": {"seeds": [3, 1]}})).seeds()
        ([None], [3, 1])
        """
        return list(self.cfg.experiment.seeds or [None])

    def headline_seed(self) -> int | None:
        """The seed whose results stand for a main mixture's model in the tables that take one model
        (the paired table, few-shot, the ablations' reused points): the first of ``experiment.seeds``."""
        return self.seeds()[0]

    @staticmethod
    def model_folder(mixture: str, seed: int | None = None) -> str:
        """A trained model's folder: ``models/<mixture>``, or ``models/<mixture>/seed-<s>`` under a
        training seed.

        >>> Plan.model_folder("nli"), Plan.model_folder("nli", 2)
        ('models/nli', 'models/nli/seed-2')
        """
        return f"models/{mixture}" if seed is None else f"models/{mixture}/seed-{seed}"

    @staticmethod
    def result_path(heldout: str, dataset: str, seed: int | None = None, few_shot: bool = False) -> str:
        """A held-out model's result file: ``results/eval/<cluster>/<dataset>.json``, or
        ``results/eval/<cluster>/seed-<s>/<dataset>.json`` under a training seed.

        >>> Plan.result_path("nli", "rte"), Plan.result_path("nli", "rte", 2, few_shot=True)
        ('results/eval/nli/rte.json', 'results/eval/nli/seed-2/rte.few_shot.json')
        """
        folder = f"results/eval/{heldout}" if seed is None else f"results/eval/{heldout}/seed-{seed}"
        return f"{folder}/{dataset}{'.few_shot.json' if few_shot else '.json'}"

    def model_folders(self) -> list[str]:
        """Every main mixture's model folder, one per training seed (the ablations' own models train
        once, with the root seed, and are built through their results)."""
        return [self.model_folder(m, s) for m in self.mixtures() for s in self.seeds()]

    def seed_results(self) -> list[tuple[int, str, str, str]]:
        """Every held-out model's zero-shot result under each of ``experiment.seeds``, as (seed,
        cluster, dataset, result file); none without seeds.

        >>> plan = Plan(parse_config({"heldout_clusters": ["nli"], "datasets": ["rte", "sst2"],
        ...                           "experiment": {"seeds": [1, 2]}}))
        >>> [path for _, _, _, path in plan.seed_results()]
        ['results/eval/nli/seed-1/rte.json', 'results/eval/nli/seed-2/rte.json']
        """
        if self.cfg.experiment.seeds is None:
            return []
        return [(seed, heldout, dataset, self.result_path(heldout, dataset, seed))
                for heldout in self.cfg.heldout_clusters for dataset in self.datasets_in([heldout])
                for seed in self.cfg.experiment.seeds]

    def eval_results(self, few_shot: bool = False) -> list[str]:
        """Every held-out cluster's result files (tuned, and the base model's if configured); under
        ``experiment.seeds``, the tuned models' of the headline seed (:meth:`headline_seed`; the
        other seeds' are :meth:`seed_results`).

        >>> Plan(parse_config({"heldout_clusters": ["nli"], "datasets": ["rte", "sst2"]})).eval_results()
        ['results/eval/nli/rte.json', 'results/eval/base/rte.json']
        """
        if few_shot and not self.cfg.evaluate.few_shot:
            return []
        suffix = ".few_shot.json" if few_shot else ".json"
        out = [self.result_path(heldout, dataset, self.headline_seed(), few_shot)
               for heldout in self.cfg.heldout_clusters for dataset in self.datasets_in([heldout])]
        if self.cfg.evaluate.base_model:
            out += [f"results/eval/base/{dataset}{suffix}"
                    for dataset in self.datasets_in(self.cfg.heldout_clusters)]
        return out

    def ablation_points(self, kind: str) -> list[tuple[str, str, str]]:
        """One ablation's points as (point, dataset, result file): ``clusters`` (a point per number
        of training clusters) or ``format`` (one per instruction format). A point a held-out model
        stands for reads that model's own result (:meth:`model_of`): nothing is scored twice."""
        abl = self.cfg.ablations
        if not abl.enabled or kind not in abl.kinds:
            return []
        datasets = self.datasets_in(abl.heldout)
        if kind == "clusters":
            points = [(str(k), f"clusters_{k}") for k in range(1, len(abl.clusters) + 1)]
            own = "results/ablations/clusters/{point}/{dataset}.json"
        else:
            points = [(f, self.format_mixture(f)) for f in abl.formats]
            own = "results/ablations/format/{point}/{dataset}.json"
        n = len(abl.clusters)
        out = []
        for point, mixture in points:
            model = self.model_of(mixture)
            for d in datasets:
                if model in self.mixtures():
                    path = self.result_path(model, d, self.headline_seed())
                elif kind == "format" and model == f"clusters_{n}" and "clusters" in abl.kinds:
                    path = f"results/ablations/clusters/{n}/{d}.json"  # the clusters ablation's last point
                else:
                    path = own.format(point=point, dataset=d)
                out.append((point, d, path))
        return out

    def ablation_results(self, kind: str) -> list[str]:
        """The result files of one ablation (:meth:`ablation_points`)."""
        return [path for _, _, path in self.ablation_points(kind)]
