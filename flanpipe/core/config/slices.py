"""The stages' slices. Each stage function takes one of these, and nothing else of the config: the
keys it reads. Each rule passes exactly that slice as its ``params`` (which rule takes which slice is
the workflow's: :data:`flanpipe.workflow.planner.SLICES`), so Snakemake reruns a rule when, and only
when, a key it reads changes. A slice's fields take their types from the sections they slice (the
aliases of :mod:`flanpipe.core.config.sections`), never restating them."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, StrictFloat

from flanpipe.core.config.root import Config
from flanpipe.core.config.sections import (
    EvaluateConfig,
    FewShotConfig,
    MixConfig,
    ModelKind,
    ModelSpec,
    NearDedupeConfig,
    OptionsStyle,
    Packer,
    PromptMix,
    SourceSpec,
    TemplateBank,
    TemplateFormat,
    TokenizerSource,
    TrainConfig,
    TrainFormat,
    Truncation,
    _Section,
)

# Each stage function takes one of these, and nothing else of the config: the keys it reads. Each rule
# passes exactly that slice as its `params` (flanpipe.workflow.planner.Plan.slice), so Snakemake reruns a
# rule when, and only when, a key it reads changes.


class Slice(_Section):
    """The config keys one stage reads. ``KEYS`` maps each field to its path in :class:`Config`."""

    KEYS: ClassVar[dict[str, str]] = {}
    QUIET_DEFAULTS: ClassVar[tuple[str, ...]] = ()
    """Fields left out of :meth:`params` while they hold their default: keys added after runs
    existed, so that adding them changed no finished job's params (Snakemake would rerun it)."""

    def params(self) -> dict[str, Any]:
        """The slice as a rule's ``params``: JSON-able values, quiet defaults left out (a stage
        rebuilds the slice with ``model_validate``, which puts them back)."""
        out = self.model_dump(mode="json")
        for name in self.QUIET_DEFAULTS:
            if getattr(self, name) == type(self).model_fields[name].default:
                out.pop(name)
        return out

    @classmethod
    def of(cls, cfg: Config, **overrides: Any) -> Slice:
        """The slice's values in ``cfg`` (``overrides`` replace fields, e.g. the format ablation's
        own ``format``)."""
        values: dict[str, Any] = {}
        for name, path in cls.KEYS.items():
            value: Any = cfg
            for part in path.split("."):
                value = getattr(value, part)
            values[name] = value
        return cls.model_validate({**values, **overrides})

    @classmethod
    def paths(cls) -> list[str]:
        """The config keys (dotted paths) the slice holds."""
        return list(cls.KEYS.values())


SOURCE_READERS = {"niv2": "2"}
"""The version of a source kind's reader where its rows changed after the kind shipped (``niv2``
2: the cap per task is a seeded draw by instance id, no longer the first instances in file order,
and ``exemplars`` is the list of the task's Positive Examples, no longer one block of them all).
It goes into the download params of that kind's datasets alone, so the change reruns their
downloads and no other dataset's (a download ``STAGE_VERSION`` bump would rerun every one)."""


class DownloadSlice(Slice):
    """download: one dataset's source (``download.sources.<dataset>``, or ``download.default_source``
    with, for ``local``, ``download.local_root``)."""

    KEYS: ClassVar[dict[str, str]] = {"seed": "seed"}  # + the dataset's source (Plan.slice)
    QUIET_DEFAULTS: ClassVar[tuple[str, ...]] = ("reader",)
    seed: int
    source: SourceSpec
    reader: str | None = None
    """The source kind's reader version, :data:`SOURCE_READERS` (not a config key)."""

    @classmethod
    def paths(cls) -> list[str]:
        return ["seed", "download.default_source", "download.sources", "download.local_root"]


class PoolSlice(Slice):
    """pool: the rows a dataset's pool keeps (``cap``: the cap of the dataset's submixture, so a
    large cap of one group, dialog's 200k, does not widen every dataset's pool; without a dataset,
    the largest of any submixture's caps)."""

    KEYS: ClassVar[dict[str, str]] = {"seed": "seed", "pool_factor": "dedupe.pool_factor",
                                      "cap": "mix.largest_cap"}
    seed: int
    pool_factor: StrictFloat | None
    cap: int

    @classmethod
    def of(cls, cfg: Config, dataset: str | None = None, **overrides: Any) -> PoolSlice:
        """The slice for ``dataset`` (its submixture's cap), or the largest cap without one.

        >>> from flanpipe.core.config import parse_config
        >>> cfg = parse_config({"mix": {"submixtures": {"small": {"datasets": ["rte"], "cap": 10},
        ...                                             "big": {"cap": 200000}}}})
        >>> PoolSlice.of(cfg, "rte").cap, PoolSlice.of(cfg, "copa").cap, PoolSlice.of(cfg).cap
        (10, 200000, 200000)
        """
        group = cfg.mix.submixture_of(dataset) if dataset else None
        cap = {"cap": cfg.mix.groups()[group].cap} if group else {}
        return super().of(cfg, **{**cap, **overrides})

    @classmethod
    def paths(cls) -> list[str]:
        return ["seed", "dedupe.pool_factor", "mix.cap", "mix.submixtures"]


