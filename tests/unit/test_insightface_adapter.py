"""The insightface adapter, driven through the real insightface code with tiny models.

What this proves: our wiring. ``InsightFaceAnalyzer`` is built from a folder of ONNX
files exactly as from a downloaded pack, so insightface's own ``model_zoo`` loads it
(our lean loader picks the files a stage needs first), routes the files by their shapes (SCRFD detector, ArcFaceONNX
recognizer), its SCRFD code resizes, normalises and decodes the detector's outputs, and
its ArcFaceONNX code aligns (``norm_crop``) and preprocesses the crops. The models
(tests/support/onnx_models.py) compute known functions: the detector fires on bright squares
centred on its stride-32 anchor points, with the box being that square and the keypoints
the ArcFace template inside it; the recognizer is a fixed random linear map. So the
tests can assert real numbers: boxes and keypoints in image pixels (also through the
embed pipeline's reduced-size decode), and embeddings equal to an independent
computation (norm_crop of the BGR image at the detected keypoints, RGB, (x - 127.5) /
127.5, the known projection, L2 normalisation), which a channel swap, a wrong keypoint
scale or wrong preprocessing would break.

What this does not prove: anything about accuracy. The models find squares, not faces,
and buffalo_l itself (insightface's real pack) cannot be downloaded here; whether its
detections and embeddings are good is insightface's claim, not tested by this file.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facesets import imageio, schema
from facesets.embed import EmbedOptions, embed_listing, sidecar_paths
from facesets.listing import stage_source
from facesets.options import build
from facesets.store import FaceStore
from tests.support import onnx_models as om

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # skimage, inside norm_crop

DIM = 64
SEED = 7
BG = 20  # dark background grey level


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return om.write_pack(tmp_path_factory.mktemp("models") / "tinypack", dim=DIM, seed=SEED)


@pytest.fixture(scope="module")
def analyzer(pack, tmp_path_factory):
    from facesets.analyzers.insightface import InsightFaceAnalyzer

    root = tmp_path_factory.mktemp("insightface_root")
    return InsightFaceAnalyzer(pack=str(pack), root=str(root), det_size=640, det_thresh=0.5)


def blank(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), BG, np.uint8)


def paint_face(img: np.ndarray, x: int, y: int, size: int, seed: int, decoy: bool = False) -> None:
    """A bright random texture, red-dominant (R > G > B): the tiny detector fires on red.

    A decoy is the same texture with the channels reversed (blue-dominant): it must not fire.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.array([215, 170, 100]), np.array([256, 231, 161])
    tex = rng.integers(lo, hi, (size, size, 3)).astype(np.uint8)
    img[y : y + size, x : x + size] = tex[:, :, ::-1] if decoy else tex


