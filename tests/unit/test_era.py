"""Era split (facesets/era.py): a synthetic identity with two separated looks and EXIF years.

The identity has two sub-modes (the 1990s and the 2010s faces), 0.5 apart (cosine distance),
faces 0.10 from their mode, so sub-clusters at 0.35 separate them cleanly; around it: strangers,
faces failing the quality gates, a second face in one photo, and fragments placed on purpose
(near an anchor with its years, near an anchor 15 years off). Model id buffalo_l, so the
seed's numbers apply unscaled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facesets import era, schema
from facesets.cli import main
from facesets.thresholds import era_for_model

MODEL = "insightface-buffalo_l"
DIM = 128


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _around(rng: np.random.Generator, centre: np.ndarray, dist: float, n: int) -> np.ndarray:
    """n unit vectors exactly ``dist`` (cosine distance) from the unit vector ``centre``."""
    z = rng.standard_normal((n, DIM))
    z -= (z @ centre)[:, None] * centre
    z = _unit(z)
    cos = 1.0 - dist
    return _unit(cos * centre + np.sqrt(1.0 - cos * cos) * z)


class Library:
    """Face rows (+ quality rows) of a synthetic library, with the ground truth per face key."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        c = _unit(self.rng.standard_normal(DIM))
        a = _around(self.rng, c, 0.13, 1)[0]
        b = _unit(2 * (a @ c) * c - a)  # the mirror image of a about c: c is their midpoint
        self.c, self.a, self.b = c, a, b
        self.rows: list[dict] = []
        self.truth: dict[str, str] = {}
        self.n_photos = 0

    def add(
        self,
        label: str,
        mode: np.ndarray,
        n: int,
        years: list[int | None],
        spread: float = 0.10,
        size: float = 200.0,
        det: float = 0.9,
        blur: float = 100.0,
        photo: str | None = None,
        face_index: int = 0,
    ) -> list[str]:
        emb = _around(self.rng, mode, spread, n)
        keys = []
        for i in range(n):
            if photo is None:
                self.n_photos += 1
                sha = f"{self.n_photos:08x}".rjust(64, "e")
            else:
                sha = photo
            key = schema.face_key(sha, face_index)
            self.rows.append(
                {
                    "face_key": key,
                    "sha256": sha,
                    "face_index": face_index,
                    "source": "lib",
                    "path": f"/photos/{sha[-8:]}.jpg",
                    "relpath": f"{sha[-8:]}.jpg",
                    "aliases": [],
                    "img_width": 1000,
                    "img_height": 1000,
                    "x1": 100.0 + 300 * face_index,
                    "y1": 100.0,
                    "x2": 100.0 + 300 * face_index + size,
                    "y2": 100.0 + size,
                    "kps": [0.0] * 10,
                    "det_score": det,
                    "embedding": emb[i].astype(np.float32).tolist(),
                    "model_id": MODEL,
                    "_year": years[i % len(years)],
                    "_blur": blur,
                }
            )
            self.truth[key] = label
            keys.append(key)
        return keys

    def faceset_near(self, mode: np.ndarray, dist: float, away_from: np.ndarray, max_to_c: float) -> np.ndarray:
        """A sub-mode centre ``dist`` from ``mode``, within ``max_to_c`` of c, far from ``away_from``."""
        for _ in range(1000):
            f = _around(self.rng, mode, dist, 1)[0]
            if 1 - f @ self.c <= max_to_c and 1 - f @ away_from > 0.5:
                return f
        raise AssertionError("could not place the fragment")

    def faces(self) -> pd.DataFrame:
        return schema.conform(pd.DataFrame(self.rows), schema.FACES)

    def quality(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        return pd.DataFrame(
            {
                "face_key": df["face_key"],
                "face_short": (df["x2"] - df["x1"]).astype("float32"),
                "blur": df["_blur"].astype("float32"),
                "det_score": df["det_score"].astype("float32"),
                "exif_year": pd.array(df["_year"], dtype="Int16"),
            }
        )

    def seed_centroid(self) -> np.ndarray:
        return self.c


def two_era_library() -> tuple[Library, dict[str, list[str]]]:
    lib = Library()
    g: dict[str, list[str]] = {}
    g["a"] = lib.add("a", lib.a, 30, [1995, 1996, 1997, 1997, 1998, 1999])
    g["b"] = lib.add("b", lib.b, 30, [2015, 2016, 2017, 2017, 2018, 2019, 2020])
    g["stranger"] = [k for _ in range(40) for k in lib.add("stranger", _unit(lib.rng.standard_normal(DIM)), 1, [2000])]
    g["small"] = lib.add("a", lib.a, 3, [1997], size=60.0)  # fails min_short 90
    g["lowdet"] = lib.add("b", lib.b, 2, [2017], det=0.4)  # fails min_det_score 0.6
    g["blurry"] = lib.add("b", lib.b, 2, [2017], blur=10.0)  # fails min_blur 40 (quality table only)
    # a photo with an era-a face and a second, farther look-alike face: one face per photo
    photo = g["a"][0].split("_")[0]
    g["second"] = lib.add("a", lib.a, 1, [1995], spread=0.30, photo=photo, face_index=1)
    return lib, g


def write_inputs(
    tmp: Path, lib: Library, n_tables: int = 1, order_seed: int | None = None
) -> tuple[list[str], str, str]:
    """Face tables (rows split over ``n_tables``, optionally shuffled), a quality table, a manifest."""
    faces = lib.faces()
    if order_seed is not None:
        faces = faces.sample(frac=1.0, random_state=order_seed).reset_index(drop=True)
    tables = []
    for i, part in enumerate(np.array_split(np.arange(len(faces)), n_tables)):
        p = tmp / f"faces{i}.parquet"
        schema.write_table(faces.iloc[part].reset_index(drop=True), schema.FACES, p)
        tables.append(str(p))
    q = tmp / "quality.parquet"
    quality = lib.quality()
    if order_seed is not None:
        quality = quality.sample(frac=1.0, random_state=order_seed + 1)
    pq.write_table(pa.Table.from_pandas(quality, preserve_index=False), q)
    manifest = tmp / "refine_manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "model_id": MODEL,
                "facesets": [
                    {"name": "faceset_001", "centroid": [0.0] * (DIM - 1) + [1.0]},
                    {"name": "faceset_002", "centroid": lib.seed_centroid().tolist()},
                ],
            }
        )
    )
    return tables, str(q), f"{manifest}#faceset_002"


