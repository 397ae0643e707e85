"""refine: clustering -> centroid merge -> quality gate -> outliers -> size filter, on synthetic
identities with known answers, plus the CLI (folders, manifest, flags, errors)."""

import hashlib
import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from facesets import schema, thresholds
from facesets.manifests import REFINE_MANIFEST as MANIFEST
from facesets.refine import quality_gate, refine_faces, run_refine, write_refine
from tests.conftest import VENV_BIN

MODEL = "opencv-yunet-sface-testmodel"  # the SFace profile: cluster 0.52, merge 0.38, outlier 0.52
DIM = 64


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class Library:
    """A synthetic face table whose identities, photos and qualities are known."""

    def __init__(self, tmp, seed=0):
        self.tmp = tmp
        self.rng = np.random.default_rng(seed)
        self.rows = []
        self.quality = []
        self.truth = {}

    def identity(self):
        return unit(self.rng.normal(size=DIM))

    def near(self, centre, noise=0.05):
        return unit(centre + noise * self.rng.normal(size=DIM))

    def photo(self, faces, name=None):
        """faces: list of (embedding, label, quality overrides). Returns the photo's sha256."""
        name = name or f"p{len({r['sha256'] for r in self.rows}):04d}.jpg"
        path = self.tmp / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        sha = hashlib.sha256(name.encode()).hexdigest()
        for i, (emb, label, q) in enumerate(faces):
            key = f"{sha}_{i}"
            self.rows.append(
                {
                    "face_key": key,
                    "sha256": sha,
                    "face_index": i,
                    "source": "lib",
                    "path": str(path),
                    "relpath": name,
                    "aliases": [],
                    "img_width": 2000,
                    "img_height": 2000,
                    "x1": 100.0 + 300 * i,
                    "y1": 100.0,
                    "x2": 300.0 + 300 * i,
                    "y2": 300.0,
                    "kps": np.zeros(10, np.float32),
                    "det_score": 0.9,
                    "embedding": np.asarray(emb, np.float32),
                    "model_id": MODEL,
                }
            )
            self.quality.append({"face_key": key, "face_short": 200.0, "blur": 500.0, "det_score": 0.9, **q})
            self.truth[key] = label
        return sha

    def faces(self):
        return pd.DataFrame(self.rows)

    def quality_table(self):
        return pd.DataFrame(self.quality).set_index("face_key")


def _members(entry):
    return [m["face_key"] for m in entry["members"]]


def test_the_seed_pipeline_on_known_identities(tmp_path):
    lib = Library(tmp_path)
    a, b, c = lib.identity(), lib.identity(), lib.identity()
    for _ in range(20):
        lib.photo([(lib.near(a), "a", {})])
    for _ in range(16):
        lib.photo([(lib.near(b), "b", {})])
    for _ in range(5):  # too few photos: dropped by the size filter
        lib.photo([(lib.near(c), "c", {})])
    lib.photo([(lib.near(a), "a_small", {"face_short": 60.0})])
    lib.photo([(lib.near(a), "a_blurred", {"blur": 12.0, "face_short": 50.0})])  # counted under min_short
    lib.photo([(lib.near(a), "a_blurred", {"blur": 12.0})])
    lib.photo([(lib.near(b), "b_lowscore", {"det_score": 0.4})])
    stranger = unit(a + 1.5 * lib.identity())  # ~0.45 from a: joins at 0.6, fails 0.3
    lib.photo([(stranger, "stranger", {})])
    faces = lib.faces()
    settings = {"cluster_threshold": 0.6, "outlier_threshold": 0.3}
    entries, stats = refine_faces(faces, lib.quality_table(), settings, thresholds.SFACE)

    assert [e["name"] for e in entries] == ["faceset_001", "faceset_002"]  # largest first
    assert {lib.truth[k] for k in _members(entries[0])} == {"a"} and entries[0]["faces"] == 20
    assert {lib.truth[k] for k in _members(entries[1])} == {"b"} and entries[1]["faces"] == 16
    assert stats["rejected"] == {"min_short": 2, "min_blur": 1, "min_det_score": 1, "outlier": 1, "size": 5}
    assert stats["faces"] == len(faces) and stats["facesets"] == 2
    e = entries[0]
    cent = unit(np.stack(faces.set_index("face_key").loc[_members(e), "embedding"].to_numpy()).sum(0))
    assert np.allclose(e["centroid"], cent, atol=1e-5) and e["unique_images"] == 20
    assert set(e["members"][0]) >= {"face_key", "path", "sha256", "bbox"}


