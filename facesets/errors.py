"""Error types shared by every layer (a leaf module: it imports nothing from facesets).

The CLI turns each of them into one line on stderr and exit status 2; the workflow's config
loading reports them before any rule runs.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


class InputError(ValueError):
    """An input file that is missing or is not what the command expects; the message names the file."""
