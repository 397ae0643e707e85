"""End to end: one `snakemake` command from photos to roop-unleashed bundles, on the demo library
(the command names the export as its target) and on the labelled dev-faces photos (the whole
default target, report and library included), both with lowered min_faces in a test config.

Every bundle is opened the way roop-unleashed does (zipfile extractall into a temp dir, only
root-level lowercase .png, cv2.imread as 8-bit 3-channel, faces detected again at 640 px with
threshold 0.5). The detector here is OpenCV's own cv2.FaceDetectorYN (roop's insightface pack
cannot be fetched offline): a different implementation of the same model than the check that
export runs (our ONNX Runtime decoding), so the two do not share bugs.
"""

import hashlib
import json
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facesets import schema, thresholds
from facesets.fsz import layout_problems
from facesets.manifests import RESPONSIBLE_USE
from tests.conftest import REPO, run_snakemake, write_workflow_config

pytestmark = pytest.mark.slow


def run_pipeline(tmp: Path, photos: Path, model_dir: Path, name: str, extra: str, whole: bool) -> dict:
    """One snakemake command: the whole default target (``whole``) or just this source's export."""
    cfg = write_workflow_config(tmp, photos, model_dir, name=name, extra=extra)
    export = tmp / "out" / "export" / name
    base = ["--configfile", str(cfg), "--cores", "2", *([] if whole else [str(export)])]
    run_snakemake(base, tmp, timeout=300)
    return {
        "base": base,
        "tmp": tmp,
        "export": export,
        "manifest": json.loads((export / "manifest.json").read_text()),
        "faces": schema.read_table(tmp / "work" / "sources" / name / "faces.parquet"),
        "images": schema.read_table(tmp / "work" / "sources" / name / "faces.images.parquet"),
        "refine": json.loads((tmp / "out" / "refine" / name / "refine_manifest.json").read_text()),
    }


@pytest.fixture(scope="module")
def demo_run(demo_photos, model_dir, tmp_path_factory):
    extra = "refine:\n  min_faces: 3\n"
    return run_pipeline(tmp_path_factory.mktemp("demo"), demo_photos, model_dir, "demo", extra, whole=False)


@pytest.fixture(scope="module")
def dev_run(dev_faces, model_dir, tmp_path_factory):
    extra = "refine:\n  min_faces: 2\nexport:\n  top_n: 4\n"
    return run_pipeline(tmp_path_factory.mktemp("devfaces"), dev_faces, model_dir, "dev", extra, whole=True)


@pytest.fixture(scope="module")
def yunet(model_dir):
    return cv2.FaceDetectorYN.create(str(model_dir / "face_detection_yunet_2023mar.onnx"), "", (640, 640), 0.5, 0.3, 5000)


