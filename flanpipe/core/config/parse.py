"""Reading a config: a mapping or a YAML file validated into a :class:`~flanpipe.core.config.root.Config`
(or a :class:`~flanpipe.core.config.sections.ConfigError` naming each bad key and what is allowed), and
the JSON schema generated from the model for Snakemake's ``validate()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flanpipe.core.config.root import Config
from flanpipe.core.config.sections import ConfigError


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith(("function-", "literal")))


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # union members appear in the location as type tags (`list[str]`); a reader wants the key
        key = ".".join(str(p) for p in e["loc"] if not _is_type_tag(p))
        msg = e["msg"].removeprefix("Value error, ")
        if not key:  # a check across keys names its key in the message itself
            lines.append(f"  - {msg}")
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config/config.yaml)"
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: dict[str, Any] | None) -> Config:
    """Validate a config mapping (as Snakemake or YAML gives it) into a :class:`Config`."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    with open(path, encoding="utf-8") as f:
        return parse_config(yaml.safe_load(f))


def json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`Config` used by Snakemake's ``validate()``."""
    schema = Config.model_json_schema()
    # The draft identifier tells jsonschema (and Snakemake's validate) which dialect this is.
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
