"""The ``insightface`` backend: a model pack (default buffalo_l), loaded lean.

insightface's ``FaceAnalysis`` builds an ONNX Runtime session for *every* ``.onnx`` of a pack
before ``allowed_modules`` filters them (buffalo_l: five sessions, each with ONNX Runtime's
default threading, i.e. one thread per core per session, which oversubscribes the embed's
worker threads). ``load_pack_models`` routes the files by their graph's shapes first (the
same rules as insightface's ``ModelRouter``, read from the ONNX file without a session) and
builds sessions only for the tasks a stage needs, through insightface's own ``get_model`` (so
its SCRFD / ArcFaceONNX / Landmark classes do the work), with ``threads`` intra-op threads
and a sequential executor per session. Under DirectML every session insightface runs
(including the fixed-size detector sessions SCRFD creates per input size) admits one ``run``
at a time, like our own (``base.SerializedSession``): the DirectML provider does not support
concurrent runs on one session.

insightface downloads a named pack to ``root`` on first use (its own download path, kept for
users; not reachable from our CI). ``pack`` may also be a folder of ONNX files, which is how
the tests drive this adapter through the real insightface code with tiny generated models.
Every file of the pack is hashed: into the model id (a changed pack is a new store key) and
against the digests recorded for it (``facesets.models.check_insightface_pack``).
buffalo_l's weights are for non-commercial research use only (insightface's model licence).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesets.analyzers.base import Detection, SerializedSession, l2_normalize, needs_serial_runs, settings_id

log = logging.getLogger(__name__)

DETECTION, RECOGNITION = "detection", "recognition"
# roop-unleashed re-detects every .fsz entry with the pack's SCRFD at these settings.
ROOP_DET_SIZE, ROOP_DET_THRESH = 640, 0.5


def pack_files(model_dir: str | Path) -> list[Path]:
    """Every file of a pack, nested ones included, in a stable order (not our own records)."""
    root = Path(model_dir)
    return sorted((p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".facesets")), key=_rel(root))


def _rel(root: Path) -> Callable[[Path], str]:
    return lambda p: p.relative_to(root).as_posix()


def file_digests(model_dir: str | Path) -> dict[str, str]:
    """Relative posix path -> sha256 of every pack file (each byte read once)."""
    root = Path(model_dir)
    out = {}
    for f in pack_files(root):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        out[f.relative_to(root).as_posix()] = h.hexdigest()
    return out


def _pack_digest(model_dir: str | Path, digests: dict[str, str] | None = None) -> str:
    """Content id of the whole pack (nested files too), so a changed pack is a new store key."""
    digests = file_digests(model_dir) if digests is None else digests
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}:{digests[name]}\n".encode())
    return h.hexdigest()[:16]


def route(onnx_file: str | Path) -> str | None:
    """The task insightface's ModelRouter would give this file, read from the graph alone
    (no session): >= 5 outputs -> detection; 192x192 input -> landmark_3d_68 (3309 outputs)
    or landmark_2d_<n>; 96x96 -> genderage; two inputs at 128 -> inswapper; a square input
    >= 112 and divisible by 16 -> recognition. None when insightface would not route it."""
    import onnx

    try:
        model = onnx.load_model(str(onnx_file), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is one insightface would skip too
        return None
    graph = model.graph
    if len(graph.output) >= 5:
        return DETECTION
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs:
        return None
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return None
    h, w = dims[2], dims[3]
    if (h, w) == (192, 192):
        out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        n = out[1] if len(out) > 1 else 0
        return "landmark_3d_68" if n == 3309 else f"landmark_2d_{n // 2}"
    if (h, w) == (96, 96):
        return "genderage"
    if len(inputs) == 2 and (h, w) == (128, 128):
        return "inswapper"
    if h == w and h >= 112 and h % 16 == 0:
        return RECOGNITION
    return None


def session_options(threads: int, serial: bool):
    """ONNX Runtime options of one pack session: ``threads`` intra-op threads, one inter-op
    thread, sequential execution; DirectML also needs memory patterns off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if serial:
        opts.enable_mem_pattern = False
    return opts


def choose_providers(providers: Sequence[str]) -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    if list(chosen) != list(providers):
        log.warning("providers %s requested, %s available: using %s", list(providers), sorted(available), chosen)
    return chosen


def resolve_pack_dir(pack: str, root: str | Path, download: bool = True) -> Path | None:
    """The pack's folder: ``pack`` itself when it is one, else ``<root>/models/<pack>``;
    missing and ``download``: insightface fetches it (its own download); else None."""
    direct = Path(pack).expanduser()
    if direct.is_dir():
        return direct.resolve()
    local = Path(root).expanduser() / "models" / pack
    if local.is_dir() and any(local.rglob("*.onnx")):
        return local.resolve()
    if not download:
        return None
    from insightface.utils import ensure_available

    return Path(ensure_available("models", pack, root=str(Path(root).expanduser()))).resolve()


