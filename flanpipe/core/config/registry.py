"""The FLAN dataset registry: 62 paper datasets in 12 task clusters, as data, and the extra
registries a config adds (``registry.extra``).

The registry lives in ``flanpipe/data/registry/{clusters,datasets}.yaml``. This module loads it once,
validates it with typed models and answers the questions the stages ask: which datasets form a
cluster, which clusters leave training when one is held out, what a dataset's schema is.

An extra registry is a YAML file in the same schema (``clusters:``, ``datasets:``) plus
``templates:``, the template files of its datasets (paths relative to the file). The package ships
some (:data:`PACKAGED_EXTRAS`, named by a bare name such as ``cot``). The active extras are a
process-wide setting (:func:`use_extra_registries`, called when a config is read), kept in the
environment variable :data:`EXTRA_ENV` so the Snakemake jobs a workflow starts read the same
registry; :func:`load_registry` returns the package's entries followed by the extras'.

>>> reg = load_registry()
>>> reg.datasets["rte"].cluster
'nli'
>>> sorted(reg.training_clusters("nli"))[:3]
['closed_book_qa', 'commonsense', 'coreference']
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, model_validator

SCALAR_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}
METRICS = ("accuracy", "f1", "matthews_corr", "squad", "bleu", "rouge", "pearson_spearman")
# Columns the download stage adds to every raw table; no dataset may declare them.
RESERVED_FIELDS = ("row_index",)


class RegistryError(ValueError):
    """The registry data is inconsistent (a bug in the YAML files, not in user input)."""


def arrow_type(spec: Any) -> pa.DataType:
    """Turn a feature type written in the registry's small type language into an Arrow type.

    >>> arrow_type("list<string>")
    ListType(list<item: string>)
    >>> arrow_type({"de": "string", "en": "string"})
    StructType(struct<de: string, en: string>)
    """
    if isinstance(spec, str):
        if spec in SCALAR_TYPES:
            return SCALAR_TYPES[spec]
        if spec.startswith("list<") and spec.endswith(">"):
            return pa.list_(arrow_type(spec[5:-1]))
        raise RegistryError(f"unknown feature type {spec!r}; allowed: {sorted(SCALAR_TYPES)}, "
                            "list<T>, a mapping (struct) or a one-element list (list of T)")
    if isinstance(spec, dict):
        return pa.struct([pa.field(name, arrow_type(sub)) for name, sub in spec.items()])
    if isinstance(spec, list) and len(spec) == 1:
        return pa.list_(arrow_type(spec[0]))
    raise RegistryError(f"cannot read feature type {spec!r}")


def field_type(schema: pa.Schema, path: str) -> pa.DataType:
    """The Arrow type at a dotted path (``translation.de``), looking through lists of structs."""
    head, *rest = path.split(".")
    if head not in schema.names:
        raise KeyError(path)
    typ = schema.field(head).type
    for part in rest:
        while pa.types.is_list(typ):
            typ = typ.value_type
        if not pa.types.is_struct(typ) or typ.get_field_index(part) < 0:
            raise KeyError(path)
        typ = typ.field(part).type
    return typ


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cluster(_Strict):
    name: str
    excludes: tuple[str, ...] = ()
    description: str | None = None


class HubSource(_Strict):
    """Where a dataset lives on the Hugging Face hub, and how its hub copy must be read."""

    id: str | None
    config: str | None = None
    revision: str | None = None
    parquet_branch: bool = False
    """The main branch ships only a loading script (``datasets`` >= 4 will not run it): read the
    hub's auto-converted Parquet branch ``refs/convert/parquet`` instead."""
    bytes_repr_fields: tuple[str, ...] = ()
    """String fields whose hub values are Python bytes reprs of a file line (``"b'7\\n'"``); the
    download stage decodes them."""


class Splits(_Strict):
    """Hub split names per role; a train-only (ParaCrawl) or eval-only (WSC273) dataset has one."""

    train: str | None
    eval: str | None

    @model_validator(mode="after")
    def _at_least_one(self) -> Splits:
        if not self.train and not self.eval:
            raise ValueError("a dataset needs a train split, an eval split or both")
        return self