def settings(**over) -> era.EraSettings:
    return era.resolve_settings(MODEL, over)


def member_keys(entry: dict) -> set[str]:
    return {m["face_key"] for m in entry["members"]}


def split(lib: Library, tmp: Path, **over) -> dict:
    tables, q, spec = write_inputs(tmp, lib)
    return era.split_identity(
        "kid",
        era.load_faces(tables),
        era.load_quality([q]),
        era.load_seed(spec, MODEL),
        settings(**over),
        None,
        MODEL,
    )


def test_two_separated_modes_give_two_eras_with_the_right_members(tmp_path: Path) -> None:
    lib, g = two_era_library()
    tables, q, spec = write_inputs(tmp_path, lib)
    out = tmp_path / "eras"
    rc = main(["era-split", "--centroid-from", spec, "--identity", "kid", "--exif-cache", str(tmp_path / "yc"),
               "--faces", *tables, "--quality", q, str(out)])  # fmt: skip
    assert rc == 0
    m = json.loads((out / "eras_manifest.json").read_text())
    assert m["identity"] == "kid" and m["model_id"] == MODEL and m["version"] == 1
    eras = m["eras"]
    assert [e["name"] for e in eras] == ["kid_era1", "kid_era2"]
    e1, e2 = eras
    assert member_keys(e1) == set(g["a"]) and member_keys(e2) == set(g["b"])
    assert (e1["years"], e1["dominant_year"]) == ([1995, 1999], 1997)
    assert (e2["years"], e2["dominant_year"]) == ([2015, 2020], 2017)
    for e in eras:
        assert not e["thin"] and e["faces"] == e["unique_images"] == 30
        assert e["kind"] == "era" and e["parent"] == "kid" and e["marker"] == f"{e['name']}.txt"
        c = np.asarray(e["centroid"])
        assert abs(np.linalg.norm(c) - 1) < 1e-5
        assert set(e["members"][0]) >= {"face_key", "path", "sha256", "bbox"}
        assert len(e["members"][0]["bbox"]) == 4
    # the gates, the cannot-link of a photo and the strangers did their part
    rej = m["stats"]["rejected"]
    assert (rej["min_short"], rej["min_det_score"], rej["min_blur"], rej["same_photo"]) == (3, 2, 2, 1)
    assert m["stats"]["recovered"] == 30 + 30 + 3 + 2 + 2 + 1  # no stranger within 0.55
    assert m["stats"]["year_origin"] == {"quality": 60, "cache": 0, "exif_read": 0, "unknown": 0}
    assert m["stats"]["blur_gate"] is True
    assert m["settings"]["subcluster"] == 0.35 and m["settings"]["recover"] == 0.55
    assert m["probe"]["faces"] == 60
    assert not (tmp_path / "yc").exists()  # every year came from the quality table


