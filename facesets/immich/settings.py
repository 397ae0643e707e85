"""The ``immich`` block of a source YAML: checks that keep secrets out of messages, and the
resolution of environment variables at run time (never at config time)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesets.errors import ConfigError

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def check_env_names(raw: Any, where: str) -> None:
    """Reject ``url_env``/``api_key_env`` values that are not variable names, without echoing them.

    A pasted key or URL in place of the variable's name would otherwise be printed by the
    schema validator's message; this check runs first and names only the key.
    """
    block = raw.get("immich") if isinstance(raw, Mapping) else None
    if not isinstance(block, Mapping):
        return
    for key in ("url_env", "api_key_env"):
        if key not in block:
            continue
        value = block[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and ENV_NAME.match(v) for v in values):
            raise ConfigError(
                f"{where}: key 'immich.{key}' must be the NAME of an environment variable "
                f"(A-Z, 0-9, _; e.g. {'IMMICH_API_KEY' if key == 'api_key_env' else 'IMMICH_URL'})"
                f"{' or a list of names' if key == 'api_key_env' else ''}, not its value; "
                "the value given is not shown because it may be a secret"
            )


def key_envs(block: Mapping[str, Any]) -> tuple[str, ...]:
    v = block["api_key_env"]
    return tuple(v) if isinstance(v, list) else (v,)


@dataclass(frozen=True)
class ResolvedServer:
    url: str
    keys: tuple[tuple[str, str], ...]  # (env var name, key); the key is never printed

    def __repr__(self) -> str:
        return f"ResolvedServer({self.url!r}, keys from {', '.join('$' + n for n, _ in self.keys)})"


def resolve_env(block: Mapping[str, Any], where: str, environ: Mapping[str, str] | None = None) -> ResolvedServer:
    """Read the URL and key(s) from the environment; ConfigError naming the variable if unset."""
    env = os.environ if environ is None else environ
    url_name = block["url_env"]
    url = env.get(url_name, "").strip()
    if not url:
        raise ConfigError(f"{where}: environment variable {url_name} (immich.url_env) is not set or empty")
    keys = []
    for name in key_envs(block):
        key = env.get(name, "").strip()
        if not key:
            raise ConfigError(f"{where}: environment variable {name} (immich.api_key_env) is not set or empty")
        keys.append((name, key))
    ca = block.get("ca_bundle")
    if ca and not Path(ca).is_file():
        raise ConfigError(f"{where}: immich.ca_bundle {ca}: file not found")
    return ResolvedServer(url, tuple(keys))


def label_of(block: Mapping[str, Any], source_name: str) -> str:
    return block.get("label") or source_name


def staging_root(work_root: str | os.PathLike[str], label: str) -> Path:
    """``<work_root>/immich/<label>``: files/, state.json, report.json."""
    return Path(os.path.abspath(Path(work_root) / "immich" / label))