class Task(_Strict):
    type: Literal["classification", "multiple_choice", "generation"]
    label_field: str | None = None
    labels: tuple[str, ...] | None = None
    label_values: tuple[Any, ...] | None = None
    choices: str | tuple[str, ...] | None = None
    label_in: str | None = None
    targets: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Task:
        if self.type == "classification":
            if not self.label_field or not self.labels:
                raise ValueError("classification needs label_field and labels")
        elif self.type == "multiple_choice":
            if not self.label_field or not self.choices:
                raise ValueError("multiple_choice needs label_field and choices")
        elif not self.targets:
            raise ValueError("generation needs targets")
        if self.label_values is not None:
            n = len(self.labels) if self.labels else None
            if isinstance(self.choices, tuple):
                n = len(self.choices)
            if n is not None and len(self.label_values) != n:
                raise ValueError(f"label_values has {len(self.label_values)} entries, expected {n}")
        return self


class DatasetSpec(_Strict):
    """One registry entry: where a dataset comes from, its schema and its task."""

    name: str
    paper_name: str
    cluster: str
    description: str
    hub: HubSource
    available_on_hub: bool
    local_instructions: str | None = None
    splits: Splits
    features: dict[str, Any]
    id_field: str | None = None
    text_fields: tuple[str, ...]
    task: Task
    metric: Literal[METRICS]  # type: ignore[valid-type]
    license: str | None = None
    """The dataset's licence as its source states it (an SPDX id where there is one); the model card
    lists it. None: not recorded."""
    distinct: tuple[str, ...] = ()
    """Field paths that tell examples apart when they share the other text fields (SQuAD's question
    and answer beside a shared passage, an NLI hypothesis beside a shared premise). Two rows are near
    duplicates only if these fields are alike as well; empty: all text fields together."""
    source_field: str | None = None
    """A string field naming each row's source dataset (Super-NaturalInstructions' ``Source``): a
    row whose source is a dataset of a held-out cluster (``data/registry/niv2_sources.yaml``) leaves
    that held-out model's mixture."""
    prompt_type_field: str | None = None
    """Rows that are prompts already (a published Flan Collection dump): the string field holding
    each row's prompt type (``zs_opt`` ... ``fs_noopt``), kept as it is instead of drawn from the
    template mix."""
    counts_in: tuple[str, ...] = ()
    """Other clusters the dataset counts in for held-out purposes: it leaves the training mixture of
    a model that holds out (or excludes) any of them (``cot_esnli``, derived from SNLI: ``[nli]``)."""

    @functools.cached_property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the dataset's declared features, in declaration order."""
        return pa.schema([pa.field(k, arrow_type(v)) for k, v in self.features.items()])

    @property
    def split_roles(self) -> dict[str, str]:
        """``{"train": hub split, "eval": hub split}`` for the roles this dataset has."""
        roles = {"train": self.splits.train, "eval": self.splits.eval}
        return {role: split for role, split in roles.items() if split}

    def referenced_paths(self) -> list[str]:
        """Every field path the entry names outside ``features``."""
        task = self.task
        paths = list(self.text_fields) + list(task.targets or ())
        paths += [p for p in (task.label_field, task.label_in, self.id_field, self.source_field,
                              self.prompt_type_field) if p]
        if isinstance(task.choices, str):
            paths.append(task.choices)
        elif task.choices:
            paths.extend(task.choices)
        return paths

    @model_validator(mode="after")
    def _check_paths(self) -> DatasetSpec:
        if not self.available_on_hub and not self.local_instructions:
            raise ValueError("a dataset with no hub copy needs local_instructions")
        for reserved in RESERVED_FIELDS:
            if reserved in self.features:
                raise ValueError(f"feature name {reserved!r} is reserved")
        for name in self.hub.bytes_repr_fields:
            if self.features.get(name) != "string":
                raise ValueError(f"hub.bytes_repr_fields: {name!r} is not a string feature")
        for path in self.referenced_paths():
            try:
                field_type(self.schema, path)
            except KeyError:
                raise ValueError(f"field path {path!r} is not among the features") from None
        self._check_distinct()
        return self

    def _check_distinct(self) -> None:
        if len(set(self.distinct)) != len(self.distinct):
            raise ValueError(f"distinct: {list(self.distinct)} names a field twice")
        for path in self.distinct:
            try:
                typ = field_type(self.schema, path)
            except KeyError:
                raise ValueError(f"distinct: field path {path!r} is not among the features "
                                 f"{sorted(self.features)}") from None
            inner = typ
            while pa.types.is_list(inner):
                inner = inner.value_type
            if not pa.types.is_string(inner):
                raise ValueError(f"distinct: field {path!r} is {typ}; allowed: string fields or lists "
                                 "of strings")


