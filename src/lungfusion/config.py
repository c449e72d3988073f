"""Load and validate the pipeline config and the sample sheet's schema.

The schemas live in ``lungfusion/schemas/`` (``workflow/schemas/`` links to them so the
Snakefile validates with the very same files through ``snakemake.utils.validate``).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PACKAGE = "lungfusion.schemas"


class ConfigError(ValueError):
    """A config value that does not match the schema; the message names the key."""


def load_schema(name: str) -> dict:
    text = resources.files(SCHEMA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _extend_with_defaults(validator_class):
    """A validator that fills in schema defaults, as snakemake.utils.validate(set_default=True)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


def key_path(error: jsonschema.ValidationError) -> str:
    """Dotted path of the offending key, e.g. ``register.method``."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts += extra[:1]
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        parts += missing[:1]
    return ".".join(parts) or "<top level>"


def validate_config(config: dict, schema_name: str = "config.schema.yaml") -> dict:
    """Validate ``config`` in place (filling defaults) and return it; raise ConfigError naming the key."""
    schema = load_schema(schema_name)
    errors = sorted(_DefaultFillingValidator(schema).iter_errors(config), key=lambda e: e.path)
    if errors:
        lines = [f"  {key_path(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    return config


def section_settings(config: dict, name: str) -> dict:
    """A copy of one config section with the schema's defaults filled in and checked, for a
    stage called with a partial config (from Python rather than the command line)."""
    schema = load_schema("config.schema.yaml")["properties"][name]
    section = copy.deepcopy(config.get(name) or {})
    errors = list(_DefaultFillingValidator(schema).iter_errors(section))
    if errors:
        lines = [f"  {name}.{key_path(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    return section


def section_with_defaults(config: dict, name: str) -> dict:
    """One config section, its missing keys filled with the schema's defaults (not checked
    again: the command line validates the whole config when it loads it; a stage called from
    Python with a partial config gets the same defaults)."""
    return {**section_settings({}, name), **copy.deepcopy(config.get(name) or {})}


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(
    path: str | Path | None = "config.yaml",
    overrides: dict[str, Any] | None = None,
    require_file: bool = True,
) -> dict:
    """Read ``path`` (if present), apply ``overrides`` section by section, validate with defaults."""
    config: dict = {}
    if path is not None and Path(path).exists():
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    elif require_file and path is not None:
        raise FileNotFoundError(f"config file not found: {path}")
    if overrides:
        # a rule passes whole sections: replace them rather than merging into stale values
        config.update(copy.deepcopy(overrides))
    return validate_config(config)
