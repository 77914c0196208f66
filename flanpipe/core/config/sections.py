"""The config's sections: one typed model per top-level key (``download``, ``templatize``, ``dedupe``,
``decontaminate``, ``mix``, ``tokenize``, ``train``, ``evaluate``, ``ablations``, ``experiment``), each
field with its docstring (the one source of ``docs/config.md``) and its default; checks within one
section live on it.
The types several sections and the stages' slices share are named here once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from flanpipe.core.config.registry import load_registry

SourceKind = Literal["embedded", "hub", "local", "cot", "niv2", "flan_dump"]
"""Where a dataset's raw rows come from."""
OptionsStyle = Literal["dash", "letters", "none"]
"""How a classification prompt lists its options: `dash` (FLAN's `OPTIONS:` and `- ` items), `letters`
(`(A)`, `(B)`, ...) or `none`."""

TemplateFormat = Literal["instructions", "no_template", "dataset_name"]
"""What a prompt says around an example: FLAN's `instructions`, or the ablations' `no_template` and
`dataset_name`."""

TemplateBank = Literal["flanpipe", "flan2021", "flan2022"]
"""Whose templates: flanpipe's own, or FLAN's read from a FLAN checkout (`flan2021`: the paper's
`flan/templates.py`; `flan2022`: `flan/v2/flan_templates_branched.py`)."""

TrainFormat = Literal["eos", "text", "chat"]
"""How a decoder-only example's input meets its target in training (:mod:`flanpipe.core.tokens.formats`)."""

Truncation = Literal["right", "left"]
"""Which end of an over-long input is cut."""

Packer = Literal["best_fit", "next_fit", "none"]
"""How examples are packed into rows (:mod:`flanpipe.core.tokens.binpack`)."""

ModelKind = Literal["decoder_only", "encoder_decoder"]
"""Whether a model is decoder-only or an encoder-decoder (T5's family)."""



class ConfigError(ValueError):
    """A config value is not allowed; the message names the key and what is allowed."""


def _refuse_unknown_datasets(names: Iterable[str], key: str = "", also: str = "") -> None:
    """The refusal of dataset names outside the registry, in their given order: `key` prefixes the
    message (a sub-key such as ``nli.datasets: ``), `also` adds to what is allowed."""
    known = load_registry().datasets
    unknown = [d for d in names if d not in known]
    if unknown:
        raise ValueError(f"{key}unknown dataset(s) {unknown}; allowed: registry names "
                         f"(see `flanpipe datasets`){also}")


class _Section(BaseModel):
    """A config section: unknown keys are errors; integers are integers (not ``"10"`` or ``true``),
    numbers are numbers and finite (not ``inf`` or ``nan``) unless a field says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


class RegistryConfig(_Section):
    """Datasets and clusters beyond the package's 62: extra registry files."""

    extra: list[str] = Field(default_factory=list)
    """Extra registries, in order: YAML files in the package registry's schema (`clusters:` and
    `datasets:`, each entry as in `flanpipe/data/registry/`) with `templates:`, their template files
    (paths relative to the registry file); or a registry the package ships, by name: `cot` (Flan
    2022's 9 chain-of-thought datasets) or `niv2` (Super-NaturalInstructions). Their datasets are
    used like the package's own in every stage; see docs/registry.md."""


class SourceSpec(_Section):
    """Where one dataset's raw data comes from."""

    kind: SourceKind = "embedded"
    """`embedded` (demo data shipped in the package), `hub` (Hugging Face `datasets.load_dataset`, or
    the hub's auto-converted Parquet branch for a repository that ships only a loading script) or
    `local` (files in the dataset's hub schema under `path`) or `cot` (FLAN's chain-of-thought
    files: `<path>/<name>_train.tsv` for dataset `cot_<name>`, tab-separated question, answer and
    rationale with no header, newlines written as a literal `\\n`) or `niv2` (a folder of
    Super-NaturalInstructions task files, `<path>/*.json`, as the one dataset `niv2`) or `flan_dump`
    (a published Flan Collection export: a Parquet or JSON Lines file, or a folder of them, with the
    columns `inputs`, `targets`, `_task_source`, `_task_name`, `_template_type`, `_template_idx`)."""
    revision: str | None = None
    """hub only: a commit sha, tag or branch to pin; overrides the registry's pinned revision. When the
    Parquet branch is read, a commit of that branch."""
    parquet_branch: bool | None = None
    """hub only: read the hub's auto-converted Parquet branch `refs/convert/parquet` (true), never
    (false), or as the registry's `hub.parquet_branch` says, falling back to the branch when
    `load_dataset` finds only a loading script (null)."""
    path: str | None = None
    """local: a directory holding `{split}.parquet`, `{split}.jsonl` or `{split}.csv` for each hub
    split name the registry lists (e.g. `train.jsonl`, `validation.jsonl`). hub: a local copy of the
    dataset's Parquet branch (`hf download ID --repo-type dataset --revision refs/convert/parquet
    --local-dir DIR`), read instead of the hub whenever the branch is read. cot: the folder of
    FLAN's `<name>_train.tsv` files (`flan/v2/cot_data` of a FLAN checkout)."""
    per_task_cap: StrictInt | None = Field(None, ge=1)
    """niv2 and flan_dump: most rows kept of each task (NIv2's task file: a draw seeded by
    (seed, dataset, task, instance id), so adding an instance changes no other kept row but the one
    it displaces; a dump's `_task_name`: the first, in file order); null: all. Flan 2022 capped each
    NIv2 task at 5,000."""
    task_source: str | None = None
    """flan_dump only: the `_task_source` whose rows this dataset keeps; null: the one its registry
    name stands for (`dump_flan2021`: Flan2021, `dump_t0`: T0, `dump_niv2`: NIv2, `dump_cot`: CoT,
    `dump_dialog`: Dialog), or every row for another name."""
    optional: bool = False
    """local, cot and niv2: when the dataset's files are absent, leave the dataset out of the run (the
    config check logs which) instead of failing; the datasets left out are listed by `flanpipe
    datasets --config`."""

    @model_validator(mode="after")
    def _fields_match_kind(self) -> SourceSpec:
        if self.kind == "local" and not self.path:
            raise ValueError("kind 'local' needs 'path' (a directory with {split}.parquet|jsonl|csv)")
        if self.kind == "cot" and not self.path:
            raise ValueError("kind 'cot' needs 'path' (a folder of FLAN's <name>_train.tsv files), or "
                             "download.flan_root (a FLAN checkout) with the dataset not listed in sources")
        if self.kind == "niv2" and not self.path:
            raise ValueError("kind 'niv2' needs 'path' (a folder of Super-NaturalInstructions task files)")
        if self.kind == "flan_dump" and not self.path:
            raise ValueError("kind 'flan_dump' needs 'path' (a Parquet or JSON Lines file, or a folder)")
        if self.kind in ("embedded",) and self.path:
            raise ValueError(f"'path' is not used with kind {self.kind!r}")
        if self.optional and self.kind not in ("local", "cot", "niv2", "flan_dump"):
            raise ValueError(f"'optional' is only used with kind 'local', 'cot', 'niv2' or 'flan_dump', "
                             f"not {self.kind!r}")
        if self.per_task_cap is not None and self.kind not in ("niv2", "flan_dump"):
            raise ValueError(f"'per_task_cap' is only used with kind 'niv2' or 'flan_dump', not "
                             f"{self.kind!r}")
        if self.task_source is not None and self.kind != "flan_dump":
            raise ValueError(f"'task_source' is only used with kind 'flan_dump', not {self.kind!r}")
        if self.kind != "hub" and self.revision:
            raise ValueError(f"'revision' is only used with kind 'hub', not {self.kind!r}")
        if self.kind != "hub" and self.parquet_branch is not None:
            raise ValueError(f"'parquet_branch' is only used with kind 'hub', not {self.kind!r}")
        if self.kind == "hub" and self.path and self.parquet_branch is False:
            raise ValueError("with kind 'hub', 'path' is a local copy of the Parquet branch, which "
                             "'parquet_branch: false' never reads; drop one of them")
        return self


    def files_for(self, dataset: str, splits: list[str]) -> list[str]:
        """The files this source reads for ``dataset``'s ``splits`` (its hub split names), as
        patterns: `local` one per split (any of its suffixes), `cot` the one TSV file; none for the
        hub or the embedded data.

        >>> SourceSpec(kind="cot", path="/flan/v2/cot_data").files_for("cot_gsm8k", ["train"])
        ['/flan/v2/cot_data/gsm8k_train.tsv']
        """
        if self.kind == "cot":
            return [f"{self.path.rstrip('/')}/{dataset.removeprefix('cot_')}_train.tsv"]
        if self.kind == "niv2":
            return [f"{self.path.rstrip('/')}/*.json"]
        if self.kind == "flan_dump":
            return [self.path.rstrip("/") if Path(self.path).suffix else f"{self.path.rstrip('/')}/*.*"]
        if self.kind == "local":
            return [f"{self.path.rstrip('/')}/{split}.{{parquet,jsonl,json,csv}}" for split in splits]
        return []

    def missing_files(self, dataset: str, splits: list[str]) -> list[str]:
        """Of :meth:`files_for`, those absent on disk."""
        missing = []
        for pattern in self.files_for(dataset, splits):
            stem, _, suffixes = pattern.partition("{")
            options = [stem + s for s in suffixes.rstrip("}").split(",")] if suffixes else [stem]
            folder, _, name = pattern.rpartition("/")
            found = any(Path(folder).glob(name)) if "*" in name else any(Path(o).is_file() for o in options)
            if not found:
                missing.append(pattern)
        return missing


