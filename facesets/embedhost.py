"""Where an embed job runs, and its command-line pieces as that host needs them.

``local``: ``facesets embed`` in this environment with the config's ``providers``.
``windows``: a Windows Python started from WSL (``<windows_python> -m facesets embed``) with
``embed_host.windows_providers`` (DirectML first), every file argument a Windows path, and a
``--path-map`` telling it where the listing's (Linux) photo paths are on Windows.

The rule (rules/embed.smk) gets all of it from :meth:`EmbedHost.job_args` through a param
function of the job's input and output. Snakemake does not record such derived params as
rerun triggers (the files they derive from are tracked as input/output), so switching hosts
reruns nothing; tests/workflow/test_directml.py checks it.
"""

from __future__ import annotations

import base64
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facesets.winpath import WindowsPaths

KINDS = ("local", "windows")
B64 = "b64:"


def encode_arg(text: str) -> str:
    """``text`` without double quotes, for a Windows command line.

    WSL's interop does not escape double quotes inside arguments (microsoft/WSL#2411), so a
    JSON argument would reach a Windows program with its quotes stripped.
    """
    return B64 + base64.urlsafe_b64encode(text.encode()).decode()


def decode_arg(text: str) -> str:
    """The inverse of :func:`encode_arg`; other text passes unchanged."""
    return base64.urlsafe_b64decode(text[len(B64) :]).decode() if text.startswith(B64) else text


@dataclass(frozen=True)
class EmbedJobArgs:
    """An embed job's host-dependent command-line pieces (paths as the embed host sees them)."""

    launcher: str  # shell-ready: `facesets` or `'<python.exe>' -m facesets`
    providers: str  # comma-separated ONNX Runtime providers
    listing: str
    faces: str
    store: str
    model_dir: str
    settings: str  # the --embed-settings JSON (base64 for Windows: no double quotes)
    path_map: tuple[str, ...] = ()  # extra argv: ("--path-map", "LINUX_ROOT=HOST_ROOT") or ()


@dataclass(frozen=True)
class EmbedHost:
    kind: str
    providers: tuple[str, ...]
    python: str = ""
    windows_paths: WindowsPaths | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EmbedHost:
        """From the validated workflow settings (top-level ``providers`` + ``embed_host``)."""
        host = settings["embed_host"]
        if host["kind"] == "local":
            return cls("local", tuple(settings["providers"]))
        if host["kind"] == "windows":
            return cls(
                "windows",
                tuple(host["windows_providers"]),
                python=host["windows_python"],
                windows_paths=WindowsPaths.detect(host["wsl_distro"], host["unc_host"]),
            )
        raise ValueError(f"embed_host.kind {host['kind']!r}: allowed: {', '.join(KINDS)}")

    @property
    def launcher(self) -> str:
        """The program that runs ``facesets``, shell-quoted."""
        return "facesets" if self.kind == "local" else f"{shlex.quote(self.python)} -m facesets"

    @property
    def provider_list(self) -> str:
        return ",".join(self.providers)

    def path(self, path: str) -> str:
        return path if self.windows_paths is None else self.windows_paths(os.fspath(path))

    def job_args(
        self, listing: str, faces: str, store: str, model_dir: str, photo_root: str, settings: str
    ) -> EmbedJobArgs:
        path_map: tuple[str, ...] = ()
        if self.windows_paths is not None:
            root = os.path.abspath(photo_root)
            path_map = ("--path-map", f"{root}={self.path(root)}")
        return EmbedJobArgs(
            launcher=self.launcher,
            providers=self.provider_list,
            listing=self.path(listing),
            faces=self.path(faces),
            store=self.path(store),
            model_dir=self.path(model_dir),
            settings=settings if self.windows_paths is None else encode_arg(settings),
            path_map=path_map,
        )