def _serialize(model: Any) -> None:
    """Wrap the sessions of one insightface model so one ``run`` goes at a time."""
    if not isinstance(model.session, SerializedSession):
        model.session = SerializedSession(model.session)


def _serial_factory(model: Any) -> None:
    """SCRFD makes a fixed-size session per input size lazily: wrap those too."""
    inner = model.resolution_session_factory

    def factory(model_file, input_size, reference_session):
        made = inner(model_file, input_size, reference_session)
        return made if isinstance(made, SerializedSession) else SerializedSession(made)

    model.resolution_session_factory = factory
    pool = getattr(model, "_resolution_session_pool", None)
    if pool is not None:
        pool.session_factory = factory


@dataclass
class PackModels:
    model_dir: Path
    models: dict[str, Any]  # task -> insightface model object
    digests: dict[str, str]
    serial: bool
    sessions: int  # sessions built at load time


def load_pack_models(
    pack: str,
    root: str | Path,
    tasks: Iterable[str],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
    download: bool = True,
) -> PackModels:
    """The pack's models for ``tasks`` only (first file per task in name order, as
    FaceAnalysis picks), each session with ``threads`` threads; serialised under DirectML."""
    from insightface.model_zoo import model_zoo
    from insightface.model_zoo.package_manifest import has_model_package_manifest

    from facesets.models import check_insightface_pack

    model_dir = resolve_pack_dir(pack, root, download=download)
    if model_dir is None:
        raise FileNotFoundError(f"insightface pack {pack!r} is not on disk under {root}")
    digests = file_digests(model_dir)
    check_insightface_pack(Path(pack).name, model_dir, digests, Path(root).expanduser())
    chosen = choose_providers(providers)
    serial = needs_serial_runs(chosen)
    wanted = set(tasks)
    kwargs = {"providers": chosen, "sess_options": session_options(threads, serial)}
    models: dict[str, Any] = {}
    if has_model_package_manifest(str(model_dir)):
        # Manifest packages: FaceAnalysis filters their declared tasks before any session.
        from insightface.app import FaceAnalysis

        app = FaceAnalysis(name=str(model_dir), allowed_modules=sorted(wanted), **kwargs)
        models = dict(app.models)
    else:
        for f in sorted(model_dir.glob("*.onnx")):
            task = route(f)
            if task is None or task not in wanted or task in models:
                continue
            model = model_zoo.get_model(str(f), **kwargs)
            if model is None or model.taskname != task:
                raise RuntimeError(f"{f}: insightface routed it as {getattr(model, 'taskname', None)}, expected {task}")
            models[task] = model
    if serial:
        for model in models.values():
            _serialize(model)
            if getattr(model, "taskname", "") == DETECTION and hasattr(model, "resolution_session_factory"):
                _serial_factory(model)
    log.info(
        "insightface pack %s: loaded %s (%d of %d ONNX files), %d thread(s) per session%s",
        Path(pack).name,
        sorted(models),
        len(models),
        len(list(model_dir.glob("*.onnx"))),
        threads,
        ", runs serialised (DirectML)" if serial else "",
    )
    return PackModels(model_dir, models, digests, serial, len(models))