class TemplatizeSlice(Slice):
    """templatize: how one dataset's examples are rendered: its template mix (``templatize.mix``
    resolved for the dataset and its submixture) and, only where that mix has few-shot rows,
    ``templatize.few_shot`` (otherwise evaluation's alone, and null here)."""

    KEYS: ClassVar[dict[str, str]] = {
        "seed": "seed", "format": "templatize.format", "options": "templatize.options",
        "passes": "templatize.passes", "cut_long_field": "templatize.cut_long_field",
        "chars_per_token": "templatize.chars_per_token", "max_input_tokens": "tokenize.max_input_tokens",
        "bank": "templatize.bank", "flan_root": "templatize.flan_root"}
    QUIET_DEFAULTS: ClassVar[tuple[str, ...]] = ("bank", "flan_root")
    seed: int
    format: TemplateFormat
    bank: TemplateBank = "flanpipe"
    flan_root: str | None = None
    options: OptionsStyle
    passes: int
    cut_long_field: bool
    chars_per_token: float
    max_input_tokens: int | None
    mix: PromptMix = Field(default_factory=PromptMix)
    few_shot: FewShotConfig | None = None

    @classmethod
    def of(cls, cfg: Config, dataset: str | None = None, **overrides: Any) -> TemplatizeSlice:
        """The slice for ``dataset`` (None: the template mix's default rates)."""
        group = cfg.mix.submixture_of(dataset) if dataset else None
        mix = cfg.templatize.mix.for_dataset(dataset or "", group)
        few_shot = cfg.templatize.few_shot if mix.few_shot else None
        return super().of(cfg, **{"mix": mix, "few_shot": few_shot, **overrides})

    @classmethod
    def paths(cls) -> list[str]:
        return [*cls.KEYS.values(), "templatize.mix", "mix.submixtures"]  # + few_shot, see above


class FingerprintSlice(Slice):
    """fingerprint: MinHash signatures of the pool, n-grams of the eval split."""

    KEYS: ClassVar[dict[str, str]] = {
        "seed": "seed", "shingle": "dedupe.near.shingle", "num_perm": "dedupe.near.num_perm",
        "ngram": "decontaminate.ngram", "min_ngram": "decontaminate.min_ngram"}
    seed: int
    shingle: int
    num_perm: int
    ngram: int
    min_ngram: int


class DedupeSlice(Slice):
    """dedupe: which fingerprints count as duplicates."""

    KEYS: ClassVar[dict[str, str]] = {"seed": "seed", "exact": "dedupe.exact", "near": "dedupe.near"}
    seed: int
    exact: bool
    near: NearDedupeConfig


class MixSlice(Slice):
    """mix: cap, rates and shards of a mixture, and the budget its epochs are counted against."""

    KEYS: ClassVar[dict[str, str]] = {
        "seed": "seed", "mix": "mix", "pool_factor": "dedupe.pool_factor",
        "decontaminate": "decontaminate.enabled", "max_input_tokens": "tokenize.max_input_tokens",
        "max_target_tokens": "tokenize.max_target_tokens", "steps": "train.steps",
        "tokens_per_batch": "train.tokens_per_batch"}
    seed: int
    mix: MixConfig
    pool_factor: StrictFloat | None
    decontaminate: bool
    max_input_tokens: int
    max_target_tokens: int
    steps: int
    tokens_per_batch: int


class TokenizerSlice(Slice):
    """tokenizer: the SentencePiece model a run trains (or copies)."""

    KEYS: ClassVar[dict[str, str]] = {"seed": "seed", "tokenizer": "tokenize.tokenizer"}
    seed: int
    tokenizer: TokenizerSource


class _FormatResolved(Slice):
    """A slice whose ``format`` is ``tokenize.format`` resolved for ``train.model.source``
    (:meth:`TokenizeConfig.format_for`): it holds both keys."""

    @classmethod
    def of(cls, cfg: Config, **overrides: Any) -> Slice:
        return super().of(cfg, **{"format": cfg.tokenize.format_for(cfg.train.model.source), **overrides})

    @classmethod
    def paths(cls) -> list[str]:
        return [*super().paths(), "tokenize.format", "train.model.source"]