def test_min_faces_counts_unique_photos_and_numbering_ignores_row_order(tmp_path):
    lib = Library(tmp_path, seed=1)
    ids = [lib.identity() for _ in range(3)]
    for n, ident in zip((4, 6, 5), ids, strict=True):
        for _ in range(n):
            lib.photo([(lib.near(ident), "x", {})])
    faces = lib.faces()
    q = lib.quality_table()
    e1, s1 = refine_faces(faces, q, {"min_faces": 5}, thresholds.SFACE)
    e2, s2 = refine_faces(faces.sample(frac=1, random_state=3), q, {"min_faces": 5}, thresholds.SFACE)
    assert e1 == e2 and s1 == s2
    assert [e["faces"] for e in e1] == [6, 5] and s1["rejected"]["size"] == 4


def test_two_faces_of_one_photo_never_share_a_face_set(tmp_path):
    lib = Library(tmp_path, seed=2)
    a = lib.identity()
    for _ in range(6):
        lib.photo([(lib.near(a), "a", {}), (lib.near(a), "a_twin", {})])  # a mirror / a twin
    entries, _ = refine_faces(lib.faces(), lib.quality_table(), {"min_faces": 3}, thresholds.SFACE)
    for e in entries:
        shas = [m["sha256"] for m in e["members"]]
        assert len(shas) == len(set(shas))
    assert sum(e["faces"] for e in entries) == 12


def test_centroid_merge_joins_two_halves_of_one_person(tmp_path):
    """Two loose sub-groups of one person: average linkage at 0.25 keeps them apart (their faces
    are ~0.3 apart on average), their centroids (~0.2 apart) merge at 0.40."""
    lib = Library(tmp_path, seed=3)
    a = lib.identity()
    drift = unit(a + 0.9 * lib.identity())
    for centre in (a, drift):
        for _ in range(8):
            lib.photo([(lib.near(centre, 0.03), "a", {})])
    faces = lib.faces()
    q = lib.quality_table()
    base = {"cluster_threshold": 0.25, "min_faces": 8}
    apart, s_apart = refine_faces(faces, q, {**base, "merge_threshold": 0.01}, thresholds.SFACE)
    merged, s_merged = refine_faces(faces, q, {**base, "merge_threshold": 0.40}, thresholds.SFACE)
    assert [e["faces"] for e in apart] == [8, 8] and s_apart["after_merge"] == s_apart["clusters_initial"] == 2
    assert [e["faces"] for e in merged] == [16] and s_merged["after_merge"] == 1


def test_initial_labels_replace_the_clustering(tmp_path):
    lib = Library(tmp_path, seed=4)
    a, b = lib.identity(), lib.identity()
    for ident in (a, b):
        for _ in range(4):
            lib.photo([(lib.near(ident), "x", {})])
    faces = lib.faces()
    labels = np.array([0] * 4 + [-1] * 4)  # only a was clustered; b's faces come alone
    entries, stats = refine_faces(faces, None, {"min_faces": 3}, thresholds.SFACE, labels=labels)
    assert [e["faces"] for e in entries] == [4] and stats["clusters_initial"] == 5
    assert set(_members(entries[0])) == set(faces["face_key"][:4])


def test_quality_gate_counts_each_face_once_in_gate_order(tmp_path):
    lib = Library(tmp_path, seed=5)
    a = lib.identity()
    lib.photo([(lib.near(a), "ok", {})])
    lib.photo([(lib.near(a), "all_bad", {"face_short": 10.0, "blur": 1.0, "det_score": 0.1})])
    lib.photo([(lib.near(a), "blur_and_score", {"blur": 1.0, "det_score": 0.1})])
    lib.photo([(lib.near(a), "unknown_blur", {"blur": np.nan})])
    mask, counts = quality_gate(lib.faces(), lib.quality_table(), {})
    assert mask.tolist() == [True, False, False, False]
    assert counts == {"min_short": 1, "min_blur": 2, "min_det_score": 0}
    mask, counts = quality_gate(lib.faces(), None, {"min_short": 5})  # no table: box + score only
    assert mask.tolist() == [True, True, True, True] and counts["min_blur"] == 0
    with pytest.raises(ValueError, match="no quality rows"):
        quality_gate(lib.faces(), lib.quality_table().iloc[:2], {})


def _table(tmp_path, seed=6, n=6):
    lib = Library(tmp_path, seed=seed)
    a = lib.identity()
    for i in range(n):
        lib.photo([(lib.near(a), "a", {})], name=f"dir{i % 2}/photo {i}.jpg")
    cache = tmp_path / "faces.parquet"
    schema.write_table(lib.faces(), schema.FACES, cache)
    qpath = tmp_path / "quality.parquet"
    lib.quality_table().reset_index().to_parquet(qpath)
    return lib, cache, qpath