class InsightFaceAnalyzer:
    def __init__(
        self,
        pack: str = "buffalo_l",
        root: str = "~/.insightface",
        det_size: int = 640,
        det_thresh: float = 0.5,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 1,
    ) -> None:
        from facesets.thresholds import insightface_profile

        loaded = load_pack_models(pack, root, (DETECTION, RECOGNITION), providers, threads)
        if DETECTION not in loaded.models:
            raise ValueError(f"insightface pack {pack!r} ({loaded.model_dir}) has no detection model")
        if RECOGNITION not in loaded.models:
            raise ValueError(f"insightface pack {pack!r} ({loaded.model_dir}) has no recognition model")
        self.pack = loaded
        self.det_model = loaded.models[DETECTION]
        self.det_model.prepare(0, input_size=(det_size, det_size), det_thresh=det_thresh)
        self.recognizer = loaded.models[RECOGNITION]
        self.recognizer.prepare(0)
        self.det_size = det_size
        self.embedding_dim = int(self.recognizer.output_shape[-1])
        name = Path(pack).name
        if insightface_profile(name) is None:
            log.warning(
                "insightface pack %r has no calibrated threshold profile: embedding works, but clustering and "
                "export will stop with an error naming it (see facesets/thresholds.py)",
                name,
            )
        self.model_id = settings_id(
            f"insightface-{name}",
            {
                "pack": _pack_digest(loaded.model_dir, loaded.digests),
                "det_size": det_size,
                "det_thresh": det_thresh,
                "align": "insightface-norm_crop",
            },
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return scrfd_detect(self.det_model, rgb)

    def embed(self, rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        from insightface.app.common import Face

        if not detections:
            return np.zeros((0, self.embedding_dim), np.float32)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        feats = []
        for d in detections:
            face = Face(bbox=d.bbox, kps=d.kps, det_score=d.score)
            feats.append(np.asarray(self.recognizer.get(bgr, face), np.float32).reshape(-1))
        return l2_normalize(np.stack(feats))


def scrfd_detect(det_model: Any, rgb: np.ndarray) -> list[Detection]:
    """Faces an insightface SCRFD model finds in an RGB image (with their 5 keypoints)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    bboxes, kpss = det_model.detect(bgr, max_num=0, metric="default")
    dets = []
    for i in range(bboxes.shape[0]):
        kps = kpss[i] if kpss is not None else None
        if kps is None:
            continue  # alignment needs the 5 keypoints
        dets.append(Detection(bboxes[i, :4].astype(np.float32), kps.astype(np.float32), float(bboxes[i, 4])))
    return dets


class ScrfdCropChecker:
    """Counts faces in an export crop the way roop-unleashed will: the pack's own SCRFD
    (buffalo_l: det_10g) at det_size 640, threshold 0.5, every face kept. Only the detector
    is loaded (one session)."""

    def __init__(
        self,
        det_model: Any,
        pack_name: str,
        digest: str = "",
        det_size: int = ROOP_DET_SIZE,
        det_thresh: float = ROOP_DET_THRESH,
    ) -> None:
        self.det_model = det_model
        self.pack_name = pack_name
        self.id = f"scrfd-{pack_name}-{digest}-{det_size}-{det_thresh}"
        self.det_model.prepare(0, input_size=(det_size, det_size), det_thresh=det_thresh)

    def faces(self, rgb: np.ndarray) -> list[Detection]:
        return scrfd_detect(self.det_model, rgb)

    def count(self, rgb: np.ndarray) -> int:
        return len(self.faces(rgb))


def scrfd_crop_checker(
    pack: str = "buffalo_l",
    root: str = "~/.insightface",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
    det_size: int = ROOP_DET_SIZE,
    det_thresh: float = ROOP_DET_THRESH,
) -> ScrfdCropChecker | None:
    """The pack's SCRFD as a crop checker when the pack is on disk (never downloads); None
    when it is not (the export then re-checks with YuNet alone)."""
    try:
        loaded = load_pack_models(pack, root, (DETECTION,), providers, threads, download=False)
    except FileNotFoundError:
        return None
    det = loaded.models.get(DETECTION)
    if det is None:
        return None
    digest = _pack_digest(loaded.model_dir, loaded.digests)
    return ScrfdCropChecker(det, Path(pack).name, digest, det_size, det_thresh)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def union_detector(
    detect: Callable[[np.ndarray], list[Detection]], checker: ScrfdCropChecker, same_iou: float = 0.3
) -> Callable[[np.ndarray], list[Detection]]:
    """``detect``'s faces plus those only the pack's SCRFD finds (IoU < ``same_iou`` with all of
    them): a crop passes the export's single-face check only when neither detector sees a
    second face, and the target counts as found when either sees it."""

    def both(rgb: np.ndarray) -> list[Detection]:
        first = detect(rgb)
        extra = [d for d in checker.faces(rgb) if all(_iou(d.bbox, f.bbox) < same_iou for f in first)]
        return first + extra

    return both


def with_pack_detector(
    detect: Callable[[np.ndarray], list[Detection]],
    detector_id: str,
    insightface_settings: Mapping[str, Any],
    providers: Sequence[str],
    det_size: int = ROOP_DET_SIZE,
    det_thresh: float = ROOP_DET_THRESH,
) -> tuple[Callable[[np.ndarray], list[Detection]], str]:
    """Export's re-detection for a non-insightface backend: ``detect`` alone, or, when the
    configured insightface pack is on disk, ``detect`` united with its SCRFD (what roop runs).
    The returned id names both (it keys the crop cache). ``insightface_settings``: the validated
    ``embed.insightface`` block (the schema fills ``pack`` and ``root``)."""
    s = insightface_settings
    checker = scrfd_crop_checker(s["pack"], s["root"], providers, 1, det_size, det_thresh)
    if checker is None:
        return detect, detector_id
    log.info("export re-detection: %s and the insightface pack's SCRFD (%s)", detector_id, checker.pack_name)
    return union_detector(detect, checker), f"{detector_id}+{checker.id}"
