"""The numbers of one era split: the ``eras`` config section resolved for the embedding model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from facesets.thresholds import era_for_model


@dataclass(frozen=True)
class EraSettings:
    """The numbers of one split, every distance resolved for the model (see ``resolve_settings``)."""

    recover: float
    tighten: float
    subcluster: float
    attach: float
    probe_thresholds: tuple[float, ...]
    min_era_faces: int
    year_window: int
    attach_unknown_year: bool
    min_short: float
    min_blur: float
    min_det_score: float

    def gates(self) -> dict[str, float]:
        """The quality gates as a ``refine`` config section (facesets.refine.quality_gate)."""
        return {"min_short": self.min_short, "min_blur": self.min_blur, "min_det_score": self.min_det_score}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_thresholds"] = list(self.probe_thresholds)
        return d


def resolve_settings(model_id: str, section: Mapping[str, Any]) -> EraSettings:
    """An ``eras`` config section (partial is fine: schema defaults filled, validated) with its null
    distances taken from the model's profile."""
    from facesets.config import load_schema, validate

    section = validate(dict(section), load_schema("config")["properties"]["eras"], "eras settings")
    base = era_for_model(model_id)

    def pick(key: str, default: float) -> float:
        v = section.get(key)
        return float(default if v is None else v)

    probe = section.get("probe_thresholds")
    return EraSettings(
        recover=pick("recover", base.recover),
        tighten=pick("tighten", base.tighten),
        subcluster=pick("subcluster", base.subcluster),
        attach=pick("attach", base.attach),
        probe_thresholds=tuple(float(t) for t in (base.probe if probe is None else probe)),
        min_era_faces=int(section["min_era_faces"]),
        year_window=int(section["year_window"]),
        attach_unknown_year=bool(section["attach_unknown_year"]),
        min_short=float(section["min_short"]),
        min_blur=float(section["min_blur"]),
        min_det_score=float(section["min_det_score"]),
    )