class DownloadConfig(_Section):
    """Stage 1: fetch each dataset's train and eval split into raw Parquet."""

    default_source: Literal["embedded", "hub", "local"] = "embedded"
    """Source for every dataset not listed in `sources`."""
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    """Per-dataset overrides, keyed by registry name, e.g. `{rte: {kind: hub, revision: main}}`."""
    local_root: str | None = None
    """With `default_source: local`: the folder that holds one folder per dataset, named as in the
    registry (`<local_root>/boolq/train.jsonl`, ...), for every dataset not listed in `sources`."""
    flan_root: str | None = None
    """A checkout of google-research/FLAN: every dataset of the `cot` cluster (`registry.extra:
    [cot]`) not listed in `sources` reads `<flan_root>/flan/v2/cot_data/<name>_train.tsv`."""
    optional: bool = False
    """The `optional` of every source this section makes (`default_source: local`, `flan_root`):
    a dataset whose files are absent is left out of the run, and the log names it."""

    @model_validator(mode="after")
    def _local_root_with_local(self) -> DownloadConfig:
        if self.default_source == "local" and not self.local_root:
            raise ValueError("default_source 'local' needs local_root (a folder with one folder per "
                             "dataset); datasets listed in sources use their own path")
        if self.default_source != "local" and self.local_root:
            raise ValueError(f"local_root is read with default_source 'local' only, not "
                             f"{self.default_source!r}")
        return self

    @field_validator("sources")
    @classmethod
    def _known_datasets(cls, sources: dict[str, SourceSpec]) -> dict[str, SourceSpec]:
        _refuse_unknown_datasets(sorted(sources))
        known = load_registry().datasets
        for name, source in sources.items():
            if source.kind == "hub" and source.path and source.parquet_branch is None \
                    and not known[name].hub.parquet_branch:
                raise ValueError(
                    f"{name}.path: with kind 'hub', path is a local copy of the Parquet branch, "
                    f"but {name} is read with load_dataset (registry hub.parquet_branch is false); "
                    "allowed: add 'parquet_branch: true', or use kind 'local'")
        return sources

    def source_for(self, dataset: str) -> SourceSpec:
        """The source to read ``dataset`` from."""
        if dataset in self.sources:
            return self.sources[dataset]
        if self.flan_root and load_registry().datasets[dataset].cluster == "cot":
            return SourceSpec(kind="cot", path=f"{self.flan_root.rstrip('/')}/flan/v2/cot_data",
                              optional=self.optional)
        if self.default_source == "local":
            return SourceSpec(kind="local", path=f"{self.local_root.rstrip('/')}/{dataset}",
                              optional=self.optional)
        return SourceSpec(kind=self.default_source)


class FewShotConfig(_Section):
    """Few-shot prompts for evaluation: solved train exemplars before the query."""

    k: StrictInt = Field(3, ge=0, le=64)
    """Exemplars per prompt (drawn from the train split, never the example itself)."""
    delimiter: str = "\n\n"
    """Between exemplars, and between the last exemplar and the query."""
    max_tokens: StrictInt | None = Field(None, ge=16)
    """Token budget of a whole prompt; exemplars are dropped, oldest first, to fit it. null:
    `tokenize.max_input_tokens`, which it may not exceed."""

    def within(self, max_input_tokens: int) -> FewShotConfig:
        """This config with its budget resolved: ``max_tokens``, or ``max_input_tokens`` where null.

        >>> FewShotConfig().within(512).max_tokens, FewShotConfig(max_tokens=300).within(512).max_tokens
        (512, 300)
        """
        budget = min(self.max_tokens or max_input_tokens, max_input_tokens)
        return self.model_copy(update={"max_tokens": budget})