def test_fragment_near_an_anchor_but_15_years_off_stays_alone_and_is_thin(tmp_path: Path) -> None:
    lib, g = two_era_library()
    near_a = lib.faceset_near(lib.a, 0.27, lib.b, 0.36)
    near_b = lib.faceset_near(lib.b, 0.27, lib.a, 0.36)
    g["same_years"] = lib.add("a", near_a, 5, [1996, 1997, 1997])  # joins era a
    g["off_years"] = lib.add("b", near_b, 6, [2001, 2002, 2002])  # near b, 15 years before it
    m = split(lib, tmp_path)
    frags = {f["subcluster"]: f for f in m["stats"]["fragments"]}
    assert m["stats"]["anchors"] == 2 and len(frags) == 2
    names = [e["name"] for e in m["eras"]]
    assert names == ["kid_era1", "kid_era2", "kid_era3"]
    e1, e2, e3 = m["eras"]
    assert member_keys(e1) == set(g["a"]) | set(g["same_years"]) and not e1["thin"]
    assert e1["subclusters"] == 2 and len(e1["attach_distances"]) == 1 and e1["attach_distances"][0] <= 0.40
    # the off-year fragment is its own era (dominant 2002, between the two), THIN
    assert member_keys(e2) == set(g["off_years"])
    assert e2["thin"] and e2["faces"] == 6 and e2["dominant_year"] == 2002 and e2["years"] == [2001, 2002]
    assert member_keys(e3) == set(g["b"]) and not e3["thin"]
    off = next(f for f in frags.values() if f["era"] == "kid_era2")
    assert off["decision"] == "alone: year" and off["nearest_anchor"] == "kid_era3" and off["distance"] <= 0.40
    assert m["stats"]["thin"] == 1
    # with a window wide enough the same fragment attaches: the year was the only reason
    wide = split(lib, tmp_path / "wide", year_window=15)
    assert [e["faces"] for e in wide["eras"]] == [35, 36]


def test_thin_eras_and_anchor_size(tmp_path: Path) -> None:
    lib, g = two_era_library()
    m = split(lib, tmp_path, min_era_faces=31)  # no sub-cluster is an anchor: all stand alone, all thin
    assert [e["thin"] for e in m["eras"]] == [True, True]
    assert all(f["decision"] == "alone: no anchor" for f in m["stats"]["fragments"])
    assert [member_keys(e) for e in m["eras"]] == [set(g["a"]), set(g["b"])]


def test_fragment_without_years_follows_attach_unknown_year(tmp_path: Path) -> None:
    lib, g = two_era_library()
    near_b = lib.faceset_near(lib.b, 0.27, lib.a, 0.36)
    g["no_year"] = lib.add("b", near_b, 4, [None])
    m = split(lib, tmp_path)
    assert [e["faces"] for e in m["eras"]] == [30, 34]
    strict = split(lib, tmp_path / "strict", attach_unknown_year=False)
    assert [e["faces"] for e in strict["eras"]] == [30, 30, 4]
    last = strict["eras"][-1]  # unknown year: numbered last
    assert last["dominant_year"] is None and last["years"] is None and member_keys(last) == set(g["no_year"])


def test_result_does_not_depend_on_row_order_or_table_split(tmp_path: Path) -> None:
    lib, _g = two_era_library()
    lib.add("b", lib.faceset_near(lib.b, 0.27, lib.a, 0.36), 6, [2001, 2002])
    runs = []
    for i, (n_tables, order) in enumerate(((1, None), (3, 11), (2, 5))):
        d = tmp_path / str(i)
        d.mkdir()
        tables, q, spec = write_inputs(d, lib, n_tables=n_tables, order_seed=order)
        if i == 2:
            tables = tables[::-1]
        m = era.split_identity(
            "kid", era.load_faces(tables), era.load_quality([q]), era.load_seed(spec, MODEL), settings(), None, MODEL
        )
        m.pop("seed")
        runs.append(json.dumps(m, sort_keys=True))
    assert runs[0] == runs[1] == runs[2]