def roop_faces(bundle: Path, detector) -> list[tuple[str, np.ndarray, int]]:
    """(entry, BGR image, faces detected) for every image roop-unleashed would load from a bundle."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(bundle) as zf:
            zf.extractall(tmp)
        for f in sorted(Path(tmp).iterdir(), key=lambda p: p.name):
            if not (f.is_file() and f.name.endswith(".png")):
                continue
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            k = 640 / max(img.shape[:2])
            canvas = np.zeros((640, 640, 3), np.uint8)
            small = cv2.resize(img, (round(img.shape[1] * k), round(img.shape[0] * k)))
            canvas[: small.shape[0], : small.shape[1]] = small
            _, dets = detector.detect(canvas)
            out.append((f.name, img, 0 if dets is None else len(dets)))
    return out


def check_bundles(run: dict, detector) -> int:
    m = run["manifest"]
    n = 0
    for e in m["facesets"]:
        top, full = run["export"] / e["bundles"]["top"], run["export"] / e["bundles"]["all"]
        assert top.name == f"{e['name']}_top{m['settings']['top_n']}.fsz" and full.name == f"{e['name']}_all.fsz"
        assert layout_problems(top) == [] and layout_problems(full) == []
        with zipfile.ZipFile(full) as zf:
            names = zf.namelist()
            assert all(n.isascii() and "/" not in n for n in names)
            assert [zf.read(f"{i}.png") for i in range(len(names))] == [
                (run["export"] / c["file"]).read_bytes() for c in e["crops"]
            ]
        with zipfile.ZipFile(top) as zf:
            assert len(zf.namelist()) == min(len(e["crops"]), m["settings"]["top_n"])
        for name, img, faces in roop_faces(full, detector):
            assert faces == 1, f"{full.name}:{name} yields {faces} faces"
            assert img.shape == (512, 512, 3)
            n += 1
    assert n == m["stats"]["crops"] > 0
    return n


def crop_embeddings(run: dict, analyzer) -> list[tuple[str, str, np.ndarray]]:
    """(faceset, crop file, embedding of the one face in it)."""
    out = []
    for e in run["manifest"]["facesets"]:
        for c in e["crops"]:
            rgb = cv2.imread(str(run["export"] / c["file"]))[:, :, ::-1].copy()
            dets = analyzer.detect(rgb)
            assert len(dets) == 1, c["file"]
            out.append((e["name"], c["file"], analyzer.embed(rgb, dets)[0]))
    return out


def check_nearest_set(run: dict, analyzer) -> None:
    m = run["manifest"]
    names = [e["name"] for e in m["facesets"]]
    cents = np.stack([np.asarray(e["centroid"]) for e in m["facesets"]])
    limit = thresholds.for_model(m["model_id"]).cluster
    for name, file, emb in crop_embeddings(run, analyzer):
        d = 1.0 - cents @ emb
        assert names[int(np.argmin(d))] == name, (file, dict(zip(names, d.round(3), strict=True)))
        assert d.min() < limit, (file, d.min())


def check_manifests(run: dict) -> None:
    m = run["manifest"]
    assert m["version"] == 1 and m["responsible_use"] == RESPONSIBLE_USE and "consent" in m["responsible_use"]
    assert m["source"] == run["refine"]["source"] and m["model_id"] == run["refine"]["model_id"]
    assert set(m["stats"]["rejected"]) >= {"outlier_tight", "duplicate", "min_face_short", "bystander_unfixable"}
    refine_names = [e["name"] for e in run["refine"]["facesets"]]
    assert [e["name"] for e in m["facesets"]] == [n for n in refine_names if n not in m["stats"]["empty_facesets"]]
    for e in m["facesets"]:
        assert json.loads((run["export"] / e["dir"] / "manifest.json").read_text()) == e
        scores = [c["score"] for c in e["crops"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert [c["file"] for c in e["crops"]] == [f"{e['dir']}/crops/{i}.png" for i in range(len(e["crops"]))]
        for c in e["crops"]:
            assert set(c["components"]) == {"frontality", "det_score", "symmetry", "face_size", "sharpness"}
            assert abs(sum(c["components"][k] * w for k, w in m["settings"]["weights"].items()) - c["score"]) < 1e-3
        # every member is accounted for: exported or rejected for one reason
        assert e["faces"] + sum(e["rejected"].values()) == e["refine_faces"]
    for c in m["candidates"]:
        assert (run["export"] / c["file"]).is_file() and c["distance"] <= m["settings"]["candidate_distance"]
        assert c["score"] >= m["settings"]["candidate_min_score"]


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_rerun(run: dict) -> None:
    """Nothing to do on a second run. (A recomputed export is byte-identical: see the resume test.)"""
    before = tree_digest(run["export"])
    dry = run_snakemake([*run["base"], "-n"], run["tmp"])
    assert "Nothing to be done" in dry.stdout, dry.stdout[-2000:]
    assert tree_digest(run["export"]) == before


# --------------------------------------------------------------------------- demo library


def test_demo_bundles_load_in_roop_with_one_face_each(demo_run, yunet):
    assert demo_run["manifest"]["stats"]["facesets"] >= 10
    check_bundles(demo_run, yunet)


def test_demo_crops_are_of_their_face_set(demo_run, opencv_analyzer):
    check_nearest_set(demo_run, opencv_analyzer)


def test_demo_manifests(demo_run):
    check_manifests(demo_run)
    st = demo_run["refine"]["stats"]
    assert st["rejected"]["min_short"] > 0 and st["facesets"] == len(demo_run["refine"]["facesets"])
    assert (REPO / "README.md").read_text().count("agreed to it") >= 1


def test_demo_rerun_changes_nothing(demo_run):
    check_rerun(demo_run)


# --------------------------------------------------------------------------- dev-faces (labelled)


def face_labels(run: dict, dev_faces: Path) -> dict[str, str]:
    """face_key -> person, from labels.csv (faces left to right; confident faces when counts differ)."""
    faces, images = run["faces"], run["images"]
    out = {}
    for row in pd.read_csv(dev_faces / "labels.csv").itertuples():
        path = str(dev_faces / row.path)
        rec = images[(images.path == path) | images.aliases.map(lambda a, p=path: p in list(a))].iloc[0]
        found = faces[faces.sha256 == rec.sha256].sort_values("face_index")
        names = row.faces_left_to_right.split(";")
        if len(found) != len(names):
            found = found[found.det_score >= 0.8]
        for key, name in zip(found.face_key, names, strict=False):
            out[key] = name
    return out


def test_dev_faces_bundles_load_in_roop_with_one_face_each(dev_run, yunet):
    check_bundles(dev_run, yunet)
    top = [e for e in dev_run["manifest"]["facesets"] if e["faces"] > 4]
    assert top, "a set larger than top_n shows the two bundles differ"


def test_dev_faces_every_crop_is_the_right_person(dev_run, dev_faces, opencv_analyzer):
    labels = face_labels(dev_run, dev_faces)
    m = dev_run["manifest"]
    majority = {}
    for e in m["facesets"]:
        people = Counter(labels.get(c["face_key"], "?") for c in e["crops"])
        person, votes = people.most_common(1)[0]
        majority[e["name"]] = person
        assert person not in ("?", "bystander")
        assert votes == len(e["crops"]), (e["name"], people)  # every crop is the majority person
    assert len(set(majority.values())) == len(majority)  # one set per person
    assert {"obama", "biden"} <= set(majority.values())
    check_nearest_set(dev_run, opencv_analyzer)


def test_dev_faces_near_duplicates_and_byte_copies_collapse(dev_run, dev_faces):
    sets = {e["name"]: e for e in dev_run["manifest"]["facesets"]}
    sources = [c["source_path"] for e in sets.values() for c in e["crops"]]
    frames = [s for s in sources if "obama-" in s and s.endswith("p.jpg")]
    assert len(frames) == 1, frames  # obama-240p/480p/720p/1080p: one crop
    for e in sets.values():  # a photo once per set (a group photo may feed two people's sets)
        paths = [c["source_path"] for c in e["crops"]]
        assert len(paths) == len(set(paths))
    assert dev_run["manifest"]["stats"]["rejected"]["duplicate"] >= 3


def test_dev_faces_manifests_and_rerun(dev_run):
    check_manifests(dev_run)
    check_rerun(dev_run)


# --------------------------------------------------------------------------- the API others reuse


def _detector(model_dir):
    from facesets import thresholds
    from facesets.export import make_detector, resolve_options

    return make_detector("opencv", {}, resolve_options({}, thresholds.ARCFACE), model_dir)


def test_export_api_copies_fields_through_and_names_sets_safely(dev_run, model_dir, tmp_path):
    from facesets.export import export_facesets

    big = max(dev_run["refine"]["facesets"], key=lambda e: e["faces"])
    entries = [
        {**big, "name": "Émile Zola/x", "kind": "identities", "label": "Émile Zola", "marker": "Emile_Zola.txt"},
        {"name": "nobody", "kind": "routed", "route_to": "ledger:faceset_009", "members": [], "faces": 0},
    ]
    detect, det_id = _detector(model_dir)
    m = export_facesets(entries, dev_run["faces"], None, {}, tmp_path / "x", {"top_n": 2}, detect, det_id, source="s1")
    (e,) = m["facesets"]
    assert e["name"] == e["dir"] == "Emile_Zola_x" and e["kind"] == "identities" and e["label"] == "Émile Zola"
    assert (tmp_path / "x" / "Emile_Zola_x" / "Emile_Zola_x_top2.fsz").is_file()
    assert "s1" in (tmp_path / "x" / "Emile_Zola_x" / "Emile_Zola.txt").read_text()
    assert m["stats"]["empty_facesets"] == ["nobody"] and not (tmp_path / "x" / "nobody").exists()
    assert m["stats"]["rejected"]["duplicate"] == 0  # no duplicates report given: nothing collapsed


def test_an_interrupted_export_leaves_no_output_and_resumes_from_the_crop_cache(demo_run, model_dir, tmp_path):
    from facesets.export import run_export

    detect, det_id = _detector(model_dir)
    calls = {"n": 0}

    def failing(rgb):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the crops
        return detect(rgb)

    work = demo_run["tmp"] / "work" / "sources" / "demo"
    args = dict(
        faces_path=work / "faces.parquet",
        refine_manifest=demo_run["tmp"] / "out" / "refine" / "demo" / "refine_manifest.json",
        out=tmp_path / "export",
        settings={"workers": 1},
        raw_manifest=demo_run["tmp"] / "out" / "raw" / "demo" / "manifest.json",
        quality=work / "quality.parquet",
        duplicates=work / "duplicates.json",
        crop_cache=tmp_path / "crops",
    )
    with pytest.raises(KeyboardInterrupt):
        run_export(detector_factory=lambda o, m: (failing, det_id), **args)
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".tmp-*"))
    made = len(list((tmp_path / "crops").rglob("*.json")))
    assert made >= 1
    m = run_export(detector_factory=lambda o, m: (detect, det_id), **args)
    assert json.loads((tmp_path / "export" / "manifest.json").read_text()) == json.loads(json.dumps(m))
    skip = ("manifest.json", ".snakemake_timestamp")  # the manifest names its inputs' paths
    ref = {k: v for k, v in tree_digest(demo_run["export"]).items() if k not in skip}
    assert {k: v for k, v in tree_digest(tmp_path / "export").items() if k not in skip} == ref