PROMPT_TYPES = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
"""The prompt types of Flan 2022's mix, in the order their rates are drawn: zero-shot or few-shot,
with or without the OPTIONS suffix."""


class PromptMix(_Section):
    """The share of a dataset's train rows rendered as each prompt type (they sum to 1), and the
    rate of turned-around templates."""

    zs_opt: StrictFloat = Field(1.0, ge=0.0, le=1.0)
    """Zero-shot, with the OPTIONS suffix (`templatize.options`) where the task has options."""
    zs_noopt: StrictFloat = Field(0.0, ge=0.0, le=1.0)
    """Zero-shot, without the OPTIONS suffix."""
    fs_opt: StrictFloat = Field(0.0, ge=0.0, le=1.0)
    """Few-shot (1 to `templatize.few_shot.k` solved exemplars from the dataset's own pool, same
    template, within the token budget), with the OPTIONS suffix."""
    fs_noopt: StrictFloat = Field(0.0, ge=0.0, le=1.0)
    """Few-shot, without the OPTIONS suffix."""
    inverted: StrictFloat | None = Field(None, ge=0.0, le=1.0)
    """Share of train renderings that use a turned-around template (of datasets that have them);
    null: every template is drawn alike, so their share is the bank's (up to 3 of 10)."""

    @model_validator(mode="after")
    def _rates_sum_to_one(self) -> PromptMix:
        total = self.zs_opt + self.zs_noopt + self.fs_opt + self.fs_noopt
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"the rates zs_opt + zs_noopt + fs_opt + fs_noopt sum to {total:g}; allowed: "
                             "rates that sum to 1 (an unset rate is 0, except zs_opt, which is 1: set "
                             "zs_opt: 0 to leave it out)")
        return self

    def rates(self) -> tuple[float, float, float, float]:
        """The rates in :data:`PROMPT_TYPES` order."""
        return self.zs_opt, self.zs_noopt, self.fs_opt, self.fs_noopt

    @property
    def few_shot(self) -> bool:
        """Whether any train row is rendered few-shot."""
        return self.fs_opt + self.fs_noopt > 0


class TemplateMixConfig(PromptMix):
    """The template mix of every dataset, with overrides per dataset or per submixture."""

    overrides: dict[str, PromptMix] = Field(default_factory=dict)
    """Rates for one dataset or every dataset of a submixture (`mix.submixtures`), keyed by its
    name, replacing these for it; a dataset's own entry wins over its submixture's."""

    def for_dataset(self, dataset: str, submixture: str | None = None) -> PromptMix:
        """The rates ``dataset`` (in ``submixture``) is rendered with.

        >>> m = TemplateMixConfig(overrides={"rte": {"zs_opt": 0.5, "fs_opt": 0.5}})
        >>> m.for_dataset("rte").fs_opt, m.for_dataset("cb").fs_opt
        (0.5, 0.0)
        """
        chosen = self.overrides.get(dataset) or self.overrides.get(submixture or "")
        return chosen or PromptMix.model_validate(self.model_dump(exclude={"overrides"}))


class TemplatizeConfig(_Section):
    """Stage 2: phrase every example as an instruction."""

    format: TemplateFormat = "instructions"
    """`instructions` (the template bank), or the paper's ablations: `no_template` (input fields
    joined plainly) and `dataset_name` (the same, prefixed with `[Task: <dataset>]`)."""
    bank: TemplateBank = "flanpipe"
    """The template bank, for training and evaluation alike: `flanpipe` (the project's own,
    `flanpipe/data/templates/`), or FLAN's own prompts read from the checkout at `flan_root`:
    `flan2021` (the paper's) or `flan2022` (the same tasks as corrected for Flan 2022). A FLAN
    template needing a field a dataset lacks is skipped (`flanpipe datasets --bank` lists them)."""
    flan_root: str | None = None
    """A FLAN checkout (a clone of google-research/FLAN): needed, and only used, when `bank` is a FLAN
    bank. Its files are read as data, never executed; runs record its git commit (or the file's
    sha256). A relative path is read from the workflow's working directory."""
    options: OptionsStyle = "dash"
    """The OPTIONS suffix of classification templates: `- choice` lines, lettered `(A) choice`
    lines, or `none` (the paper's no-options variant)."""
    passes: StrictInt = Field(4, ge=1, le=64)
    """Renderings of each train example, one per pass, each with its own template drawn from (seed,
    dataset, example, pass): a mixture's epoch e uses pass e % passes, so a repeated example changes
    phrasing each epoch up to `passes` epochs. Costs `passes` x the train rows in the templatized
    files."""
    cut_long_field: bool = True
    """Fit an input that would pass `tokenize.max_input_tokens` by cutting the end of its long field
    (the dataset's longest text field: the passage, the document) before rendering, so the
    instruction and the OPTIONS around it survive; the tokenizer's right truncation would cut them."""
    chars_per_token: StrictFloat = Field(3.0, gt=0.0, le=16.0)
    """The characters-per-token estimate the cut budgets with (`(max_input_tokens - 1) *
    chars_per_token` characters). Lower is safer and wastes more of the budget: on English documents
    (library docstrings, some with code and maths) with SmolLM2's 49k BPE, 3.0 fills ~68% of it and
    never overflowed, 3.5 ~80% with a few overflows, 4.0 ~90% with 10% of cut rows overflowing. The
    pack stage's `truncated_inputs` count says when it fell short."""
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    mix: TemplateMixConfig = Field(default_factory=TemplateMixConfig)
    """Flan 2022's template mix: how train rows are prompted (zero-/few-shot, with or without
    OPTIONS) and how often turned-around templates are drawn; the default renders as earlier
    releases did (every row zero-shot with OPTIONS, turned-around templates as often as any)."""

    @model_validator(mode="after")
    def _flan_root_with_flan_bank(self) -> TemplatizeConfig:
        if self.bank != "flanpipe" and not self.flan_root:
            raise ValueError(f"bank {self.bank!r} is read from a FLAN checkout: set flan_root (a clone "
                             "of google-research/FLAN)")
        if self.bank == "flanpipe" and self.flan_root:
            raise ValueError("flan_root is only read with a FLAN bank (bank: flan2021 or flan2022), "
                             "not with bank 'flanpipe'")
        return self


