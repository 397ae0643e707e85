"""Benchmark: identity recall at equal precision, seed's average-linkage HAC vs graph-context clustering.

* Real set: the labelled photos ``benchmarks/build_real_set.py`` writes (dev-faces + per-person
  folders of public repositories; ``OUT/labels.csv``, ``OUT/PROVENANCE.json``). Embedded here
  with the opencv backend (YuNet + SFace, ``facesets.embed.analyze_image``, default embed
  settings), once plain and once with flip test-time augmentation (``flip_tta``), cached in
  ``OUT/embeddings-*.npz`` keyed by the analyzer's model id. Labelling: ``left_to_right`` photos
  (dev-faces) give the labels of their faces in order (when the detector finds more faces than
  labels, the largest ones are the labelled ones); ``largest`` photos (per-person folders) label
  their largest face; ``unlabelled`` photos (group shots nobody labelled face by face) none;
  every other face is clustered too but is an unknown person and is left
  out of the scores (it may be another labelled person: LFW crops show neighbours). ``bystander``
  faces are each a person of their own.
* Synthetic: ``facesets.synth.synthetic_faces(n)`` (the cluster benchmark's generator).
* Methods: ``hac`` = ``facesets.clustering.cluster_faces`` (the seed's average linkage + cannot-link),
  and the methods of ``facesets.graph_cluster``. Each is swept over thresholds; the table shows
  pairwise precision/recall per threshold and, per method, the best recall at pairwise precision
  >= 0.99 / 0.98 / 0.95 (and its threshold). Cannot-link violations are counted for every run.

    python benchmarks/bench_recall.py --real work/bench/real_set [--synth 5000,20000] [--write docs/benchmarks.md]
    python benchmarks/bench_recall.py --set-name hard --real work/bench/hard_set --tta plain --synth "" \
        --thresholds 0.20:0.70:0.01 --write docs/benchmarks.md   # the hard set's own section
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from facesets import graph_cluster  # noqa: E402
from facesets.clustering import cluster_faces, group_ids  # noqa: E402
from facesets.metrics import bcubed_prf, pairwise_prf  # noqa: E402
from facesets.synth import synthetic_faces  # noqa: E402

SECTION = "## identity recall: seed's HAC vs graph-context clustering (issue 17)"
SECTION_HARD = "## identity recall on the hard real set: age gaps, siblings, look-alikes (issue 17)"
BACKENDS = (
    "- Second backend (InsightFace buffalo_l): not measured. Its weights come only from model hubs, "
    "which this machine cannot reach (PyPI has no wheel carrying them); only SFace is measured here."
)
PRECISIONS = (0.99, 0.98, 0.95)
PROFILE_CUT = 0.52  # facesets/thresholds.py SFACE.cluster
IDLE_HAC_1E5 = 24.7  # s, ours (auto) at 1e5 faces in the cluster engine section of docs/benchmarks.md


# --------------------------------------------------------------------------- the real set


def embed_real_set(root: Path, model_dir: Path, flip_tta: bool) -> dict:
    """Embed every photo of the set (cached per model id). Returns arrays + embed seconds."""
    from facesets.analyzers.opencv import OpenCVAnalyzer
    from facesets.embed import EmbedOptions, analyze_image
    from facesets.models import ensure_opencv_models
    from facesets.options import build

    paths = ensure_opencv_models(model_dir)
    an = OpenCVAnalyzer(
        paths["face_detection_yunet_2023mar.onnx"], paths["face_recognition_sface_2021dec.onnx"], flip_tta=flip_tta
    )
    cache = root / f"embeddings-{an.model_id}.npz"
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return relabel({k: z[k] for k in z.files}, rows)
    opts = build(EmbedOptions, "embed")  # the schema's defaults, read once
    keys, emb, photo, label, area, det, x_mid = [], [], [], [], [], [], []
    t0 = time.perf_counter()
    for r in rows:
        p = str(root / r["path"])
        sha = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        faces, _ = analyze_image(p, sha, an, opts)
        faces = [f for f in faces if f["status"] == "faces"]
        labels = face_labels(r["rule"], r["labels"].split(";"), faces, sha)
        for f, lab in zip(faces, labels, strict=True):
            keys.append(f"{sha[:16]}-{f['face_index']}")
            emb.append(f["embedding"])
            photo.append(sha)
            label.append(lab)
            area.append((f["x2"] - f["x1"]) * (f["y2"] - f["y1"]))
            det.append(f["det_score"])
            x_mid.append(r["path"])
    seconds = time.perf_counter() - t0
    out = {
        "keys": np.array(keys),
        "emb": np.stack(emb).astype(np.float32),
        "photo": np.array(photo),
        "label": np.array(label),
        "path": np.array(x_mid),
        "area": np.array(area, np.float32),
        "det_score": np.array(det, np.float32),
        "seconds": np.array(seconds),
        "photos": np.array(len(rows)),
        "model_id": np.array(an.model_id),
    }
    np.savez(cache.with_suffix(".tmp.npz"), **out)
    os.replace(cache.with_suffix(".tmp.npz"), cache)
    return out


def relabel(d: dict, rows: list[dict]) -> dict:
    """Labels from labels.csv as it is now (the set's label fixes change no embedding); caches
    written before face sizes were stored keep the labels they were written with."""
    if "area" not in d:
        return d
    by_path = {r["path"]: r for r in rows}
    label = d["label"].astype(object).copy()
    for path in np.unique(d["path"]):
        i = np.flatnonzero(d["path"] == path)
        r = by_path[str(path)]
        faces = [{"x1": 0.0, "y1": 0.0, "x2": float(a), "y2": 1.0} for a in d["area"][i]]
        label[i] = face_labels(r["rule"], r["labels"].split(";"), faces, str(d["photo"][i[0]]))
    return d | {"label": label.astype(str)}


def face_labels(rule: str, labels: list[str], faces: list[dict], sha: str) -> list[str]:
    """Ground-truth label per detected face ('' = unknown, left out of the scores)."""
    n = len(faces)
    out = [""] * n
    size = np.array([(f["x2"] - f["x1"]) * (f["y2"] - f["y1"]) for f in faces])
    if rule == "unlabelled":
        return out
    if rule == "largest":
        if n:
            out[int(np.argmax(size))] = labels[0]
        return out
    # left_to_right: faces are numbered left to right already; the labelled ones are the largest
    chosen = sorted(np.argsort(-size, kind="stable")[: len(labels)].tolist())
    for i, lab in zip(chosen, labels, strict=False):
        out[i] = f"bystander:{sha[:12]}:{i}" if lab == "bystander" else lab
    return out


# --------------------------------------------------------------------------- methods and scores


# variants of ``context`` the benchmark shows beside it (what each part buys)
VARIANTS = {
    "context-nocenter": ("context", graph_cluster.ContextParams(center=0.0)),
    "context-v1": ("context", graph_cluster.CONTEXT_V1),
}


def run_method(name: str, keys, emb, photo, threshold: float) -> np.ndarray:
    if name == "hac":
        return cluster_faces(keys, emb, photo, threshold).labels
    method, params = VARIANTS.get(name, (name, None))
    return graph_cluster.cluster(keys, emb, photo, threshold, method=method, params=params).labels


def violations(photo: np.ndarray, labels: np.ndarray) -> int:
    g = group_ids(photo)
    pairs = np.unique(np.stack([g, labels], 1), axis=0, return_counts=True)[1]
    return int((pairs * (pairs - 1) // 2).sum())


def sweep(name: str, keys, emb, photo, truth, scored, thresholds) -> list[dict]:
    out = []
    for t in thresholds:
        t0 = time.perf_counter()
        lab = run_method(name, keys, emb, photo, float(t))
        sec = time.perf_counter() - t0
        p, r, f = pairwise_prf(truth[scored], lab[scored])
        _bp, _br, bf = bcubed_prf(truth[scored], lab[scored])
        out.append({"t": float(t), "P": p, "R": r, "F": f, "bF": bf, "viol": violations(photo, lab), "s": sec})
    return out


def cross_recall(truth: np.ndarray, pred: np.ndarray, young: np.ndarray) -> tuple[float, int]:
    """Recall over the (young, adult) face pairs of one person only, the age-gap pairs: (recall, pairs)."""
    per: dict[str, list] = {}
    for t, c, yy in zip(truth.tolist(), pred.tolist(), young.tolist(), strict=True):
        e = per.setdefault(t, [0, 0, {}])
        e[0 if yy else 1] += 1
        cell = e[2].setdefault(c, [0, 0])
        cell[0 if yy else 1] += 1
    tot = sum(ny * na for ny, na, _ in per.values())
    found = sum(cy * ca for _, _, cells in per.values() for cy, ca in cells.values())
    return (found / tot if tot else float("nan")), tot


def best_at(curve: list[dict], pmin: float) -> dict | None:
    ok = [c for c in curve if c["P"] >= pmin]
    return max(ok, key=lambda c: (c["R"], -c["t"])) if ok else None


# --------------------------------------------------------------------------- report


def machine() -> str:
    m = report.machine_facts()
    load = os.getloadavg()[0]
    return (
        f"{m['cpu']}; {m['cores']}; {m['ram']} RAM; {m['os']}; Python {m['python']}; "
        f"load average {load:.1f} at the start (machine shared with other engineers: timings are noisy)"
    )


def curve_table(curves: dict[str, list[dict]]) -> list[str]:
    names = list(curves)
    lines = ["| threshold | " + " | ".join(f"{n} P / R" for n in names) + " |"]
    lines.append("|---:|" + "---:|" * len(names))
    for i, c in enumerate(curves[names[0]]):
        cells = [f"{curves[n][i]['P']:.3f} / {curves[n][i]['R']:.3f}" for n in names]
        lines.append(f"| {c['t']:.2f} | " + " | ".join(cells) + " |")
    return lines


def summary_table(curves: dict[str, list[dict]], base: str = "hac") -> list[str]:
    lines = [
        "| method | "
        + " | ".join(f"R @ P≥{p} (t)" for p in PRECISIONS)
        + " | ratio to HAC @0.99 | cannot-link violations |"
    ]
    lines.append("|---|" + "---:|" * (len(PRECISIONS) + 2))
    b = best_at(curves[base], PRECISIONS[0])
    for n, c in curves.items():
        cells = []
        for p in PRECISIONS:
            x = best_at(c, p)
            cells.append(f"{x['R']:.3f} ({x['t']:.2f})" if x else "–")
        x = best_at(c, PRECISIONS[0])
        ratio = f"{x['R'] / b['R']:.2f}x" if x and b and b["R"] > 0 else "–"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {ratio} | {sum(r['viol'] for r in c)} |")
    return lines


METHOD_NOTES = [
    "- `hac` = `clustering.cluster_faces` (auto), the seed's average linkage + cannot-link. `context` = "
    "facesets/graph_cluster.py: (1) centring: the mean of the unit centroids of a tight first pass of the "
    "seed's HAC at 0.35 (each tight cluster counts once) is subtracted from every face, when that pass finds "
    ">= 50 clusters; (2) each face averaged with up to 5 nearest faces closer than the cut that are "
    "k-reciprocal (the face is among the neighbour's 10 nearest; never of its own photo); (3) the seed's HAC "
    "on those vectors; (4) a face left alone joins its nearest neighbour's cluster when that neighbour is "
    "closer than the cut + 0.06 and at most 0.9x as far as any other cluster. `context-noattach` = without "
    "(4); `context-nocenter` = without (1); `context-v1` = the first session's version (fixed radius 0.55, "
    "no reciprocity, no centring).",
    "- Each method is read at its own best cut: centring spreads strangers apart, so `context` wants a "
    "different cut than HAC; the columns `R @ P≥x (t)` give both.",
]
REAL_NOTES = [
    "- The real set is easier than the one the issue quotes (HAC R 0.47 at P 0.99): here HAC already reaches "
    "R 0.92 at P ≥ 0.99, so no method can reach 1.25x (the ceiling is 1/R_HAC). The misses left are web "
    "photos decades apart and profiles whose nearest labelled face is 0.59-0.73 away, where strangers start "
    "(nearest different-identity pairs ~0.64).",
]
HARD_NOTES = [
    "- The hard set (benchmarks/build_real_set.py --set hard): the Large Age-Gap database (1,010 celebrities, "
    "each as a child or young adult and as an adult or old; 100x100 web crops, small faces) with its "
    "siblings (Affleck, Hemsworth, Gyllenhaal, Gallagher, Hilton brothers/sisters) and same-surname "
    "look-alikes, plus deepface's test photos (labels from its pair lists and embedded captions), openface's "
    "Lennon/Clapton at different ages and facenet-pytorch's examples. Four LAG folders that name one person "
    "twice are merged by name (typo, name forms, maiden name, film role) and pictures filed under two "
    "people are unscored (PROVENANCE.json gives each label's source).",
    "- LAG's labels are web-scraped and not perfect: nearest different-label pairs at cosine distance "
    "0.30-0.35 include same-picture crops of children; they cap every method's precision alike.",
]


def age_gap_lines(root: Path, d: dict, curves: dict[str, list[dict]]) -> list[str]:
    """Recall over the (young, adult) pairs of one person at each method's P>=0.99 cut."""
    import json

    prov = json.loads((root / "PROVENANCE.json").read_text())
    young_files = {p["file"] for p in prov["photos"] if p.get("age") == "young"}
    adult_files = {p["file"] for p in prov["photos"] if p.get("age") == "adult"}
    lag = np.array([str(p) in young_files or str(p) in adult_files for p in d["path"]])
    young = np.array([str(p) in young_files for p in d["path"]])
    sel = lag & (d["label"] != "")
    lines = ["Age-gap pairs (LAG young x adult photos of one person) at each method's P≥0.99 cut:", ""]
    for m, c in curves.items():
        x = best_at(c, 0.99)
        if not x:
            continue
        lab = run_method(m, d["keys"], d["emb"], d["photo"], x["t"])
        r, n = cross_recall(d["label"][sel], lab[sel], young[sel])
        lines.append(f"- {m}: recall {r:.3f} of {n} young-adult pairs (cut {x['t']:.2f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", default=str(REPO / "work" / "bench" / "real_set"))
    ap.add_argument("--model-dir", default=str(REPO / "work" / "models"))
    ap.add_argument("--set-name", choices=("real", "hard"), default="real", help="which section the run writes")
    ap.add_argument("--tta", default="plain,flip", help="embeddings to measure: plain and/or flip (TTA)")
    ap.add_argument("--methods", default="hac," + ",".join((*graph_cluster.METHODS, *VARIANTS)))
    ap.add_argument("--thresholds", default="0.30:0.80:0.02", help="start:stop:step (stop inclusive)")
    ap.add_argument("--synth", default="5000,20000,27000", help="synthetic sizes, comma-separated ('' = none)")
    ap.add_argument("--sweep-max", type=int, default=5000, help="above this size only the operating cut runs")
    ap.add_argument("--synth-threshold", type=float, default=0.55, help="operating cut for the BCubed comparison")
    ap.add_argument("--time-n", type=int, default=0, help="also time hac vs context once at this size (e.g. 100000)")
    ap.add_argument("--write", help="rewrite this section of this markdown file (e.g. docs/benchmarks.md)")
    args = ap.parse_args(argv)
    a, b, s = (float(v) for v in args.thresholds.split(":"))
    thresholds = np.round(np.arange(a, b + s / 2, s), 4)
    methods = [m for m in args.methods.split(",") if m]
    hard = args.set_name == "hard"
    title, set_word = (SECTION_HARD, "hard real set") if hard else (SECTION, "real set")
    out = [title, "", f"- Date: {report.utc_date()}", f"- Machine: {machine()}"]
    out.append(f"- Command: `python benchmarks/bench_recall.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    out.append(
        "- Pairwise precision/recall over labelled faces; every face (labelled or not) is clustered; "
        "cannot-link = two faces of one photo in one cluster (summed over the sweep)."
    )
    targets: list[str] = []
    root = Path(args.real)
    if (root / "labels.csv").exists():
        embed_s = {}
        for flip in [v == "flip" for v in args.tta.split(",") if v]:
            d = embed_real_set(root, Path(args.model_dir), flip)
            embed_s[flip] = float(d["seconds"])
            truth, scored = d["label"], d["label"] != ""
            n_id = len(set(truth[scored].tolist()))
            tag = "flip TTA" if flip else "plain"
            out += [
                "",
                f"### {set_word}, SFace {tag} (model id `{d['model_id']}`)",
                "",
                f"{int(d['photos'])} photos, {len(truth)} faces ({int(scored.sum())} labelled, {n_id} identities); "
                f"embedded in {float(d['seconds']):.1f} s.",
                "",
            ]
            curves = {m: sweep(m, d["keys"], d["emb"], d["photo"], truth, scored, thresholds) for m in methods}
            out += [*summary_table(curves), ""]
            if hard:
                out += [*age_gap_lines(root, d, curves), ""]
            out += curve_table(curves)
            if not flip and "context" in curves:
                prof = min(curves["hac"], key=lambda r: abs(r["t"] - PROFILE_CUT))
                i = curves["hac"].index(prof)
                ctx = curves["context"][i]
                targets.append(
                    f"- {set_word} at the SFace profile cut {prof['t']:.2f} (what a user gets): HAC P {prof['P']:.3f} "
                    f"R {prof['R']:.3f}, context P {ctx['P']:.3f} R {ctx['R']:.3f} "
                    f"({ctx['R'] / max(prof['R'], 1e-9):.2f}x)"
                )
            h, c = best_at(curves["hac"], 0.99), best_at(curves.get("context", []), 0.99)
            if h and c:
                targets.append(
                    f"- {set_word} ({tag}), recall at P≥0.99 ≥ 1.25x HAC: {'PASS' if c['R'] >= 1.25 * h['R'] else 'FAIL'} "
                    f"(HAC P {h['P']:.3f} R {h['R']:.3f} at {h['t']:.2f}; context P {c['P']:.3f} R {c['R']:.3f} at "
                    f"{c['t']:.2f}: {c['R'] / h['R']:.2f}x; the most any method can reach here is "
                    f"{1 / h['R']:.2f}x, recall 1)"
                )
            print(f"{set_word} ({tag}) done", flush=True)
        if len(embed_s) == 2:
            targets.append(
                f"- embed cost of flip TTA: {embed_s[True] / embed_s[False]:.2f}x today's embed (the same photos, "
                "decode + detect + align + recognizer, embedded one after the other when the cache was built; "
                "the recognizer runs twice per face)"
            )
    else:
        out += ["", f"(real set not found at {root}: run benchmarks/build_real_set.py)"]
    op = float(args.synth_threshold)
    for n in [int(v) for v in args.synth.split(",") if v]:
        f = synthetic_faces(n, seed=0)
        truth, scored = f.identity, np.ones(len(f), bool)
        out += ["", f"### synthetic, n = {n:,}".replace(",", " "), ""]
        if n <= args.sweep_max:
            curves = {m: sweep(m, f.keys, f.emb, f.photo, truth, scored, thresholds) for m in methods}
            out += [*summary_table(curves), ""]
        out.append(f"At the operating cut {op} (the synthetic generator's threshold):")
        out.append("")
        at_op = {}
        for m in methods:
            r = at_op[m] = sweep(m, f.keys, f.emb, f.photo, truth, scored, [op])[0]
            out.append(
                f"- {m}: BCubed F {r['bF']:.4f}, pairwise P {r['P']:.4f} R {r['R']:.4f}, "
                f"cannot-link violations {r['viol']}, {r['s']:.2f} s"
            )
        if n <= args.sweep_max:
            out += ["", *curve_table(curves)]
        if "context" in at_op and "hac" in at_op:
            h, c = at_op["hac"], at_op["context"]
            targets.append(
                f"- synthetic n={n}, BCubed F at {op} ≥ HAC: {'PASS' if c['bF'] >= h['bF'] else 'FAIL'} "
                f"(HAC {h['bF']:.4f}, context {c['bF']:.4f}; cannot-link violations {c['viol']})"
            )
        print(f"synthetic n={n} done", flush=True)
    if args.time_n:
        f = synthetic_faces(args.time_n, seed=0)
        sec = {}
        for m in ("hac", "context", "hac"):
            t0 = time.perf_counter()
            run_method(m, f.keys, f.emb, f.photo, op)
            sec.setdefault(m, []).append(time.perf_counter() - t0)
        h, c = float(np.mean(sec["hac"])), sec["context"][0]
        est = c / h * IDLE_HAC_1E5
        targets.append(
            f"- {args.time_n:,} faces < 60 s: context {c:.1f} s vs HAC {h:.1f} s in this run (mean of a run before "
            f"and after), ratio {c / h:.2f}; at the cluster benchmark's idle HAC time ({IDLE_HAC_1E5} s) that is "
            f"~{est:.0f} s: {'PASS' if est < 60 else 'FAIL'} (estimate from the ratio; the machine was loaded)"
        )
    notes = ["", "Notes:", "", *METHOD_NOTES, *(HARD_NOTES if hard else REAL_NOTES), BACKENDS]
    out[6:6] = (["", "Targets:", "", *targets] if targets else []) + notes
    text = "\n".join(out) + "\n"
    if args.write:
        report.write_section(Path(args.write), title, text, "# Benchmarks\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