def reference_embedding(rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """What the recognizer must return for a face: computed without ArcFaceONNX or onnxruntime."""
    from insightface.utils.face_align import norm_crop

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    aligned_bgr = norm_crop(bgr, landmark=np.asarray(kps, np.float32), image_size=om.REC_SIZE)
    x = (aligned_bgr[:, :, ::-1].astype(np.float64) - 127.5) / 127.5  # RGB, ArcFace normalisation
    chw = x.transpose(2, 0, 1)
    n = om.REC_SIZE // om.REC_POOL
    pooled = chw.reshape(3, n, om.REC_POOL, n, om.REC_POOL).mean(axis=(2, 4))
    feat = pooled.reshape(-1) @ om.arcface_weights(DIM, SEED).astype(np.float64)
    return (feat / np.linalg.norm(feat)).astype(np.float32)


def test_pack_routes_to_scrfd_and_arcface(analyzer, pack):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert all(p.stat().st_size < 2_000_000 for p in pack.glob("*.onnx"))
    assert set(analyzer.pack.models) == {"detection", "recognition"}
    det, rec = analyzer.det_model, analyzer.recognizer
    assert isinstance(det, SCRFD) and isinstance(rec, ArcFaceONNX)
    assert (det.fmc, det._feat_stride_fpn, det._num_anchors, det.use_kps) == (3, [8, 16, 32], 2, True)
    assert det.static_input_size is None  # dynamic input, like det_10g: det_size decides
    assert det.input_sizes == [(640, 640)] and det.det_thresh == 0.5
    assert rec.input_size == (112, 112) and (rec.input_mean, rec.input_std) == (127.5, 127.5)
    assert analyzer.embedding_dim == DIM
    assert analyzer.model_id.startswith("insightface-tinypack-")


# (image size, squares as (x, y, size)); every square is centred on a stride-32 anchor
# point of the 640x640 detector input after insightface's resize.
DETECT_CASES = {
    "one_face_640x480": ((640, 480), [(288, 192, 64)]),
    "two_faces_640x480": ((640, 480), [(96, 96, 64), (384, 256, 64)]),
    "two_faces_1280x960": ((1280, 960), [(192, 192, 128), (768, 512, 128)]),  # resized by 0.5
    "one_face_320x240": ((320, 240), [(48, 48, 32)]),  # upscaled by 2
    "portrait_480x640": ((480, 640), [(160, 416, 64)]),
    "no_face": ((640, 480), []),
}


@pytest.mark.parametrize("case", list(DETECT_CASES))
def test_detect_boxes_and_keypoints(analyzer, case):
    (w, h), squares = DETECT_CASES[case]
    img = blank(w, h)
    for i, (x, y, s) in enumerate(squares):
        paint_face(img, x, y, s, seed=i)
    dets = sorted(analyzer.detect(img), key=lambda d: float(d.bbox[0]))
    assert len(dets) == len(squares)
    for d, (x, y, s) in zip(dets, squares, strict=True):
        assert d.bbox.dtype == np.float32 and d.bbox.shape == (4,) and d.kps.shape == (5, 2)
        np.testing.assert_allclose(d.bbox, [x, y, x + s, y + s], atol=2)
        np.testing.assert_allclose(d.kps, om.expected_kps(x, y, s), atol=2)
        assert 0.9 < d.score <= 1.0


def test_detect_sees_rgb_in_insightface_channel_order(analyzer):
    """detect() gets RGB and must hand insightface BGR: only the red-dominant square fires."""
    img = blank(640, 480)
    paint_face(img, 96, 96, 64, seed=0)
    paint_face(img, 384, 256, 64, seed=0, decoy=True)
    dets = analyzer.detect(img)
    assert len(dets) == 1
    np.testing.assert_allclose(dets[0].bbox, [96, 96, 160, 160], atol=2)
    (flipped,) = analyzer.detect(np.ascontiguousarray(img[:, :, ::-1]))
    np.testing.assert_allclose(flipped.bbox, [384, 256, 448, 320], atol=2)


def test_detect_threshold_is_applied(pack, tmp_path):
    from facesets.analyzers.insightface import InsightFaceAnalyzer

    img = blank(640, 480)
    paint_face(img, 288, 192, 64, seed=0)
    assert len(InsightFaceAnalyzer(pack=str(pack), root=str(tmp_path), det_thresh=0.5).detect(img)) == 1
    strict = InsightFaceAnalyzer(pack=str(pack), root=str(tmp_path), det_thresh=0.99999)
    assert strict.detect(img) == []
    assert strict.model_id != InsightFaceAnalyzer(pack=str(pack), root=str(tmp_path)).model_id


def test_model_id_follows_pack_content(tmp_path):
    """A pack whose weights change (same file size, same first bytes) is a new store key."""
    from facesets.analyzers.insightface import InsightFaceAnalyzer

    def model_id(folder):
        return InsightFaceAnalyzer(pack=str(folder), root=str(tmp_path)).model_id

    a = om.write_pack(tmp_path / "a" / "pack", dim=DIM, seed=SEED)
    b = om.write_pack(tmp_path / "b" / "pack", dim=DIM, seed=SEED)
    assert model_id(a) == model_id(b)  # same content (and folder name), same key
    w = om.arcface_weights(DIM, SEED)
    w[-1] += 0.5  # e.g. a retrained last layer: only the end of the file changes
    om.write_arcface(b / "w_tiny.onnx", DIM, weights=w)
    assert (a / "w_tiny.onnx").stat().st_size == (b / "w_tiny.onnx").stat().st_size
    from facesets.models import ModelError

    with pytest.raises(ModelError, match=r"changed since its first use.*w_tiny.onnx"):
        model_id(b)  # the pack check: b's files differ from what its first use recorded
    for record in (tmp_path / "facesets-pack-digests").glob("pack-*.json"):
        if str(b) in record.read_text():
            record.unlink()  # "replaced on purpose", as the error says
    assert model_id(a) != model_id(b)


def test_embed_equals_independent_computation(analyzer):
    img = blank(1280, 960)
    paint_face(img, 192, 192, 128, seed=1)
    paint_face(img, 768, 512, 128, seed=2)
    dets = analyzer.detect(img)
    assert len(dets) == 2
    emb = analyzer.embed(img, dets)
    assert emb.dtype == np.float32 and emb.shape == (2, DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for d, e in zip(dets, emb, strict=True):
        ref = reference_embedding(img, d.kps)
        np.testing.assert_allclose(e, ref, atol=1e-5)
        # The comparison is sharp: a channel swap or shifted keypoints give other vectors.
        assert not np.allclose(e, reference_embedding(img[:, :, ::-1], d.kps), atol=1e-2)
        assert not np.allclose(e, reference_embedding(img, d.kps + 3), atol=1e-2)
    assert not np.allclose(emb[0], emb[1], atol=1e-2)  # different textures, different vectors
    assert analyzer.embed(img, []).shape == (0, DIM)


def test_embed_uses_given_keypoints_on_any_resolution(analyzer):
    """Recognition may run on a finer copy than detection: keypoints in that copy's pixels."""
    small = blank(640, 480)
    paint_face(small, 96, 96, 64, seed=3)
    big = np.asarray(Image.fromarray(small).resize((1280, 960), Image.Resampling.NEAREST))
    (d,) = analyzer.detect(small)
    e = analyzer.embed(big, [d.scaled(2.0)])
    np.testing.assert_allclose(e[0], reference_embedding(big, d.kps * 2), atol=1e-5)


def _save(rgb: np.ndarray, path) -> None:
    Image.fromarray(rgb).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def test_end_to_end_face_table(analyzer, tmp_path):
    lib = tmp_path / "photos"
    lib.mkdir()
    # path name -> (image size, squares in original pixels)
    photos = {
        "a_face.png": ((640, 480), [(96, 96, 64)]),
        # A JPEG far above det_size: detection on a 1000x750 DCT-reduced decode (then 0.64
        # in SCRFD), recognition on a finer decode (the 200 px face is < 112 px there).
        "b_big.jpg": ((2000, 1500), [(900, 600, 200)]),
        "c_blank.jpg": ((800, 600), []),
        "d_two.png": ((1280, 960), [(768, 512, 128), (192, 192, 128)]),
    }
    for i, (name, ((w, h), squares)) in enumerate(photos.items()):
        img = blank(w, h)
        for j, (x, y, s) in enumerate(squares):
            paint_face(img, x, y, s, seed=10 * i + j)
        _save(img, lib / name)

    listing = stage_source("lib", lib, ["**/*.jpg", "**/*.png"], [], tmp_path / "listing.parquet", workers=2)
    assert len(listing) == 4 and listing["error"].isna().all()
    store = FaceStore(tmp_path / "store", analyzer.model_id)
    faces_out = tmp_path / "faces.parquet"
    stats = embed_listing(
        listing, analyzer, store, build(EmbedOptions, "embed", {"det_size": 640, "workers": 2}), faces_out, True
    )
    assert (stats.images, stats.analyzed, stats.faces, stats.noface, stats.errors) == (4, 4, 4, 1, 0)
    assert stats.model_id == analyzer.model_id and analyzer.model_id.startswith("insightface-")

    faces = schema.read_table(faces_out)
    images = schema.read_table(sidecar_paths(faces_out)[0]).set_index("path")
    assert len(faces) == 4
    for name, ((w, h), squares) in photos.items():
        path = str(lib / name)
        rec = images.loc[path]
        assert (rec["img_width"], rec["img_height"], rec["n_faces"]) == (w, h, len(squares))
        assert rec["status"] == ("faces" if squares else "noface") and rec["model_id"] == analyzer.model_id
        rows = faces[faces["path"] == path].sort_values("face_index")
        assert len(rows) == len(squares)
        full = imageio.decode(path).rgb  # what recognition sees here (full resolution)
        for (_, row), (x, y, s) in zip(rows.iterrows(), sorted(squares), strict=True):
            assert (row["img_width"], row["img_height"]) == (w, h)
            np.testing.assert_allclose([row["x1"], row["y1"], row["x2"], row["y2"]], [x, y, x + s, y + s], atol=2)
            kps = np.asarray(row["kps"], np.float32).reshape(5, 2)
            np.testing.assert_allclose(kps, om.expected_kps(x, y, s), atol=2)
            assert row["det_score"] > 0.9 and row["model_id"] == analyzer.model_id
            emb = np.asarray(row["embedding"], np.float32)
            assert emb.shape == (DIM,) and abs(np.linalg.norm(emb) - 1) < 1e-5
            np.testing.assert_allclose(emb, reference_embedding(full, kps), atol=1e-4)
    assert list(faces[faces["path"] == str(lib / "d_two.png")]["face_index"]) == [0, 1]  # left to right