class NearDedupeConfig(_Section):
    """Near-duplicates: MinHash + LSH over each example's raw text fields (never the templated text,
    whose boilerplate would make unrelated examples look alike)."""

    enabled: bool = True
    threshold: StrictFloat = Field(0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of word shingles at or above which two examples are duplicates."""
    shingle: StrictInt = Field(3, ge=1, le=32)
    """Words per shingle (a text shorter than this is one shingle)."""
    num_perm: StrictInt = Field(128, ge=8, le=1024)
    """MinHash permutations (signature length)."""
    bands: StrictInt | None = Field(None, ge=1)
    """LSH bands (rows per band = num_perm // bands); null picks the pair that minimises false
    positives plus false negatives at `threshold`, as datasketch does."""


class DedupeConfig(_Section):
    """Stage 3a: drop duplicate training examples within and across datasets; the first occurrence in
    the stable order (datasets in registry order, rows in source order) is kept."""

    exact: bool = True
    """Drop examples whose normalised inputs + targets (lower case, whitespace collapsed) repeat."""
    near: NearDedupeConfig = Field(default_factory=NearDedupeConfig)
    pool_factor: StrictFloat | None = Field(4.0, ge=1.0)
    """Only the `pool_factor * mix.cap` rows of a dataset that a seeded draw would reach first are
    fingerprinted (the rest can never survive the cap, and are counted as capped away); null checks
    every row."""


class DecontaminateConfig(_Section):
    """Stage 3b: remove training examples that share a long word n-gram with an evaluation example of
    a held-out dataset, per held-out setting (the `all` mixture: against every held-out cluster)."""

    enabled: bool = True
    ngram: StrictInt = Field(13, ge=2, le=64)
    """Words per n-gram (13, as in GPT-3's and FLAN's contamination analyses)."""
    min_ngram: StrictInt = Field(8, ge=2, le=64)
    """For an eval dataset whose texts are short, the n-gram shrinks to the 5th percentile of its
    eval texts' word counts, but never below this (GPT-3's rule); eval texts shorter than the
    n-gram cannot match and are counted as unchecked."""

    @model_validator(mode="after")
    def _ordered(self) -> DecontaminateConfig:
        if self.min_ngram > self.ngram:
            raise ValueError(f"decontaminate.min_ngram ({self.min_ngram}) must be <= decontaminate.ngram "
                             f"({self.ngram})")
        return self


DEFAULT_SUBMIXTURE = "flan2021"
"""The one submixture of a run that names none: every dataset, the FLAN 2021 mixture."""


class SubmixtureConfig(_Section):
    """One group of datasets in the mixture (`mix.submixtures.<name>`)."""

    datasets: Literal["all"] | list[str] = "all"
    """Registry names, or `all`: every dataset of the run that no other group lists."""
    cap: StrictInt | None = Field(None, ge=1)
    """Most training examples kept per dataset of the group; null: `mix.cap`."""
    rate_max: StrictInt | None = Field(None, ge=1)
    """K of the rate rule within the group; null: `mix.rate_max`."""
    weight: StrictFloat = Field(1.0, gt=0.0)
    """The group's share of the mixture, relative to the other groups' weights."""


class MixConfig(_Section):
    """Stage 3c: cap each dataset, then mix examples-proportionally into shuffled Parquet shards."""

    cap: StrictInt = Field(30_000, ge=1)
    """Most training examples kept per dataset, drawn by a seeded sample (the paper took the first
    30k; a sample does not inherit the source's ordering, e.g. by topic or date)."""
    rate_max: StrictInt = Field(3_000, ge=1)
    """K in seqio's rate rule ``rate_i = min(n_i, K) ** (1 / T)``, normalised over datasets."""
    temperature: StrictFloat = Field(1.0, gt=0.0, allow_inf_nan=True)
    """T in the rate rule (1 = examples-proportional; `.inf`, the one float key that may be infinite:
    every dataset at the same rate)."""
    chars_per_token: StrictFloat = Field(4.0, gt=0.0)
    """Characters per token, to estimate example lengths before a tokenizer exists."""
    rows_per_shard: StrictInt = Field(100_000, ge=1)
    """Examples per mixture shard."""
    submixtures: dict[str, SubmixtureConfig] = Field(default_factory=dict)
    """Named groups of datasets, each mixed examples-proportionally within itself (its own `cap`
    and `rate_max`) and given `weight` of the mixture (weights are normalised over the groups a
    mixture holds). Empty: one group, `flan2021`, of every dataset, with `cap` and `rate_max`
    above. A group with `datasets: all` takes every dataset no other group lists."""

    @field_validator("submixtures")
    @classmethod
    def _groups_are_disjoint(cls, groups: dict[str, SubmixtureConfig]) -> dict[str, SubmixtureConfig]:
        owner: dict[str, str] = {}
        catch_all = [name for name, g in groups.items() if g.datasets == "all"]
        if len(catch_all) > 1:
            raise ValueError(f"{catch_all[1]}.datasets: 'all' is already the group {catch_all[0]!r}; "
                             "allowed: one group with datasets: all")
        for name, group in groups.items():
            if group.datasets == "all":
                continue
            _refuse_unknown_datasets(group.datasets, key=f"{name}.datasets: ", also=" or 'all'")
            for d in group.datasets:
                if d in owner:
                    raise ValueError(f"{name}.datasets: {d!r} is already in submixture {owner[d]!r}; "
                                     "allowed: each dataset in one submixture")
                owner[d] = name
        return groups

    def groups(self) -> dict[str, SubmixtureConfig]:
        """The submixtures, with `cap` and `rate_max` filled in from this section.

        >>> MixConfig().groups()["flan2021"].cap
        30000
        """
        groups = self.submixtures or {DEFAULT_SUBMIXTURE: SubmixtureConfig()}
        return {name: g.model_copy(update={"cap": g.cap or self.cap, "rate_max": g.rate_max or self.rate_max})
                for name, g in groups.items()}

    def submixture_of(self, dataset: str) -> str | None:
        """The submixture that holds ``dataset`` (None: no group lists it and none takes `all`).

        >>> MixConfig().submixture_of("rte")
        'flan2021'
        """
        groups = self.groups()
        listed = [name for name, g in groups.items() if g.datasets != "all" and dataset in g.datasets]
        return listed[0] if listed else next((n for n, g in groups.items() if g.datasets == "all"), None)

    @property
    def largest_cap(self) -> int:
        """The largest cap of any submixture: the pool holds enough rows for it."""
        return max(g.cap for g in self.groups().values())


class TokenizerSource(_Section):
    """`tokenize.tokenizer`, which tokenizer the run uses: a SentencePiece model trained on a seeded
    sample of the mixture text, a given one, or the pretrained checkpoint's own."""

    source: Literal["auto", "train", "file"] = "auto"
    """`auto`: the checkpoint's own tokenizer when `train.model.source` is `pretrained` (read from
    its folder: `tokenizer.json`, else `tokenizer.model`), else `train`; `train` a new SentencePiece
    model; `file`: use the tokenizer at `path`. A pretrained checkpoint takes its own tokenizer
    only: `train`, or a `file` outside the checkpoint folder, is refused."""
    path: str | None = None
    """`file` only: a SentencePiece `.model` file, a `tokenizer.json`, or a folder holding
    `tokenizer.json` (preferred) or `tokenizer.model`."""
    shared: bool = True
    """One tokenizer for every mixture (`models/tokenizer/spm.model`, trained on the `all` mixture's
    text), or one per mixture (`models/tokenizer/{mixture}/spm.model`, trained on its own text)."""
    vocab_size: StrictInt = Field(32_000, ge=300, le=1_000_000)
    """Pieces, specials and byte pieces included (the paper's 32k). On a corpus too small for it,
    the largest size the corpus supports is trained instead, with a warning."""
    model_type: Literal["unigram", "bpe"] = "unigram"
    byte_fallback: bool = True
    """Characters outside the vocabulary become UTF-8 byte pieces, never `<unk>`."""
    sample_sentences: StrictInt = Field(2_000_000, ge=1_000, le=20_000_000)
    """Lines of distinct mixture text (inputs and targets, split at newlines) sampled for training;
    SentencePiece's training memory grows with it (a few GB at 2-5 million)."""
    character_coverage: StrictFloat = Field(0.9995, gt=0.0, le=1.0)
    """Share of the sample's characters that get their own piece (the rest use byte pieces)."""
    max_sentence_chars: StrictInt = Field(4_096, ge=64)
    """Longer sampled lines are cut to this many characters before training."""

    @model_validator(mode="after")
    def _path_matches_source(self) -> TokenizerSource:
        if self.source == "file" and not self.path:
            raise ValueError("tokenize.tokenizer.path: source 'file' needs the path of a SentencePiece "
                             ".model file, a tokenizer.json or a folder holding one")
        if self.source != "file" and self.path:
            raise ValueError(f"tokenize.tokenizer.path is only used with source 'file', not "
                             f"{self.source!r}")
        return self


class TokenizeConfig(_Section):
    """Stage 4: tokenize each mixture and pack it into fixed-width token rows."""

    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource)
    add_bos: bool | None = None
    """Put the tokenizer's BOS token before each example's inputs. null: as the tokenizer's own
    convention says (a checkpoint whose tokenizer adds BOS, as Llama's do, gets one; SmolLM2's and
    flanpipe's own SentencePiece models do not); true needs a tokenizer with a BOS token."""
    max_input_tokens: StrictInt = Field(1024, ge=2, le=65_535)
    """Inputs are truncated to this many tokens, their EOS (and BOS, if added) included."""
    max_target_tokens: StrictInt = Field(256, ge=2, le=65_535)
    """Targets are truncated to this many tokens, their EOS included."""
    truncate_inputs: Truncation = "right"
    """Which end of a long input is cut: `right` keeps its beginning (seqio's rule), `left` keeps its
    end (where FLAN templates put the question and the OPTIONS)."""
    model_kind: ModelKind = "decoder_only"
    """`decoder_only`: rows of `max_input_tokens + max_target_tokens` tokens, each holding several
    `inputs EOS targets EOS` examples; `encoder_decoder`: inputs and targets packed into paired rows
    of `max_input_tokens` and `max_target_tokens`."""
    format: Literal["auto", "eos", "text", "chat"] = "auto"
    """How a decoder-only example's input meets its target (`flanpipe.core.tokens.formats`): `eos`, the
    paper's `[BOS] input EOS target EOS`; `text`, `[BOS] input`, the `separator`, then `target EOS`,
    with no EOS between (an EOS mid-example ends the document a pretrained decoder knows); `chat`,
    the tokenizer's own chat template with the input as the user turn and the target as the
    assistant turn, loss on the assistant turn only (`flanpipe.core.tokens.chat`; instruct checkpoints
    only, and no `add_bos`: the template places its own); `auto`: `text` for
    `train.model.source: pretrained`, `eos` for a model trained from scratch (see
    docs/experiments.md for the measurement behind it). Encoder-decoder rows are always `eos`."""
    separator: str = "\n"
    """`format: text`: the text between input and target, encoded on its own (a newline: with a
    byte-level BPE it never merges with its neighbours)."""
    packer: Packer = "best_fit"
    """`best_fit` (best-fit decreasing over windows of examples), `next_fit` (arrival order, for
    comparison) or `none` (one example per row, padded)."""
    pack_window: StrictInt = Field(20_000, ge=1)
    """Examples packed together; larger windows pack tighter but hold more in memory."""
    rows_per_shard: StrictInt = Field(8_192, ge=1)
    """Packed rows per token shard."""
    max_truncated_fraction: StrictFloat = Field(1.0, ge=0, le=1)
    """Pack fails, naming the dataset and its fraction, when more than this fraction of a dataset's
    examples have their inputs cut, or their targets cut (each counted on its own; 1.0: never
    fails). A target cut short teaches the model to stop mid-answer."""

    @model_validator(mode="after")
    def _segments_fit(self) -> TokenizeConfig:
        width = self.max_input_tokens + self.max_target_tokens
        if self.model_kind == "decoder_only" and width > 65_535:
            raise ValueError(f"tokenize: a decoder-only row of max_input_tokens + max_target_tokens = "
                             f"{width} tokens is too long (at most 65535)")
        if self.model_kind == "encoder_decoder" and self.format == "text":
            raise ValueError("tokenize.format: text needs tokenize.model_kind: decoder_only (an "
                             "encoder-decoder's input and target are apart already); allowed with "
                             "encoder_decoder: eos, auto")
        if self.model_kind == "encoder_decoder" and self.format == "chat":
            raise ValueError("tokenize.format: chat needs tokenize.model_kind: decoder_only (a chat template "
                             "renders one sequence of turns); allowed with encoder_decoder: eos, auto")
        if self.format == "chat" and self.add_bos:
            raise ValueError("tokenize.add_bos: true with tokenize.format: chat; the chat template places "
                             "its own BOS where the model wants one; allowed with chat: null or false")
        return self

    def format_for(self, source: str) -> TrainFormat:
        """The format the packer writes for a model of ``train.model.source`` ``source`` (``auto``
        resolved).

        >>> TokenizeConfig().format_for("pretrained"), TokenizeConfig().format_for("config")
        ('text', 'eos')
        """
        if self.format != "auto":
            return self.format
        return "text" if source == "pretrained" and self.model_kind == "decoder_only" else "eos"


class ModelSpec(_Section):
    """The model to instruction-tune: a local Hugging Face checkpoint, or a new one of a `transformers`
    architecture built from these sizes."""

    source: Literal["config", "pretrained"] = "config"
    """`config`: a new, randomly initialised `architecture` model of the sizes below (vocabulary = the
    tokenizer's, padded to a multiple of 128); `pretrained`: the checkpoint at `path` (any local
    `transformers` causal LM folder, never fetched from a hub at run time), with its own tokenizer
    (`tokenize.tokenizer.source: auto`)."""
    path: str | None = None
    """`pretrained` only: a local folder with `config.json` and safetensors weights."""
    architecture: Literal["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt_neox", "olmo2",
                          "phi3", "t5", "mt5", "umt5"] = "llama"
    """`config` only: the `transformers` model family of a new model (its `model_type`; `gemma3` is
    Gemma 3's text-only `gemma3_text`). `t5`, `mt5` and `umt5` are encoder-decoders (T5 v1.1 / FLAN-T5 shape:
    gated-GELU, `num_layers` on each side), trained on `tokenize.model_kind: encoder_decoder` rows."""
    hidden_size: StrictInt = Field(768, ge=8)
    num_layers: StrictInt = Field(12, ge=1)
    num_heads: StrictInt = Field(12, ge=1)
    num_kv_heads: StrictInt | None = Field(None, ge=1)
    """Grouped-query attention; null: as many as `num_heads`."""
    intermediate_size: StrictInt | None = Field(None, ge=8)
    """null: 8/3 x hidden_size rounded up to a multiple of 64 (gated MLPs), 4 x hidden_size (GPT-NeoX)."""
    tie_word_embeddings: bool = False
    hf_config: dict[str, Any] = Field(default_factory=dict)
    """`config` only: more attributes of the `transformers` config, set as given, e.g.
    `{rope_parameters: {rope_type: llama3, factor: 8.0, ...}}` or `{sliding_window: 512}`; each key
    must be an attribute of the architecture's config class."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass (`transformers`' gradient
    checkpointing): less memory for long rows and big models, about a third more compute."""

    @model_validator(mode="after")
    def _path_matches_source(self) -> ModelSpec:
        if self.source == "pretrained" and not self.path:
            raise ValueError("train.model.path: source 'pretrained' needs a local checkpoint folder")
        if self.source == "config" and self.path:
            raise ValueError("train.model.path is only used with source 'pretrained', not 'config'")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"train.model.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"train.model.num_heads ({self.num_heads})")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"train.model.num_heads ({self.num_heads}) must be a multiple of "
                             f"train.model.num_kv_heads ({self.num_kv_heads})")
        return self