class Registry(_Strict):
    clusters: dict[str, Cluster]
    datasets: dict[str, DatasetSpec]

    @model_validator(mode="after")
    def _check_links(self) -> Registry:
        for name, spec in self.datasets.items():
            if spec.cluster not in self.clusters:
                raise ValueError(f"dataset {name}: unknown cluster {spec.cluster!r}; allowed: "
                                 f"{list(self.clusters)}")
            unknown = [c for c in spec.counts_in if c not in self.clusters]
            if unknown:
                raise ValueError(f"dataset {name}: counts_in names unknown cluster(s) {unknown}; "
                                 f"allowed: {list(self.clusters)}")
        for name, cluster in self.clusters.items():
            for other in cluster.excludes:
                if other not in self.clusters:
                    raise ValueError(f"cluster {name}: excludes unknown cluster {other!r}")
                if name not in self.clusters[other].excludes:
                    raise ValueError(f"exclusion {name} -> {other} is not symmetric")
        return self

    def datasets_in(self, clusters: Iterable[str]) -> list[str]:
        """Registry keys of the datasets in ``clusters``, in registry order."""
        wanted = set(clusters)
        return [name for name, spec in self.datasets.items() if spec.cluster in wanted]

    def clusters_of(self, name: str) -> tuple[str, ...]:
        """Every cluster dataset ``name`` counts in: its own, then its ``counts_in``."""
        spec = self.datasets[name]
        return (spec.cluster, *spec.counts_in)

    def trains_in(self, name: str, clusters: Iterable[str]) -> bool:
        """Whether dataset ``name`` may train in a mixture of ``clusters``: every cluster it counts
        in is among them."""
        allowed = set(clusters)
        return all(c in allowed for c in self.clusters_of(name))

    def excluded_clusters(self, heldout: str) -> list[str]:
        """The held-out cluster plus every cluster it excludes from training."""
        if heldout not in self.clusters:
            raise KeyError(heldout)
        return [heldout, *self.clusters[heldout].excludes]

    def training_clusters(self, heldout: str) -> list[str]:
        """Clusters a model evaluated on ``heldout`` may train on (leave-one-cluster-out).

        ``heldout="all"`` trains on every cluster.
        """
        if heldout == "all":
            return list(self.clusters)
        dropped = set(self.excluded_clusters(heldout))
        return [c for c in self.clusters if c not in dropped]


def _read_yaml(name: str) -> Any:
    text = resources.files("flanpipe").joinpath("data/registry", name).read_text("utf-8")
    return yaml.safe_load(text)


EXTRA_ENV = "FLANPIPE_REGISTRY_EXTRA"
"""The environment variable that holds the active extra registries (``os.pathsep``-separated), so a
Snakemake job's process reads the registry its workflow's config named."""
PACKAGED_EXTRAS = ("cot", "niv2", "flan_dump")
"""Extra registries shipped in ``flanpipe/data/registry/extra/``, named in ``registry.extra`` by
their bare name: ``cot``, the 9 chain-of-thought datasets of Flan 2022 (a ``cot`` cluster);
``niv2``, Super-NaturalInstructions as one dataset (a ``niv2`` cluster); ``flan_dump``, the rows of
a published Flan Collection export, one dataset per ``_task_source`` (a ``flan_dump`` cluster)."""
EXTRA_KEYS = ("clusters", "datasets", "templates")


def _extra_path(entry: str) -> Path:
    if entry in PACKAGED_EXTRAS:
        return Path(str(resources.files("flanpipe").joinpath("data/registry/extra", f"{entry}.yaml")))
    return Path(entry)