class PackSlice(_FormatResolved):
    """pack: the token format, the model kind and the packer (not the tokenizer: pack reads its file)."""

    KEYS: ClassVar[dict[str, str]] = {
        "seed": "seed", **{k: f"tokenize.{k}" for k in (
            "add_bos", "max_input_tokens", "max_target_tokens", "truncate_inputs", "model_kind", "packer",
            "pack_window", "rows_per_shard", "max_truncated_fraction")},
        "steps": "train.steps", "tokens_per_batch": "train.tokens_per_batch",
        "separator": "tokenize.separator"}
    seed: int
    add_bos: bool | None
    max_input_tokens: int
    max_target_tokens: int
    truncate_inputs: Truncation
    model_kind: ModelKind
    format: TrainFormat
    """``tokenize.format`` resolved for ``train.model.source`` (see :meth:`TokenizeConfig.format_for`)."""
    separator: str
    packer: Packer
    pack_window: int
    rows_per_shard: int
    max_truncated_fraction: float = 1.0
    steps: int
    tokens_per_batch: int


class TrainSlice(Slice):
    """train: the run; with ``train.eval_every``, also how its held-out curve scores (evaluate's
    slice) and on which datasets (the planner's, for the mixture)."""

    KEYS: ClassVar[dict[str, str]] = {"seed": "seed", "train": "train"}
    QUIET_DEFAULTS: ClassVar[tuple[str, ...]] = ("evaluate", "heldout", "validation")
    QUIET_TRAIN: ClassVar[tuple[str, ...]] = ("eval_every", "eval_rows", "select", "val_datasets")
    """``train`` keys left out of :meth:`params` while they hold their default (added after runs existed)."""
    seed: int
    train: TrainConfig
    evaluate: EvaluateSlice | None = None
    """With ``train.eval_every``: the evaluate stage's slice, so a curve point is scored as the final
    evaluation scores (templates, normalization, OPTIONS suffix, token budgets)."""
    heldout: list[str] = Field(default_factory=list)
    """With ``train.eval_every``: the held-out datasets the curve scores (those with options to rank)."""
    validation: list[str] = Field(default_factory=list)
    """With ``train.select: best_val``: the training datasets whose eval slices choose the checkpoint."""

    @classmethod
    def of(cls, cfg: Config, **overrides: Any) -> Slice:
        """The slice of ``cfg``; with ``train.eval_every``, evaluate's slice beside it (the datasets
        are the planner's: ``overrides``)."""
        curve = {"evaluate": EvaluateSlice.of(cfg)} if cfg.train.eval_every is not None else {}
        return super().of(cfg, **{**curve, **overrides})

    def params(self) -> dict[str, Any]:
        out = super().params()
        for name in self.QUIET_TRAIN:
            if getattr(self.train, name) == TrainConfig.model_fields[name].default:
                out["train"].pop(name)
        return out


class BaseModelSlice(Slice):
    """base_model: the untuned model of the run's architecture (or its pretrained checkpoint)."""

    KEYS: ClassVar[dict[str, str]] = {
        "seed": "seed", "model": "train.model", "max_input_tokens": "tokenize.max_input_tokens",
        "max_target_tokens": "tokenize.max_target_tokens"}
    seed: int
    model: ModelSpec
    max_input_tokens: int
    max_target_tokens: int


class EvaluateSlice(_FormatResolved):
    """evaluate: scoring, prompts (OPTIONS style, few-shot) and the prompts' token format."""

    KEYS: ClassVar[dict[str, str]] = {
        "seed": "seed", "evaluate": "evaluate", "options": "templatize.options",
        "few_shot": "templatize.few_shot", "cut_long_field": "templatize.cut_long_field",
        "bank": "templatize.bank", "flan_root": "templatize.flan_root",
        **{k: f"tokenize.{k}" for k in (
            "add_bos", "max_input_tokens", "max_target_tokens", "truncate_inputs", "separator")}}
    QUIET_DEFAULTS: ClassVar[tuple[str, ...]] = ("bank", "flan_root")
    seed: int
    evaluate: EvaluateConfig
    options: OptionsStyle
    few_shot: FewShotConfig
    cut_long_field: bool = True
    bank: TemplateBank = "flanpipe"
    """The template bank evaluation renders prompts with: the one training used."""
    flan_root: str | None = None
    add_bos: bool | None
    max_input_tokens: int
    max_target_tokens: int
    truncate_inputs: Truncation
    separator: str = "\n"
    format: TrainFormat = "eos"
    """The run's training format (``tokenize.format`` resolved): the format a model is scored in
    beside its own (``evaluate.cross_formats``), and a ``text`` override's separator."""


class ReportSlice(Slice):
    """report: the order of the ablations' points, and the paired bootstrap's seed and resamples."""

    KEYS: ClassVar[dict[str, str]] = {"clusters": "ablations.clusters", "formats": "ablations.formats",
                                      "seed": "seed", "bootstrap": "evaluate.bootstrap"}
    clusters: list[str]
    formats: list[TemplateFormat]
    seed: int = 1234
    bootstrap: int = 1000


TrainSlice.model_rebuild()  # (its evaluate field's class is defined after it)