class AdapterConfig(_Section):
    """`train.adapter`: full fine-tuning (`none`) or LoRA adapters through `peft` on a frozen base."""

    kind: Literal["none", "lora", "qlora"] = "none"
    """`none`: every weight trains (full fine-tuning); `lora`: low-rank adapters (`peft`'s LoRA) on
    `target_modules`, the base frozen (and, under ZeRO-3, partitioned as it loads); only the adapter
    weights reach the optimizer. `qlora` is refused: its 4-bit base cannot be partitioned by ZeRO-3."""
    rank: StrictInt = Field(16, ge=1)
    """LoRA's rank r: each adapted `d_out x d_in` weight gains `B (d_out x r) @ A (r x d_in)`."""
    alpha: StrictFloat = Field(32.0, gt=0)
    """LoRA's scale numerator: the update is `alpha / rank * B @ A` (peft's `lora_alpha`)."""
    dropout: StrictFloat = Field(0.0, ge=0, lt=1)
    """Dropout on each adapted layer's input to the adapter branch (peft's `lora_dropout`); seeded per
    step and rank, so a resumed run draws the same masks."""
    target_modules: Literal["auto"] | list[str] = "auto"
    """The linear layers to adapt: `auto`, every attention and MLP projection of the architecture
    (peft's `all-linear`: every linear layer but the output head), or a list of module names
    (e.g. `[q_proj, v_proj]`, matched as peft matches them: name suffixes)."""

    @model_validator(mode="after")
    def _no_qlora(self) -> AdapterConfig:
        if self.kind == "qlora":
            raise ValueError("train.adapter.kind: 'qlora' is not supported: its 4-bit (bitsandbytes) base "
                             "weights cannot be partitioned by DeepSpeed ZeRO-3, which flanpipe trains "
                             "with; allowed: none, lora")
        if self.kind == "lora" and isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("train.adapter.target_modules: an empty list; allowed: auto or module names")
        return self


