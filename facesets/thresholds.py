"""Identity thresholds per embedding model: the one place they are defined.

Every stage that compares embeddings (cluster, refine, extend, routing, era split) takes its
numbers from the profile of the model that produced the face table, so switching the backend
never leaves a buffalo_l number applied to SFace embeddings. docs/thresholds.md explains the
SFace calibration. All values are cosine distances (1 - cosine similarity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelThresholds:
    name: str
    match: float  # a face joins an existing identity (distance to its centroid/prototype)
    cluster: float  # average-linkage cut for raw clusters
    merge: float  # centroid merge of clusters
    outlier: float  # outlier rejection (face to centroid), clusters >= 4 faces
    outlier_tight: float  # second, tighter pass (hand-sorted identities, export gate)

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


# The seed's numbers, for insightface packs with an ArcFace recognizer (buffalo_l).
ARCFACE = ModelThresholds("arcface-buffalo_l", match=0.45, cluster=0.55, merge=0.40, outlier=0.55, outlier_tight=0.45)
# SFace (opencv backend): calibrated, see docs/thresholds.md.
SFACE = ModelThresholds("sface-2021dec", match=0.42, cluster=0.52, merge=0.38, outlier=0.52, outlier_tight=0.42)

_BY_PREFIX = (("opencv-yunet-sface", SFACE),)

# insightface packs by name: the profile belongs to the pack's *recognizer*. buffalo_l and
# buffalo_m ship the same ArcFace R50 (w600k_r50.onnx; only their detectors differ), so they
# share the seed's numbers. buffalo_s / buffalo_sc (MobileFaceNet, w600k_mbf) and antelopev2
# (glintr100) have other embedding spaces that nobody calibrated here: rather than apply R50
# numbers to them (or to a pack we do not know), for_model stops with an error that names the
# pack. A local folder pack is known by its folder name (a copy of buffalo_l in a folder named
# buffalo_l gets buffalo_l's profile).
INSIGHTFACE_PACKS = {"buffalo_l": ARCFACE, "buffalo_m": ARCFACE}


def insightface_profile(pack: str) -> ModelThresholds | None:
    return INSIGHTFACE_PACKS.get(pack)


def _insightface_pack_of(model_id: str) -> str:
    """``insightface-<pack>-<settings hash>`` (or ``insightface-<pack>``) -> ``<pack>``."""
    rest = model_id[len("insightface-") :]
    head, sep, _ = rest.rpartition("-")
    return head if sep else rest


def for_model(model_id: str) -> ModelThresholds:
    """The profile for a face table's ``model_id``."""
    for prefix, profile in _BY_PREFIX:
        if model_id.startswith(prefix):
            return profile
    if model_id.startswith("insightface-"):
        pack = _insightface_pack_of(model_id)
        profile = insightface_profile(pack)
        if profile is None:
            raise ValueError(
                f"no threshold profile for insightface pack {pack!r} (model {model_id!r}): its recognizer has not "
                f"been calibrated; calibrated packs: {', '.join(sorted(INSIGHTFACE_PACKS))} "
                "(embed.insightface.pack; see docs/thresholds.md to calibrate one and add it to facesets/thresholds.py)"
            )
        return profile
    raise ValueError(
        f"no threshold profile for model {model_id!r}; known: {[p for p, _ in _BY_PREFIX]} and insightface packs "
        f"{sorted(INSIGHTFACE_PACKS)}"
    )


@dataclass(frozen=True)
class EraThresholds:
    """Distances of the era split (facesets/era.py), for one model.

    The seed tuned them on buffalo_l (``ERA_SEED``); another model gets them scaled by the ratio
    of its ``outlier`` threshold to buffalo_l's (the recovery radius *is* the outlier threshold),
    the same ratio transfer that gave the SFace profile (docs/thresholds.md).
    """

    recover: float  # wide recovery: face to the curated faceset's centroid
    tighten: float  # face to the re-computed centroid of the recovered faces
    subcluster: float  # average-linkage cut of the sub-clusters (eras in the making)
    attach: float  # fragment centroid to anchor centroid
    probe: tuple[float, ...]  # sub-cluster cuts the probe report shows


ERA_SEED = EraThresholds(recover=0.55, tighten=0.50, subcluster=0.35, attach=0.40, probe=(0.30, 0.35, 0.40, 0.45, 0.50))


def era_for_model(model_id: str) -> EraThresholds:
    """``ERA_SEED`` scaled to the model of ``model_id`` (rounded to 3 decimals)."""
    profile = for_model(model_id)
    s = profile.outlier / ARCFACE.outlier
    return EraThresholds(
        recover=profile.outlier,
        tighten=round(ERA_SEED.tighten * s, 3),
        subcluster=round(ERA_SEED.subcluster * s, 3),
        attach=round(ERA_SEED.attach * s, 3),
        probe=tuple(round(t * s, 3) for t in ERA_SEED.probe),
    )
