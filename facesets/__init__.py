"""face-sets: turn photo libraries into per-identity face sets."""

__version__ = "0.1.0"