def read_extra(entry: str) -> dict[str, Any]:
    """One extra registry file (or a packaged one's name) as a mapping, its template paths made
    absolute; :class:`RegistryError` naming the file when it is missing or not of that shape."""
    path = _extra_path(entry)
    if not path.is_file():
        raise RegistryError(f"{entry}: no such registry file; allowed: a YAML file with clusters:, "
                            f"datasets: and templates:, or a packaged registry {list(PACKAGED_EXTRAS)}")
    data = yaml.safe_load(path.read_text("utf-8")) or {}
    if not isinstance(data, dict) or set(data) - set(EXTRA_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise RegistryError(f"{path}: a registry file holds the keys {list(EXTRA_KEYS)}; found {found}")
    templates = data.get("templates") or []
    if isinstance(templates, str):
        templates = [templates]
    missing = [t for t in templates if not (path.parent / t).is_file()]
    if missing:
        raise RegistryError(f"{path}: templates: no such file(s) {missing} (paths are relative to "
                            "the registry file)")
    return {"path": str(path.resolve()), "clusters": data.get("clusters") or {},
            "datasets": data.get("datasets") or {},
            "templates": [str((path.parent / t).resolve()) for t in templates]}


def use_extra_registries(entries: Sequence[str]) -> None:
    """Make ``entries`` (registry files, or packaged names) the process's extra registries, after
    checking them (:class:`RegistryError` names the file and the entry at fault); ``[]`` restores the
    package's registry alone. Files are recorded by absolute path."""
    resolved = [e if e in PACKAGED_EXTRAS else str(Path(e).resolve()) for e in entries]
    _load_registry(tuple(resolved))  # raises on a bad file before it becomes active
    if resolved:
        os.environ[EXTRA_ENV] = os.pathsep.join(resolved)
    else:
        os.environ.pop(EXTRA_ENV, None)


def active_extras() -> tuple[str, ...]:
    """The extra registries in use (:func:`use_extra_registries`), in order."""
    value = os.environ.get(EXTRA_ENV, "")
    return tuple(part for part in value.split(os.pathsep) if part)


def extra_template_files() -> list[Path]:
    """The template files of the active extra registries, in order."""
    return [Path(t) for entry in active_extras() for t in read_extra(entry)["templates"]]


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of the package's own datasets (not an extra registry's)."""
    return name in _load_registry(()).datasets


def load_registry() -> Registry:
    """The registry shipped with the package, followed by the active extras' entries (cached)."""
    return _load_registry(active_extras())


@functools.cache
def _load_registry(extras: tuple[str, ...]) -> Registry:
    clusters = dict(_read_yaml("clusters.yaml")["clusters"])
    datasets = {name: {"name": name, **entry}
                for name, entry in _read_yaml("datasets.yaml")["datasets"].items()}
    if not extras:
        return Registry(clusters=clusters, datasets=datasets)
    Registry(clusters=clusters, datasets=datasets)  # the package's own, checked alone first
    for entry in extras:
        extra = read_extra(entry)
        for key, have, new in (("clusters", clusters, extra["clusters"]),
                               ("datasets", datasets, extra["datasets"])):
            clash = sorted(set(have) & set(new))
            if clash:
                raise RegistryError(f"{extra['path']}: {key} {clash} are already in the registry; allowed: "
                                    "new names")
        clusters.update(extra["clusters"])
        for name, cluster in extra["clusters"].items():  # an exclusion is written once, on the new side
            for other in (cluster or {}).get("excludes", ()):
                if other in clusters and other not in extra["clusters"]:
                    have = dict(clusters[other])
                    have["excludes"] = [*have.get("excludes", ()), name]
                    clusters[other] = have
        datasets.update({name: {"name": name, **(e or {})} for name, e in extra["datasets"].items()})
        try:
            Registry(clusters=clusters, datasets=datasets)
        except ValueError as err:
            raise RegistryError(f"{extra['path']}: {err}") from None
    return Registry(clusters=clusters, datasets=datasets)


def embedded_datasets() -> list[str]:
    """Registry keys of the datasets the package ships demo data for, in registry order."""
    root = resources.files("flanpipe").joinpath("data/embedded")
    present = {p.name for p in root.iterdir() if p.is_dir() and any(p.iterdir())}
    return [name for name in load_registry().datasets if name in present]