def test_probe_report(tmp_path: Path) -> None:
    lib, _g = two_era_library()
    tables, q, spec = write_inputs(tmp_path, lib)
    out = tmp_path / "probe.json"
    rc = main(["era-probe", "--centroid-from", spec, "--faces", *tables, "--quality", q, str(out),
               "--exif-cache", str(tmp_path / "yc")])  # fmt: skip
    assert rc == 0
    p = json.loads(out.read_text())
    assert p["identity"] == "faceset_002" and p["faces"] == 60
    hist = p["pairwise"]
    assert hist["pairs"] == 60 * 59 // 2 == sum(hist["counts"])
    assert hist["edges"][0] == 0.0 and len(hist["edges"]) == len(hist["counts"]) + 1
    # within a mode faces are ~0.19 apart, across ~0.6: nothing in between (0.35-0.45)
    lo = hist["edges"].index(0.35)
    assert sum(hist["counts"][lo : lo + 2]) == 0
    assert hist["percentiles"]["p25"] < 0.3 < 0.5 < hist["percentiles"]["p75"]
    cuts = {c["threshold"]: c for c in p["subclusters"]}
    assert sorted(cuts) == [0.3, 0.35, 0.4, 0.45, 0.5]
    for t, c in cuts.items():
        assert c["sizes"] == [30, 30], t
        assert c["anchors"] == 2 and c["singletons"] == 0
        years = [d["years"] for d in c["detail"]]
        assert {frozenset(y) for y in years} == {
            frozenset(map(str, range(1995, 2000))),
            frozenset(map(str, range(2015, 2021))),
        }
        assert sorted(d["dominant_year"] for d in c["detail"]) == [1997, 2017]
    assert p["years"]["1997"] == 10 and p["unknown_year"] == 0
    assert p["counts"]["rejected"]["same_photo"] == 1


def _jpeg(path: Path, year: int | None) -> None:
    import piexif
    from PIL import Image

    im = Image.new("RGB", (16, 16), (120, 90, 60))
    if year is None:
        im.save(path, "JPEG")
        return
    stamp = f"{year}:06:01 12:00:00".encode()
    exif = piexif.dump({"0th": {}, "Exif": {piexif.ExifIFD.DateTimeOriginal: stamp}, "1st": {}, "GPS": {}})
    im.save(path, "JPEG", exif=exif)


def test_exif_years_are_read_once_and_cached(tmp_path: Path) -> None:
    lib, g = two_era_library()
    photos = tmp_path / "photos"
    photos.mkdir()
    for r in lib.rows:  # the photos exist, with their year in EXIF (some without)
        r["path"] = str(photos / f"{r['sha256'][-8:]}.jpg")
        if not Path(r["path"]).exists():
            _jpeg(Path(r["path"]), r["_year"] if r["face_key"] not in g["b"][:3] else None)
    tables, _, spec = write_inputs(tmp_path, lib)
    cache = tmp_path / "work" / "cache" / "era" / "exif_years"
    out1, out2 = tmp_path / "e1", tmp_path / "e2"
    args = ["era-split", "--centroid-from", spec, "--faces", *tables, "--exif-cache", str(cache)]
    assert main([*args, str(out1)]) == 0
    assert len(list(cache.glob("seg-*.parquet"))) == 1
    m1 = json.loads((out1 / "eras_manifest.json").read_text())
    assert m1["stats"]["year_origin"]["unknown"] == 3
    assert [(e["years"], e["dominant_year"]) for e in m1["eras"]] == [([1995, 1999], 1997), ([2015, 2020], 2017)]
    # without a quality table the blur gate cannot run (the blurry faces stay); the others use the face table
    assert m1["stats"]["blur_gate"] is False and m1["stats"]["rejected"]["min_blur"] == 0
    assert set(g["blurry"]) <= member_keys(m1["eras"][1]) and m1["eras"][1]["faces"] == 32
    assert (m1["stats"]["rejected"]["min_short"], m1["stats"]["rejected"]["min_det_score"]) == (3, 2)
    assert m1["stats"]["year_origin"]["exif_read"] == 62 and m1["stats"]["year_origin"]["cache"] == 0
    for p in photos.iterdir():  # a re-run needs no photo: the cache answers
        p.unlink()
    assert main([*args, str(out2)]) == 0
    m2 = json.loads((out2 / "eras_manifest.json").read_text())
    assert [e["years"] for e in m2["eras"]] == [e["years"] for e in m1["eras"]]
    assert m2["stats"]["year_origin"] == {"quality": 0, "cache": 62, "exif_read": 0, "unknown": 3}
    assert len(list(cache.glob("seg-*.parquet"))) == 1  # nothing new learned, nothing written


