"""The typed model of the whole flanpipe config, validated once, in four modules by concern:

- :mod:`~flanpipe.core.config.sections`: one model per section, each field with its docstring and default;
- :mod:`~flanpipe.core.config.root`: :class:`Config`, the sections together and the checks across them;
- :mod:`~flanpipe.core.config.slices`: the keys each stage reads, typed by the sections they slice;
- :mod:`~flanpipe.core.config.parse`: a mapping or YAML file validated, the JSON schema;

and beside them the dataset registry (:mod:`~flanpipe.core.config.registry`) and what the config reads of
a checkpoint folder (:mod:`~flanpipe.core.config.checkpoints`). This package re-exports their public names.

``config/config.yaml`` is the embedded default. Snakemake loads it, :func:`parse_config` turns it into a
:class:`Config` (or raises :class:`ConfigError` naming the bad key and what is allowed), and the JSON
schema generated from the model (``config/config.schema.json``, ``flanpipe config-schema``) is also
given to Snakemake's ``validate()``.

>>> parse_config({"seed": 7}).seed
7
>>> parse_config({"seed": -1})
Traceback (most recent call last):
...
flanpipe.core.config.sections.ConfigError: invalid config:
  - seed: Input should be greater than or equal to 0 (got -1)
"""

from flanpipe.core.config.checkpoints import ENCODER_DECODER_ARCHITECTURES
from flanpipe.core.config.parse import (
    json_schema,
    json_schema_text,
    load_config,
    parse_config,
)
from flanpipe.core.config.root import Config
from flanpipe.core.config.sections import (
    DEFAULT_SUBMIXTURE,
    PROMPT_TYPES,
    AblationsConfig,
    AdapterConfig,
    ConfigError,
    DecontaminateConfig,
    DedupeConfig,
    DownloadConfig,
    EvaluateConfig,
    ExperimentConfig,
    FewShotConfig,
    GenerationConfig,
    MixConfig,
    ModelKind,
    ModelSpec,
    NearDedupeConfig,
    OptionsStyle,
    Packer,
    PromptMix,
    RegistryConfig,
    SourceKind,
    SourceSpec,
    SubmixtureConfig,
    TemplateBank,
    TemplateFormat,
    TemplateMixConfig,
    TemplatizeConfig,
    TokenizeConfig,
    TokenizerSource,
    TrainConfig,
    TrainFormat,
    Truncation,
)
from flanpipe.core.config.slices import (
    BaseModelSlice,
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
)

__all__ = [
    "AblationsConfig",
    "AdapterConfig",
    "BaseModelSlice",
    "Config",
    "ConfigError",
    "DEFAULT_SUBMIXTURE",
    "DecontaminateConfig",
    "DedupeConfig",
    "DedupeSlice",
    "DownloadConfig",
    "DownloadSlice",
    "ENCODER_DECODER_ARCHITECTURES",
    "EvaluateConfig",
    "EvaluateSlice",
    "ExperimentConfig",
    "FewShotConfig",
    "FingerprintSlice",
    "GenerationConfig",
    "MixConfig",
    "MixSlice",
    "ModelKind",
    "ModelSpec",
    "NearDedupeConfig",
    "OptionsStyle",
    "PROMPT_TYPES",
    "PackSlice",
    "Packer",
    "PoolSlice",
    "PromptMix",
    "ReportSlice",
    "Slice",
    "SourceKind",
    "RegistryConfig",
    "SourceSpec",
    "SubmixtureConfig",
    "TemplateBank",
    "TemplateFormat",
    "TemplateMixConfig",
    "TemplatizeConfig",
    "TemplatizeSlice",
    "TokenizeConfig",
    "TokenizerSlice",
    "TokenizerSource",
    "TrainConfig",
    "TrainFormat",
    "TrainSlice",
    "Truncation",
    "json_schema",
    "json_schema_text",
    "load_config",
    "parse_config",
]