class MlflowConfig(_Section):
    """`train.mlflow`: the MLflow tracking server or folder."""

    tracking_uri: str = "mlruns"
    """An MLflow tracking URI (`http://host:5000`, `sqlite:///mlflow.db`) or a local folder, relative to
    the working directory (the default `mlruns/`, as MLflow's own)."""
    experiment: str = "flanpipe"
    """The MLflow experiment the runs go in; each run is named after its mixture."""


class WandbConfig(_Section):
    """`train.wandb`: the Weights & Biases project and mode."""

    project: str = "flanpipe"
    mode: Literal["auto", "online", "offline"] = "auto"
    """`auto`: `offline` where `WANDB_MODE` says so or there is no API key (the run folder under
    `wandb/` of the model folder, uploaded later with `wandb sync`), else `online`."""


class TrainConfig(_Section):
    """Stage 5: instruction tuning with DeepSpeed, one model per mixture. GPUs, nodes and time limits
    come from the Snakemake profile, not from here."""

    steps: StrictInt = Field(30_000, ge=1)
    """Optimizer steps."""
    tokens_per_batch: StrictInt = Field(8_192, ge=1)
    """Token slots per optimizer step over all ranks and accumulation steps: packed rows per step =
    this / row length, rounded to a multiple of micro_batch_rows x ranks (at least one each)."""
    micro_batch_rows: StrictInt = Field(1, ge=1)
    """Packed rows per rank per forward pass; gradient accumulation makes up the rest of the batch."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    """`adafactor` with an absolute learning rate (the paper's), or `adamw`. Both update each
    original tensor the same whatever the ZeRO stage and the number of ranks."""
    lr: StrictFloat = Field(3e-5, gt=0)
    """Constant learning rate (after the warm-up); the paper's 3e-5."""
    warmup_steps: StrictInt = Field(0, ge=0)
    """Linear warm-up steps (the paper: none)."""
    weight_decay: StrictFloat = Field(0.0, ge=0)
    """Decoupled weight decay, `p -= lr * weight_decay * p` (the paper: none)."""
    adafactor_decay_rate: StrictFloat = Field(0.8, gt=0, le=1)
    """Adafactor's second-moment decay exponent: `beta2 = 1 - step ** -decay_rate` (the paper's 0.8)."""
    adafactor_clip_threshold: StrictFloat = Field(1.0, gt=0)
    """Adafactor's update clipping: each tensor's update is scaled down to at most this RMS (the
    paper's 1.0)."""
    adafactor_beta1: StrictFloat | None = Field(None, ge=0, lt=1)
    """Adafactor's momentum of the clipped updates; null: none, as the paper (no first moment kept)."""
    adam_betas: tuple[StrictFloat, StrictFloat] = (0.9, 0.95)
    """AdamW's betas."""
    grad_clip: StrictFloat = Field(0.0, ge=0)
    """Also clip the global gradient norm to this (0: no clipping, as the paper: Adafactor clips
    each tensor's update already)."""
    zero_stage: StrictInt = Field(3, ge=0, le=3)
    """DeepSpeed ZeRO stage (3: parameters, gradients and optimizer state partitioned)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """The weights' precision while training. `auto`: bf16 on a GPU that supports it, and on a CPU
    only where it has bf16 matrix units (AMX or AVX512-BF16); fp32 elsewhere, where bf16 is emulated
    and about 5 times slower. `run.json` records the choice and why (`flanpipe bench precision`
    says what this machine would choose)."""
    attention: Literal["auto", "sdpa", "flex", "eager"] = "auto"
    """The `transformers` attention kernel, given a segment mask of the packed rows: `flex`
    (FlexAttention with a block mask, no T x T mask; GPU), `sdpa` (a boolean T x T mask; CPU),
    `eager` (the plain implementation; Gemma 2's attention soft-capping needs it or `flex`) or
    `auto` (flex on GPU, sdpa on CPU; sdpa for encoder-decoders everywhere)."""
    checkpoint_every: StrictInt = Field(1_000, ge=1)
    """Save a DeepSpeed checkpoint every N steps (and at the end); `train` resumes from the latest."""
    keep_checkpoints: StrictInt = Field(2, ge=1)
    log_every: StrictInt = Field(10, ge=1)
    """Write metrics every N steps."""
    max_nonfinite_steps: StrictInt = Field(0, ge=0)
    """Steps whose loss is NaN or infinite that the run may skip (no update applied; counted in
    `run.json`) before it stops. 0: the first one stops the run, before its update and before any
    checkpoint of it, naming the step and its examples. A non-finite gradient norm always stops."""
    trackers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["csv", "tensorboard"])
    """Where rank 0 logs the run (`flanpipe.core.train.trackers`): `csv` (`metrics.csv`, needed by the
    loss plot), `tensorboard`, `mlflow` (params, metrics per step, `run.json` and the loss plot as
    artifacts) and `wandb` (offline where there is no network; `wandb sync` later). A tracker whose
    package is missing fails when the config is read."""
    mlflow: MlflowConfig = Field(default_factory=lambda: MlflowConfig())
    """`trackers: [mlflow]`: where the runs go."""
    wandb: WandbConfig = Field(default_factory=lambda: WandbConfig())
    """`trackers: [wandb]`: the project and the mode."""

    @field_validator("trackers")
    @classmethod
    def _trackers_installed(cls, trackers: list[str]) -> list[str]:
        import importlib.util

        if "csv" not in trackers:
            raise ValueError("train.trackers: csv is needed (the loss plot and a resumed run read "
                             "metrics.csv); allowed: csv plus any of tensorboard, mlflow, wandb")
        if len(set(trackers)) != len(trackers):
            raise ValueError(f"train.trackers: {trackers} names a tracker twice")
        packages = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
        for name in trackers:
            try:
                found = name not in packages or importlib.util.find_spec(packages[name]) is not None
            except (ImportError, ValueError):  # (a package present but broken)
                found = False
            if not found:
                raise ValueError(f"train.trackers: {name} needs the package {packages[name]!r}, which is not "
                                 f"installed (pip install 'flanpipe[trackers]')")
        return trackers
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    """`none` (full fine-tuning) or LoRA adapters on a frozen base (see docs/stages/train.md)."""
    eval_every: StrictInt | None = Field(None, ge=1)
    """Held-out accuracy over training: at step 0 (the base), every N optimizer steps and at the last,
    score a fixed slice of each of the model's held-out datasets that has options to rank (rank
    classification in the model's own format, with evaluation's templates, headline normalization
    and OPTIONS suffix) and the gold answers' loss, into `metrics.csv` and TensorBoard, drawn by the
    report. null: off."""
    eval_rows: StrictInt = Field(32, ge=1)
    """Rows of that slice per dataset: the seeded sample `evaluate.max_examples` draws, so a
    `flanpipe evaluate` of a step's checkpoint with `evaluate.max_examples` set to this scores the
    very same rows."""
    select: Literal["last", "best_val"] = "last"
    """The exported model: the last step's weights, or (`best_val`, needs `eval_every`) those of the
    scored step with the best mean score on a validation slice of the training datasets
    (`val_datasets`; the earliest of ties). A held-out dataset never chooses a checkpoint."""
    val_datasets: list[str] | None = None
    """`select: best_val`'s validation datasets (a seeded slice of `eval_rows` rows of each one's eval
    split). null: the model's training datasets with an eval split and options to rank. A dataset of
    a held-out cluster is refused."""

    @model_validator(mode="after")
    def _select_needs_curve(self) -> TrainConfig:
        if self.select == "best_val" and self.eval_every is None:
            raise ValueError("train.select: best_val chooses among the scored steps; set train.eval_every "
                             "(allowed: select last without eval_every)")
        return self


class GenerationConfig(_Section):
    """Decoding for open-ended eval tasks (translation, summarization, QA, struct to text)."""

    max_new_tokens: StrictInt = Field(64, ge=1, le=4096)
    """Most tokens generated per example (generation stops earlier at EOS)."""
    sample: bool = False
    """Also sample (temperature, top-k) besides greedy decoding, reported as its own variant."""
    temperature: StrictFloat = Field(0.9, gt=0.0)
    """Sampling temperature (the paper's sample outputs used 0.9)."""
    top_k: StrictInt = Field(40, ge=0)
    """Sample among the k most likely tokens (the paper's 40); 0: the whole vocabulary."""


class EvaluateConfig(_Section):
    """Stage 6: zero-shot and few-shot evaluation of every model on its held-out clusters."""

    max_examples: StrictInt | None = Field(None, ge=1)
    """Eval examples per dataset, a seeded sample of the eval split; null: all of them."""
    max_templates: StrictInt | None = Field(None, ge=1)
    """Score each dataset with its first this many eval templates (null: every one, up to 10); a
    held-out score is their mean."""
    max_templates_by_dataset: dict[str, Annotated[StrictInt, Field(ge=1)]] = Field(default_factory=dict)
    """`max_templates` for the datasets named here (registry names; one the run leaves out is
    unused), e.g. `{piqa: 2}`: more templates where a dataset's rows alone leave its interval too
    wide (averaging over templates narrows the spread of each row's score), fewer where scoring is
    dear."""
    normalization: Literal["sum", "per_token", "per_char", "pmi"] = "sum"
    """Rank classification's headline score of an option (all four are reported): its tokens' summed
    log-likelihood (lm-eval `acc`), that divided by its token count, or by its character count
    (lm-eval `acc_norm`), or `pmi`: minus its log-likelihood after the answer prefix alone (lm-eval
    `acc_mutual_info`, OLMES `acc_uncond`)."""
    pmi_prefix: str = ""
    """The text PMI's unconditional term scores each option after (in the model's format): empty,
    as lm-eval's `acc_mutual_info`, or an answer cue such as `Answer:` (OLMES)."""
    target_delimiter: str = " "
    """In the `continuation` format (a model flanpipe did not train): the text between a prompt and
    its option, lm-eval's `target_delimiter`."""
    cross_formats: bool = True
    """Also score every model in the other format of the pair (the run's `tokenize.format`,
    `continuation`): the base in the format the tuned models were trained in, a tuned model as a
    plain continuation. The report then shows what share of a base-vs-tuned gap the format alone
    explains. Doubles the scoring."""
    bootstrap: StrictInt = Field(1000, ge=0, le=100_000)
    """Resamples of the eval examples behind every headline's 95% interval (0: no intervals)."""
    options_suffix: Literal["with", "without"] = "with"
    """The headline variant: prompts with the OPTIONS suffix (as the paper evaluates) or without
    it."""
    variants: Literal["all", "headline"] = "all"
    """Rank classification's variants: `all` scores and reports prompts with and without the OPTIONS
    suffix, each option under every normalization; `headline` only what the headline needs (its
    `options_suffix`, and PMI's unconditional pass only where `normalization` is `pmi`): about half
    the scoring, for an experiment that spends its budget on rows."""
    few_shot: bool = True
    """Also evaluate few-shot (k exemplars, `templatize.few_shot`) as its own targets."""
    base_model: bool = True
    """Also evaluate the untuned base model (the initial weights, or the pretrained checkpoint)."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """The weights' precision while scoring. `auto`: bf16 on a GPU that supports it, and on a CPU
    only where it has bf16 matrix units (AMX or AVX512-BF16: about 2.4 times as fast as fp32 there);
    fp32 elsewhere, where bf16 is emulated and about 5 times slower. The eval JSON records the choice
    and why."""
    max_batch_tokens: StrictInt = Field(16_384, ge=256)
    """Padded tokens per inference batch (a prompt with all of its options, or with its new tokens)."""

    @field_validator("max_templates_by_dataset")
    @classmethod
    def _known_datasets(cls, value: dict[str, int]) -> dict[str, int]:
        """A name outside the registry is a typo; a registry dataset the run leaves out is unused
        (so a narrower `datasets` on the command line keeps an experiment's config valid)."""
        _refuse_unknown_datasets(sorted(value))
        return value

    def templates_for(self, dataset: str) -> int | None:
        """How many of ``dataset``'s eval templates are scored (None: every one).

        >>> EvaluateConfig(max_templates=1, max_templates_by_dataset={"piqa": 2}).templates_for("copa")
        1
        """
        return self.max_templates_by_dataset.get(dataset, self.max_templates)


class AblationsConfig(_Section):
    """The paper's ablations, each a Snakemake target (`ablation_clusters`, `ablation_format`), trained
    without `heldout` and evaluated zero-shot on its datasets."""

    enabled: bool = False
    """Build the ablations: their models and evaluations (targets `ablation_clusters` and
    `ablation_format`), part of `all` and the report. Off by default: 10 more models at FLAN scale."""
    heldout: list[str] = Field(default_factory=lambda: ["nli", "closed_book_qa", "commonsense"])
    """Clusters every ablation model leaves out (with the clusters they exclude) and is evaluated on."""
    clusters: list[str] = Field(default_factory=lambda: [
        "summarization", "translation", "reading_comprehension", "sentiment", "struct_to_text",
        "coreference", "misc"])
    """Training clusters added one at a time (the paper's Figure 6 order): a model on the first 1, 2,
    ..., N of them."""
    formats: list[TemplateFormat] = Field(
        default_factory=lambda: ["instructions", "no_template", "dataset_name"])
    """Instruction formats to train on (all N clusters); every one is evaluated with instructions."""
    kinds: list[Literal["clusters", "format"]] = Field(default_factory=lambda: ["clusters", "format"])
    """Which ablations to build. A point whose training data is a held-out model's (the same
    datasets, format and held-out clusters) reuses that model and its results."""


class ExperimentConfig(_Section):
    """How many times each model is trained: the same mixture under several training seeds."""

    seeds: list[StrictInt] | None = None
    """Training seeds: each held-out model (and `all`) is trained and evaluated once per seed, under
    `models/<mixture>/seed-<s>/` and `results/eval/<cluster>/seed-<s>/`. A seed changes training's
    randomness alone (new weights' initialisation, LoRA's, data order, dropout: the train stage's
    `seed`); the data, mixtures, templates and eval rows keep deriving from the root `seed`. The
    report gives tuned minus base per seed, with the mean and spread over seeds beside the interval
    over rows. Ablation models train once, with the root `seed`. null: one training per model with
    the root `seed`, in `models/<mixture>/` (a list `[<seed>]` holding the root seed trains the
    same weights in the seed folder)."""

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("the seed list is empty; allowed: null (one training with the root seed) or "
                             "a list of distinct integers in [0, 2**31 - 1]")
        bad = [s for s in value if not 0 <= s <= 2**31 - 1]
        if bad:
            raise ValueError(f"seed(s) {bad} out of range; allowed: distinct integers in [0, 2**31 - 1]")
        twice = sorted({s for s in value if value.count(s) > 1})
        if twice:
            raise ValueError(f"seed(s) {twice} listed twice; allowed: distinct integers")
        return value