def test_read_exif_year_formats(tmp_path: Path) -> None:
    from PIL import Image

    _jpeg(tmp_path / "a.jpg", 2004)
    _jpeg(tmp_path / "b.jpg", None)
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    (tmp_path / "d.jpg").write_bytes(b"not an image")
    assert era.read_exif_year(tmp_path / "a.jpg") == 2004
    assert era.read_exif_year(tmp_path / "b.jpg") is None
    assert era.read_exif_year(tmp_path / "c.png") is None
    assert era.read_exif_year(tmp_path / "d.jpg") is None
    with pytest.raises(OSError):
        era.read_exif_year(tmp_path / "missing.jpg")


def test_thresholds_scale_with_the_model() -> None:
    arc = era_for_model(MODEL)
    assert (arc.recover, arc.tighten, arc.subcluster, arc.attach) == (0.55, 0.50, 0.35, 0.40)
    sf = era_for_model("opencv-yunet-sface-2021dec")
    assert sf.recover == 0.52  # the SFace profile's outlier threshold
    assert sf.subcluster == pytest.approx(0.35 * 0.52 / 0.55, abs=1e-3) and sf.attach == pytest.approx(0.378)
    st = era.resolve_settings("opencv-yunet-sface-2021dec", {"subcluster": 0.3, "probe_thresholds": [0.2]})
    assert st.subcluster == 0.3 and st.probe_thresholds == (0.2,) and st.tighten == sf.tighten


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lib, _ = two_era_library()
    tables, _q, spec = write_inputs(tmp_path, lib)
    manifest = spec.split("#")[0]
    cases = [
        (["--centroid-from", f"{manifest}#nobody", "--faces", *tables], "no faceset named 'nobody'"),
        (["--centroid-from", manifest, "--faces", *tables], "MANIFEST.json#FACESET_NAME"),
        (["--centroid-from", spec, "--faces", str(tmp_path / "none.parquet")], "face table not found"),
        (["--centroid-from", spec, "--faces", *tables, "--eras-settings", '{"year_window": -1}'], "year_window"),
    ]
    for extra, message in cases:
        assert main(["era-split", *extra, str(tmp_path / "out")]) == 2, message
        assert message in capsys.readouterr().err
    other = json.loads(Path(manifest).read_text())
    other["model_id"] = "opencv-yunet-sface-2021dec"
    Path(manifest).write_text(json.dumps(other))
    assert main(["era-probe", "--centroid-from", spec, "--faces", *tables, str(tmp_path / "p.json")]) == 2
    assert "cannot be compared" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_seed_from_the_ledger_and_the_canonical_manifest(tmp_path: Path) -> None:
    from facesets import ledger as L

    lib, g = two_era_library()
    tables, q, _ = write_inputs(tmp_path, lib)
    swap = tmp_path / "facesets_swap_ready"
    swap.mkdir()
    kid = L.Identity(number=3, name="kid", kind="discovered")
    kid.centroid_sum[MODEL] = (5.0 * lib.seed_centroid()).tolist()
    kid.centroid_count[MODEL] = 5
    (swap / "ledger.json").write_text(json.dumps(L.to_json(L.Ledger(identities=[kid]))))
    (swap / "manifest.json").write_text(json.dumps({"version": 1, "facesets": [{"name": "kid", "number": 3}]}))
    for spec in (f"{swap / 'ledger.json'}#kid", f"{swap / 'manifest.json'}#kid"):
        seed = era.load_seed(spec, MODEL)
        assert seed.manifest == str(swap / "ledger.json") and np.allclose(seed.centroid, lib.seed_centroid())
        m = era.split_identity("kid", era.load_faces(tables), era.load_quality([q]), seed, settings(), None, MODEL)
        assert [member_keys(e) for e in m["eras"]] == [set(g["a"]), set(g["b"])]
    with pytest.raises(ValueError, match="no centroid for model"):
        era.load_seed(f"{swap / 'ledger.json'}#kid", "opencv-yunet-sface-2021dec")
    with pytest.raises(ValueError, match="no identity named 'nobody'"):
        era.load_seed(f"{swap / 'ledger.json'}#nobody", MODEL)


def test_nothing_recovered_gives_no_eras(tmp_path: Path) -> None:
    lib, _ = two_era_library()
    tables, q, spec = write_inputs(tmp_path, lib)
    far = spec.replace("#faceset_002", "#faceset_001")  # a centroid no face is near
    out = tmp_path / "eras"
    args = ["--centroid-from", far, "--faces", *tables, "--quality", q, "--exif-cache", str(tmp_path / "yc")]
    assert main(["era-split", str(out), *args]) == 0
    m = json.loads((out / "eras_manifest.json").read_text())
    assert m["eras"] == [] and m["stats"]["recovered"] == 0 and m["probe"]["pairwise"]["pairs"] == 0
