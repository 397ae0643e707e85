"""Options dataclasses from config sections: the defaults live only in config/schemas/config.schema.yaml.

An options dataclass (``ClusterOptions``, ``SheetOptions``, ...) declares the fields a stage
needs and no defaults; ``build`` fills it from a section validated against the schema, so a
default is written once (tests/unit/test_layout.py checks that no dataclass repeats one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def section(name: str, values: Mapping[str, Any] | None = None, where: str | None = None) -> dict[str, Any]:
    """The config section ``name`` with the schema's defaults filled in, validated (ConfigError)."""
    from facesets.config import load_schema, validate

    return validate(dict(values or {}), load_schema("config")["properties"][name], where or f"{name} settings")


def source_block(name: str, values: Mapping[str, Any] | None = None, where: str | None = None) -> dict[str, Any]:
    """The block ``name`` of a source file (config/schemas/source.schema.yaml, e.g. ``immich``)
    with its defaults filled in, validated (ConfigError); its required keys are not demanded
    (the staging settings need no server or key names)."""
    from facesets.config import load_schema, validate

    spec = {k: v for k, v in load_schema("source")["properties"][name].items() if k != "required"}
    return validate(dict(values or {}), spec, where or f"{name} settings")


def build(cls: type[T], name: str, values: Mapping[str, Any] | None = None, **override: Any) -> T:
    """``cls`` from section ``name`` (defaults filled in); ``override`` sets fields the section
    does not hold or that the caller resolved (e.g. a distance from the model profile)."""
    s = {**section(name, values), **override}
    return cls(**{f.name: s[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def threads(workers: int) -> int:
    """A ``workers`` setting as a thread count: 0 (the schema's "the job's threads") = the
    machine's threads; a Snakemake job passes its own ``--workers {threads}``."""
    return workers if workers > 0 else (os.cpu_count() or 1)