def test_write_refine_links_member_photos_and_markers(tmp_path):
    lib, _, _ = _table(tmp_path)
    faces = lib.faces()
    entry = {"name": "alice", "kind": "identities", "marker": "alice.txt", "faces": 2, "members": []}
    entry["members"] = [{"face_key": k} for k in faces["face_key"][:2]]
    out = tmp_path / "refine"
    write_refine({"version": 1, "source": "lib", "facesets": [entry]}, faces, out, "hardlink")
    files = sorted(p.name for p in (out / "alice").iterdir())
    assert files == ["alice.txt", "lib__dir0__photo 0.jpg", "lib__dir1__photo 1.jpg"]
    assert (out / "alice" / "lib__dir0__photo 0.jpg").stat().st_ino == (tmp_path / "photos/dir0/photo 0.jpg").stat().st_ino
    assert json.loads((out / MANIFEST).read_text())["facesets"][0]["kind"] == "identities"
    assert not list(tmp_path.glob(".tmp-*"))


def test_run_refine_output_folder_and_manifest(tmp_path):
    _, cache, qpath = _table(tmp_path)
    out = tmp_path / "out" / "refine"
    m = run_refine(cache, out, {"min_faces": 6}, qpath)
    assert sorted(p.name for p in out.iterdir()) == ["faceset_001", MANIFEST]
    assert len(list((out / "faceset_001").iterdir())) == 6
    disk = json.loads((out / MANIFEST).read_text())
    assert disk == json.loads(json.dumps(m))
    assert disk["version"] == 1 and disk["source"] == "lib" and disk["model_id"] == MODEL
    assert disk["settings"]["cluster_threshold"] == thresholds.SFACE.cluster
    assert disk["settings"]["merge_threshold"] == thresholds.SFACE.merge
    assert disk["settings"]["min_faces"] == 6 and disk["settings"]["min_short"] == 90
    assert set(disk["stats"]) == {"faces", "clusters_initial", "after_merge", "rejected", "facesets"}
    run_refine(cache, out, {"min_faces": 7}, qpath)  # rerun replaces the folder
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]


def _cli(capsys, *args):
    """The CLI in-process (same argument parsing and exit codes as the `facesets` script)."""
    from facesets.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_flags_override_and_errors_exit_2(tmp_path, capsys):
    _, cache, qpath = _table(tmp_path)
    out = tmp_path / "r"
    code, stdout, err = _cli(capsys, "refine", cache, out, "--quality", qpath, "--min-faces", "3", "--min-short", "250")
    assert code == 0, err
    stats = json.loads(stdout)
    assert stats["rejected"]["min_short"] == 6 and stats["facesets"] == 0  # every box is 200 px
    code, stdout, _ = _cli(capsys, "refine", cache, out, "--quality", qpath, "--refine-settings", '{"min_faces": 3}')
    assert code == 0 and json.loads(stdout)["facesets"] == 1
    code, _, err = _cli(capsys, "refine", cache, out, "--quality", tmp_path / "missing.parquet")
    assert code == 2 and "missing.parquet" in err
    code, _, err = _cli(capsys, "refine", cache, out, "--refine-settings", '{"min_faces": 0}')
    assert code == 2 and "min_faces" in err


def test_a_subprocess_run_of_the_command(tmp_path):
    _, cache, qpath = _table(tmp_path)
    proc = subprocess.run(
        [str(VENV_BIN / "facesets"), "refine", str(cache), str(tmp_path / "r"), "--quality", str(qpath)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rejected"]["size"] == 6  # 6 photos < min_faces 15


def test_refine_and_export_settings_per_source(tmp_path):
    from facesets.config import ConfigError, load_workflow_config

    src = tmp_path / "s.yaml"
    src.write_text(f"name: s\nkind: folder\npath: {tmp_path}\noverrides:\n  refine: {{min_faces: 2}}\n  export: {{top_n: 5}}\n")
    wf = load_workflow_config({"sources": [str(src)], "refine": {"min_short": 50}})
    s = wf.source("s").settings
    assert (s["refine"]["min_faces"], s["refine"]["min_short"], s["refine"]["min_blur"]) == (2, 50, 40)
    assert (s["export"]["top_n"], s["export"]["pad_ratio"], s["export"]["outlier_tight"]) == (5, 0.5, None)
    src.write_text(f"name: s\nkind: folder\npath: {tmp_path}\noverrides:\n  refine: {{min_face: 2}}\n")
    with pytest.raises(ConfigError, match="min_face"):
        load_workflow_config({"sources": [str(src)]})
