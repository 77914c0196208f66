"""The root of the config, :class:`Config`: the sections together, and the checks that read more
than one section (held-out clusters against the registry, the tokenizer against the checkpoint, the
format against the model) or a checkpoint folder on disk (:mod:`flanpipe.core.config.checkpoints`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from flanpipe.core.config.checkpoints import (
    ENCODER_DECODER_ARCHITECTURES,
    folder_has_chat_template,
    folder_is_encoder_decoder,
)
from flanpipe.core.config.registry import (
    RegistryError,
    embedded_datasets,
    load_registry,
    use_extra_registries,
)
from flanpipe.core.config.sections import (
    AblationsConfig,
    DecontaminateConfig,
    DedupeConfig,
    DownloadConfig,
    EvaluateConfig,
    ExperimentConfig,
    MixConfig,
    RegistryConfig,
    TemplatizeConfig,
    TokenizeConfig,
    TrainConfig,
    _Section,
)

RENAMED = {"dedup": "dedupe", "tokenize.layout": "tokenize.model_kind",
           "evaluate.cross_layouts": "evaluate.cross_formats"}
"""Keys that were renamed, old to new: a config that still uses an old key is refused with an error
that names its new one."""


def renamed_keys(data: dict[str, Any]) -> list[str]:
    """Each old key of :data:`RENAMED` that ``data`` holds, as ``old: renamed to new``.

    >>> renamed_keys({"tokenize": {"layout": "decoder_only"}, "dedup": {}})
    ['dedup: renamed to dedupe', 'tokenize.layout: renamed to tokenize.model_kind']
    """
    found = []
    for old, new in RENAMED.items():
        section, _, key = old.rpartition(".")
        parent = data.get(section) if section else data
        if isinstance(parent, dict) and key in parent:
            found.append(f"{old}: renamed to {new}")
    return found


class Config(_Section):
    """The whole flanpipe config. Every stage reads only its own section."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    """The registry's extra datasets and clusters (read first: every other key is checked against
    the registry it makes)."""
    seed: StrictInt = Field(1234, ge=0, le=2**31 - 1)
    """The one seed of a run; each stage and dataset derives its own from it (seed + crc32(name))."""
    datasets: Literal["embedded", "all"] | list[str] = "embedded"
    """Datasets this run uses: `embedded` (those with demo data in the package), `all` (the whole
    registry: needs `download.default_source: hub` or local files) or a list of registry names."""
    heldout_clusters: list[str] = Field(
        default_factory=lambda: ["nli", "commonsense", "closed_book_qa"])
    """Clusters to hold out, one instruction-tuned model each (leave-one-cluster-out)."""
    all_model: bool = True
    """Also train `all`, one model on every dataset with nothing held out (the one to use and
    export). The held-out protocol needs only the per-cluster models."""
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    templatize: TemplatizeConfig = Field(default_factory=TemplatizeConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ablations: AblationsConfig = Field(default_factory=AblationsConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_keys(cls, data: Any) -> Any:
        found = renamed_keys(data) if isinstance(data, dict) else []
        if found:
            raise ValueError("; ".join(found))
        return data

    @model_validator(mode="before")
    @classmethod
    def _activate_registry(cls, data: Any) -> Any:
        """Make ``registry.extra`` the process's registry before any key is checked against it."""
        section = data.get("registry") if isinstance(data, dict) else None
        extra = section.get("extra") if isinstance(section, dict) else None
        entries = extra if isinstance(extra, list) and all(isinstance(e, str) for e in extra) else []
        try:
            use_extra_registries(entries)
        except RegistryError as err:
            raise ValueError(f"registry.extra: {err}") from None
        return data

    @field_validator("datasets")
    @classmethod
    def _known_dataset_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            known = load_registry().datasets
            unknown = [d for d in value if d not in known]
            if unknown:
                raise ValueError(f"unknown dataset(s) {unknown}; allowed: 'embedded', 'all' or "
                                 "registry names (see `flanpipe datasets`)")
            if not value:
                raise ValueError("the dataset list is empty")
        return value

    @field_validator("heldout_clusters")
    @classmethod
    def _known_clusters(cls, value: list[str]) -> list[str]:
        clusters = list(load_registry().clusters)
        unknown = [c for c in value if c not in clusters]
        if unknown:
            raise ValueError(f"unknown cluster(s) {unknown}; allowed: {clusters}")
        if len(set(value)) != len(value):
            raise ValueError("a cluster is listed twice")
        return value

    @model_validator(mode="after")
    def _sources_are_usable(self) -> Config:
        embedded = set(embedded_datasets())
        for name in self.dataset_names():
            if self.download.source_for(name).kind == "embedded" and name not in embedded:
                raise ValueError(
                    f"download.sources.{name}.kind: dataset {name!r} is used with the embedded "
                    f"source but has no embedded demo data (embedded: {sorted(embedded)}); "
                    "allowed for it: 'hub' or 'local'")
        return self

    @model_validator(mode="after")
    def _every_mixture_has_data(self) -> Config:
        """A held-out cluster needs a dataset of this run to be evaluated on, and its mixture (every
        cluster but the held-out one and those it excludes) a dataset to train on."""
        registry = load_registry()
        names = self.dataset_names()
        used = {registry.datasets[d].cluster for d in names}
        for cluster in self.heldout_clusters:
            if cluster not in used:
                raise ValueError(f"heldout_clusters: {cluster!r} has no dataset among this run's datasets, "
                                 f"so its model would be evaluated on nothing; allowed: clusters of the "
                                 f"run's datasets {sorted(used)}")
            left_out = {cluster, *registry.excluded_clusters(cluster)}
            if not any(registry.trains_in(d, set(registry.clusters) - left_out) for d in names):
                raise ValueError(f"heldout_clusters: holding out {cluster!r} (with {sorted(left_out)}) "
                                 f"leaves its mixture no dataset to train on; add datasets of other "
                                 f"clusters to 'datasets'")
        return self

    @model_validator(mode="after")
    def _ablations_fit(self) -> Config:
        abl = self.ablations
        registry = load_registry()
        for key, names in (("heldout", abl.heldout), ("clusters", abl.clusters)):
            unknown = [c for c in names if c not in registry.clusters]
            if unknown:
                raise ValueError(f"ablations.{key}: unknown cluster(s) {unknown}; allowed: "
                                 f"{list(registry.clusters)}")
            if len(set(names)) != len(names):
                raise ValueError(f"ablations.{key}: a cluster is listed twice")
        if abl.enabled and not abl.clusters:
            raise ValueError("ablations.clusters: list at least one training cluster (or set "
                             "ablations.enabled: false)")
        excluded = {c for h in abl.heldout for c in registry.excluded_clusters(h)}
        clash = [c for c in abl.clusters if c in excluded]
        if clash:
            raise ValueError(f"ablations.clusters: {clash} are held out (or excluded with a held-out "
                             f"cluster) by ablations.heldout {abl.heldout}")
        if len(set(abl.formats)) != len(abl.formats):
            raise ValueError("ablations.formats: a format is listed twice")
        if abl.enabled:
            used = {registry.datasets[d].cluster for d in self.dataset_names()}
            empty = [c for c in [*abl.heldout, *abl.clusters] if c not in used]
            if empty:
                raise ValueError(f"ablations: the run has no dataset in cluster(s) {empty}; allowed: "
                                 f"clusters of the run's datasets {sorted(used)} (or set "
                                 "ablations.enabled: false)")
        return self

    @model_validator(mode="after")
    def _validation_is_not_heldout(self) -> Config:
        """``train.val_datasets`` chooses a checkpoint: never with a dataset that some model holds
        out (a ``heldout_clusters`` cluster, the ablations' when they are on, or a cluster excluded
        with one), and only datasets whose options can be ranked on an eval split."""
        names = self.train.val_datasets
        if names is None:
            return self
        registry = load_registry()
        unknown = [d for d in names if d not in registry.datasets]
        if unknown:
            raise ValueError(f"train.val_datasets: unknown dataset(s) {unknown}; allowed: registry names of "
                             "the run's training datasets")
        heldout = [*self.heldout_clusters, *(self.ablations.heldout if self.ablations.enabled else [])]
        for name in names:
            for cluster in heldout:
                hit = set(registry.clusters_of(name)) & set(registry.excluded_clusters(cluster))
                if hit:
                    why = "" if cluster in hit else f" (excluded with held-out {cluster})"
                    raise ValueError(f"train.val_datasets: {name} is in held-out cluster {sorted(hit)[0]}"
                                     f"{why}; a held-out dataset never chooses a checkpoint. Allowed: "
                                     "datasets of the training clusters")
            spec = registry.datasets[name]
            if spec.splits.eval is None or spec.task.type == "generation":
                raise ValueError(f"train.val_datasets: {name} has no eval split with options to rank "
                                 f"({spec.task.type}); allowed: classification or multiple-choice "
                                 "datasets with an eval split")
        return self

    @model_validator(mode="after")
    def _tokenizer_follows_checkpoint(self) -> Config:
        tok, spec = self.tokenize.tokenizer, self.train.model
        if spec.source != "pretrained":
            return self
        if tok.source == "train":
            raise ValueError(
                "tokenize.tokenizer.source: 'train' with train.model.source 'pretrained' would fine-tune "
                f"the checkpoint {spec.path} on ids of a new tokenizer that mean nothing to it; allowed: "
                "'auto' (the checkpoint's own tokenizer, read from train.model.path)")
        if tok.source == "file" and not _inside(tok.path, spec.path):
            raise ValueError(
                f"tokenize.tokenizer.path: {tok.path} is not the tokenizer of the checkpoint "
                f"train.model.path ({spec.path}); a pretrained checkpoint is fine-tuned with its own "
                "tokenizer only: set tokenize.tokenizer.source to 'auto' (or path to the checkpoint "
                "folder or a tokenizer file in it)")
        return self

    @model_validator(mode="after")
    def _chat_needs_checkpoint(self) -> Config:
        if self.tokenize.format != "chat":
            return self
        spec = self.train.model
        if spec.source != "pretrained":
            raise ValueError(
                "tokenize.format: chat renders examples through a pretrained checkpoint's chat template, "
                "and train.model.source 'config' trains a model from scratch on flanpipe's own "
                "SentencePiece tokenizer, which has none; allowed with source 'config': eos, text, auto")
        if folder_has_chat_template(spec.path) is False:
            raise ValueError(
                f"tokenize.format: chat, but the checkpoint train.model.path ({spec.path}) has no chat "
                "template (no chat_template.jinja, chat_template.json or tokenizer_config.json "
                "chat_template): a base checkpoint; allowed with it: eos, text, auto")
        return self

    @model_validator(mode="after")
    def _model_kind_follows_model(self) -> Config:
        spec, model_kind = self.train.model, self.tokenize.model_kind
        if spec.source == "config":
            key, value = "train.model.architecture", spec.architecture
            encoder_decoder = spec.architecture in ENCODER_DECODER_ARCHITECTURES
        else:
            key, value = "train.model.path", spec.path
            encoder_decoder = folder_is_encoder_decoder(spec.path)
            if encoder_decoder is None:  # no readable config.json yet: the train stage names the folder
                return self
        wanted = "encoder_decoder" if encoder_decoder else "decoder_only"
        if model_kind != wanted:
            kind = "an encoder-decoder" if encoder_decoder else "a decoder-only model"
            raise ValueError(f"tokenize.model_kind: {model_kind!r}, but {key} ({value}) is {kind}, which "
                             f"trains on {wanted!r} rows; allowed: tokenize.model_kind: {wanted} (or another "
                             f"{key.rsplit('.', 1)[-1]})")
        return self

    @model_validator(mode="after")
    def _few_shot_fits_inputs(self) -> Config:
        few, budget = self.templatize.few_shot.max_tokens, self.tokenize.max_input_tokens
        if few is not None and few > budget:
            raise ValueError(f"templatize.few_shot.max_tokens ({few}) exceeds tokenize.max_input_tokens "
                             f"({budget}): a few-shot prompt would be cut after it was fitted; allowed: "
                             f"at most {budget}")
        return self

    @model_validator(mode="after")
    def _mixes_name_known_groups(self) -> Config:
        """Every run dataset in one submixture, every listed one in the run; template-mix overrides
        keyed by a dataset or a submixture; few-shot rows with exemplars to show."""
        names, groups, left_out = self.dataset_names(), self.mix.groups(), self.left_out()
        for group, sub in groups.items():  # a dataset left out for its absent files may stay listed
            missing = [] if sub.datasets == "all" else [d for d in sub.datasets
                                                        if d not in names and d not in left_out]
            if missing:
                raise ValueError(f"mix.submixtures.{group}.datasets: {missing} are not among the run's "
                                 f"datasets; allowed: names in 'datasets' ({names})")
        homeless = [d for d in names if self.mix.submixture_of(d) is None]
        if homeless:
            raise ValueError(f"mix.submixtures: the run's dataset(s) {homeless} are in no submixture; "
                             "allowed: list them in one, or give one group 'datasets: all'")
        mix = self.templatize.mix
        unknown = [k for k in mix.overrides if k not in groups and k not in load_registry().datasets]
        if unknown:
            raise ValueError(f"templatize.mix.overrides: unknown key(s) {unknown}; allowed: registry "
                             f"dataset names or submixtures ({sorted(groups)})")
        few = [d for d in names if mix.for_dataset(d, self.mix.submixture_of(d)).few_shot]
        if few and self.templatize.few_shot.k == 0:
            raise ValueError(f"templatize.few_shot.k: 0, but templatize.mix renders {few} few-shot; "
                             "allowed: k >= 1 (or fs_opt and fs_noopt 0)")
        return self

    @model_validator(mode="after")
    def _bands_fit(self) -> Config:
        near = self.dedupe.near
        if near.bands is not None and near.bands > near.num_perm:
            raise ValueError(f"dedupe.near.bands: {near.bands} bands need at least as many permutations "
                             f"(dedupe.near.num_perm is {near.num_perm})")
        return self

    def dataset_names(self) -> list[str]:
        """The registry names this run uses, in registry order: those asked for, less those whose
        optional source is absent (:meth:`left_out`)."""
        left_out = self.left_out()
        return [name for name in self._asked_for() if name not in left_out]

    def _asked_for(self) -> list[str]:
        if self.datasets == "embedded":
            return embedded_datasets()
        if self.datasets == "all":
            return list(load_registry().datasets)
        order = list(load_registry().datasets)
        return sorted(self.datasets, key=order.index)

    def left_out(self) -> dict[str, list[str]]:
        """The datasets asked for whose source is `optional` and whose files are absent, each with
        the files it lacks: the run goes on without them."""
        registry, out = load_registry(), {}
        for name in self._asked_for():
            source = self.download.source_for(name)
            if source.optional:
                missing = source.missing_files(name, list(registry.datasets[name].split_roles.values()))
                if missing:
                    out[name] = missing
        return out


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or a file directly in it (paths compared, not contents)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or p.parent == f
