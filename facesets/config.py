"""Configuration: load YAML, fill defaults and validate against the JSON schemas.

One place for the rules: ``config/schemas/*.schema.yaml``. Every error names the
file, the key and the allowed values, so a typo stops the run before anything starts.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from facesets.errors import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "config" / "schemas"


@dataclass(frozen=True)
class Source:
    """One photo source (config/sources/<name>.yaml) with its effective settings."""

    name: str
    kind: str
    root: Path
    file: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    settings: Mapping[str, Any] = field(repr=False)
    immich: Mapping[str, Any] | None = field(default=None, repr=False)  # kind immich: the `immich` block


@dataclass(frozen=True)
class WorkflowConfig:
    """The validated global config plus its sources."""

    settings: Mapping[str, Any]
    sources: tuple[Source, ...]

    @property
    def work_root(self) -> Path:
        return Path(self.settings["work_root"])

    @property
    def output_root(self) -> Path:
        return Path(self.settings["output_root"])

    @property
    def model_dir(self) -> Path:
        return Path(self.settings["model_dir"] or self.work_root / "models")

    def source(self, name: str) -> Source:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)


def load_schema(name: str) -> dict[str, Any]:
    with open(SCHEMA_DIR / f"{name}.schema.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Fill ``default`` values of object properties, recursively, in place."""
    if not isinstance(instance, dict) or schema.get("type") not in ("object", None):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def _coerce_scalars(instance: Any, schema: Mapping[str, Any]) -> None:
    """Turn strings into the numbers/booleans the schema asks for, in place.

    ``snakemake --config 'embed={shards: 3}'`` delivers nested values as strings; a value that
    does not parse is left alone, so validation still reports it.
    """
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance:
            continue
        value, types = instance[key], sub.get("type")
        types = set(types) if isinstance(types, list) else {types}
        if isinstance(value, str):
            for t, conv in (("integer", int), ("number", float)):
                if t in types:
                    try:
                        instance[key] = conv(value)
                        break
                    except ValueError:
                        pass
            if "boolean" in types and value.lower() in ("true", "false"):
                instance[key] = value.lower() == "true"
        elif isinstance(value, dict):
            _coerce_scalars(value, sub)


def _allowed(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return ", ".join(map(str, schema["enum"]))
    if "items" in schema and "enum" in schema["items"]:
        return ", ".join(map(str, schema["items"]["enum"]))
    parts = []
    if "type" in schema:
        parts.append(f"type {schema['type']}")
    for k in ("minimum", "maximum", "multipleOf", "pattern"):
        if k in schema:
            parts.append(f"{k} {schema[k]}")
    return ", ".join(parts)


def _format_error(err: jsonschema.ValidationError, where: str) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        prefix = f"{key}." if err.absolute_path else ""
        return (
            f"{where}: unknown key {', '.join(prefix + e for e in extra)!s}; "
            f"allowed keys{' under ' + key if err.absolute_path else ''}: {', '.join(allowed)}"
        )
    if err.validator == "required":
        return f"{where}: missing required key: {err.message}"
    allowed = _allowed(err.schema)
    msg = f"{where}: key '{key}': {err.message}"
    if allowed and err.validator != "type":
        msg += f" (allowed: {allowed})"
    elif allowed:
        msg += f" (expected {allowed})"
    return msg


def validate(instance: dict[str, Any], schema: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Fill defaults into a copy of ``instance`` and validate it; raise ConfigError."""
    if not isinstance(instance, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(instance).__name__}")
    data = copy.deepcopy(instance)
    _coerce_scalars(data, schema)
    _fill_defaults(data, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_format_error(e, where) for e in errors))
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_source(path: str, settings: Mapping[str, Any], schema: Mapping[str, Any]) -> Source:
    raw = read_yaml(path)
    from facesets.immich.settings import check_env_names, label_of, staging_root

    check_env_names(raw, path)  # before the schema, whose messages would echo a pasted secret
    data = validate(raw, schema, path)
    merged = deep_merge(settings, data.get("overrides", {}))
    merged = validate(merged, load_schema("config"), f"{path} (overrides)")
    if data["kind"] == "immich":  # the staged copy is the source's root
        data["path"] = str(staging_root(merged["work_root"], label_of(data["immich"], data["name"])) / "files")
    root = Path(os.path.expanduser(data["path"]))
    if data["kind"] != "immich" and not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ConfigError(
            f"{path}: key 'path': {data['path']} {what} (resolved to {os.path.abspath(root)};"
            f" relative paths are relative to the directory you run in, {os.getcwd()})"
        )
    return Source(
        name=data["name"],
        kind=data["kind"],
        root=Path(os.path.abspath(root)),
        file=path,
        include=tuple(data.get("include", merged["stage"]["include"])),
        exclude=tuple(data.get("exclude", merged["stage"]["exclude"])),
        settings=merged,
        immich=data.get("immich"),
    )


def load_workflow_config(config: Mapping[str, Any], where: str = "config") -> WorkflowConfig:
    """Validate a merged Snakemake ``config`` dict and load its sources."""
    settings = validate(dict(config), load_schema("config"), where)
    source_schema = load_schema("source")
    sources = [load_source(p, settings, source_schema) for p in settings["sources"]]
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: key 'sources': duplicate source name(s): {', '.join(dupes)}")
    return WorkflowConfig(settings=settings, sources=tuple(sources))


def load_config_files(paths: Iterable[str], overrides: Mapping[str, Any] | None = None) -> WorkflowConfig:
    """Load config the way Snakemake does (later files win), for the CLI."""
    merged: dict[str, Any] = {}
    for p in paths:
        merged = deep_merge(merged, read_yaml(p))
    merged = deep_merge(merged, overrides or {})
    return load_workflow_config(merged, where=" + ".join(paths) or "config")
