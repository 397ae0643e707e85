"""Build the real labelled face set for the recall benchmark (benchmarks/bench_recall.py).

Sources (nothing is copied into this repository; the set is written under a gitignored folder):

* ``dev-faces`` (``../shared/datasets/dev-faces``): 34 labelled photos; ``labels.csv`` names the
  faces of each photo left to right (rule ``left_to_right``).
* Public GitHub repositories, read from snapshots brought here by the ``fetch`` tool (bare git
  directories ``/work/.mirror/<owner>+<name>/repo``), at the snapshot's HEAD commit, with
  ``git --git-dir=DIR show COMMIT:PATH``. Each repository's per-person folders are listed in
  ``SOURCES``: ``<prefix>/<person>/<file>`` is a photo of ``<person>`` (rule ``largest``: the
  labelled face is the largest detection; any other face in the photo is an unknown person).

``--set hard`` builds the HARD set instead (``HARD_SOURCES``, no dev-faces; default out
``work/bench/hard_set``): age gaps (the Large Age-Gap database: each celebrity as a child or
young adult in ``<person>/y/`` and as an adult or old), varied web photos of celebrities years
apart (deepface's test photos, labelled from the repository's own pair lists and the photos'
embedded captions), and a few named example photos (openface, facenet-pytorch). Names are the
LAG folder names (``first_last``); a photo of another source gets a LAG name only when the
source names that person in full (a caption, a document, a folder name), so the same person
never carries two labels across sources; a person the sources name only by a first name that
some LAG identity shares stays unscored (clustered, never counted), because that person might
be in LAG under the full name. Group photos nobody labelled face by face are unscored too
(rule ``unlabelled``).

Photos are de-duplicated by content (sha256): a byte-identical copy under another path is the
same photo to the workflow (an alias), so it is written once. Output::

    OUT/photos/<source>/<person or dev path>/<file>
    OUT/labels.csv        path,rule,labels  (labels ';'-separated, left to right for left_to_right)
    OUT/PROVENANCE.json   per photo: source repository, commit, path in it, label, sha256, licence note

    python benchmarks/build_real_set.py --mirror /work/.mirror/krasserm+face-recognition/repo \
        --mirror /work/.mirror/justadudewhohacks+face-api.js/repo \
        --mirror /work/.mirror/bhachauk+reality_of_one_shot_learning/repo --out work/bench/real_set
    python benchmarks/build_real_set.py --set hard --mirror /work/.mirror/loiswjj+Face_Recognition/repo \
        --mirror /work/.mirror/serengil+deepface/repo --mirror /work/.mirror/cmusatyalab+openface/repo \
        --mirror /work/.mirror/timesler+facenet-pytorch/repo          # -> work/bench/hard_set
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from facesets.atomic import write_bytes, write_json, write_text  # noqa: E402

IMAGE_EXT = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class RepoSource:
    repo: str  # owner/name on GitHub
    prefixes: tuple[str, ...]  # folders whose sub-folders are one person each
    licence: str  # what we know about the photos' licence
    young_dir: str | None = None  # <prefix>/<person>/<young_dir>/<file>: the person young (LAG)
    files: tuple[tuple[str, str, str], ...] = ()  # (path, label or '' = unlabelled, label source)
    label_source: str = "the folder name <prefix>/<person>/"


SOURCES = {
    "krasserm+face-recognition": RepoSource(
        "krasserm/face-recognition",
        ("images",),
        "Repository Apache-2.0; the photos are a subset of Labeled Faces in the Wild (LFW, UMass Amherst), "
        "news photos whose copyright stays with their owners; LFW is distributed for research. "
        "Used here only to measure clustering, not redistributed.",
    ),
    "justadudewhohacks+face-api.js": RepoSource(
        "justadudewhohacks/face-api.js",
        ("examples/images",),
        "Repository MIT (c) 2018 Vincent Mühler; the per-person example images are stills of TV actors "
        "whose copyright stays with their owners. Used here only to measure clustering, not redistributed.",
    ),
    "bhachauk+reality_of_one_shot_learning": RepoSource(
        "bhachauk/reality_of_one_shot_learning",
        ("train", "test"),
        "No licence file in the repository; the photos are the '5 Celebrity Faces' set (web images of "
        "public figures across decades, first published on Kaggle), copyright with their owners. "
        "Used here only to measure clustering, not redistributed.",
    ),
}

LAG_LICENCE = (
    "The Large Age-Gap (LAG) database (S. Bianco, Pattern Recognition Letters 90, 2017), as committed "
    "in this repository (data/Pic/README.txt): 'Do not redistribute without permission. Strictly for "
    "academic and non-commercial purpose only.' Web photos of public figures. Used here only to measure "
    "clustering on this machine, never redistributed or committed."
)
DEEPFACE_LICENCE = (
    "Repository MIT (c) Sefik Ilkin Serengil; tests/unit/dataset holds press and web photos of public "
    "figures whose copyright stays with their owners (captions name Getty/AP photographers). Used here "
    "only to measure clustering, not redistributed."
)
_DF = "tests/unit/dataset/"
_DF_PAIRS = (
    "tests/unit/dataset/master.csv + face-recognition-pivot.csv: the 'Yes' pairs joined into groups "
    "(union-find; no 'No' pair inside a group); "
)


def _deepface_files() -> tuple[tuple[str, str, str], ...]:
    """deepface test photos: the groups of its pair lists, each named where the repository names
    the person in full; first-name-only groups whose first name a LAG identity shares are unscored."""
    nb = "experiments/distance-to-confidence.ipynb names this group "
    groups = [
        (
            (1, 2, 4, 5, 6, 7, 10, 11),
            "angelina_jolie",
            nb + "'Angelina' (test_find.py: 'angelinas'); "
            "LAG's only Angelina is angelina_jolie (assumption: the same person)",
        ),
        (
            (8, 9, 47, 48, 49, 50, 51),
            "scarlett_johansson",
            nb + "'Scarlett'; LAG's only Scarlett is scarlett_johansson (assumption: the same person)",
        ),
        ((16, 17, 59, 61, 62), "jack_dorsey", "img61.jpg's embedded caption: 'Twitter CEO Jack Dorsey'"),
        ((26, 27, 28, 42, 43, 44, 45, 46), "katy_perry", "img26.jpg's embedded caption: 'Singer Katy Perry'"),
        ((29, 30, 31, 32, 33), "matt_damon", "img33.jpg's embedded caption: 'actor Matt Damon'"),
        ((38, 39, 40, 41), "george_clooney", "img39.jpg/img41.jpg's embedded captions: 'George Clooney'"),
        ((18, 19, 67), "deepface:elon", nb + "'Elon' (no LAG identity is called Elon)"),
        ((22, 23), "deepface:marissa", nb + "'Marissa' (no LAG identity is called Marissa)"),
        ((24, 25), "deepface:sundar", nb + "'Sundar' (no LAG identity is called Sundar)"),
        ((3, 12, 53, 54, 55, 56), "", nb + "'Jennifer': 8 LAG identities are called Jennifer, so unscored"),
        ((13, 14, 15, 57, 58), "", nb + "'Mark': 9 LAG identities are called Mark, so unscored"),
        ((20, 21), "", nb + "'Jeff': 2 LAG identities are called Jeff, so unscored"),
        ((34, 35, 36, 37), "", "no name in the repository, so unscored (the person might be in LAG)"),
    ]
    out = [(f"{_DF}img{i}.jpg", label, _DF_PAIRS + why) for ids, label, why in groups for i in ids]
    out += [
        (f"{_DF}{f}", "", "group photo, faces not labelled one by one: unscored")
        for f in ("couple.jpg", "selfie-many-people.jpg")
    ]
    return tuple(out)


HARD_SOURCES = {
    "loiswjj+Face_Recognition": RepoSource(
        "loiswjj/Face_Recognition",
        ("FaceDetection/FaceDetection/data/Pic",),
        LAG_LICENCE,
        young_dir="y",
        label_source="the LAG identity folder <person>/ (its y/ sub-folder: the same person young)",
    ),
    "serengil+deepface": RepoSource("serengil/deepface", (), DEEPFACE_LICENCE, files=_deepface_files()),
    "cmusatyalab+openface": RepoSource(
        "cmusatyalab/openface",
        (),
        "Repository Apache-2.0 (Carnegie Mellon University); images/examples are photos of public figures "
        "whose copyright stays with their owners. Used here only to measure clustering, not redistributed.",
        files=(
            ("images/examples/lennon-1.jpg", "john_lennon", "docs/demo-2-comparison.md: 'images of John Lennon'"),
            ("images/examples/lennon-2.jpg", "john_lennon", "docs/demo-2-comparison.md: 'images of John Lennon'"),
            ("images/examples/clapton-1.jpg", "eric_clapton", "docs/demo-2-comparison.md: 'and Eric Clapton'"),
            ("images/examples/clapton-2.jpg", "eric_clapton", "docs/demo-2-comparison.md: 'and Eric Clapton'"),
            ("images/examples/carell.jpg", "steve_carell", "docs/demo-3-classifier.md: Carell -> SteveCarell"),
            ("images/examples/adams.jpg", "amy_adams", "docs/demo-3-classifier.md: Adams -> AmyAdams"),
            ("images/examples/longoria-cooper.jpg", "", "two people, not labelled one by one: unscored"),
        ),
    ),
    "timesler+facenet-pytorch": RepoSource(
        "timesler/facenet-pytorch",
        ("data/test_images",),
        "Repository MIT (c) Tim Esler; data/test_images are web photos of actors whose copyright stays "
        "with their owners. Used here only to measure clustering, not redistributed.",
    ),
}

# LAG folders that name one person twice (a typo, two forms of one name, a maiden and a married
# name, a film role): folder -> the folder kept, and why. Found by comparing folder NAMES
# (similar spellings, shared surnames), never by the face model.
LAG_ALIASES = {
    "kathleen_turne": ("kathleen_turner", "a misspelt second folder of the same name"),
    "ricky_schroder": ("rick_schroder", "two forms of the actor's name (Ricky / Rick Schroder)"),
    "odette_yustman": ("odette_annable", "the actress' maiden and married names (Odette Yustman / Annable)"),
    "john_connor": (
        "edward_furlong",
        "John Connor is the Terminator 2 role Edward Furlong played; the folder's files are named "
        "john-connor-ieri/-oggi ('then'/'now')",
    ),
}
# single photos filed under a person their file name says they are not: unscored
UNSCORED_FILES = {
    "FaceDetection/FaceDetection/data/Pic/george_h_w_bush/y/George-W-Bush-Childhood-Home-8_1.png": (
        "the file name names George W. Bush; it is filed under his father"
    ),
}
PIXEL_DUP = 0.95  # correlation of 24x24 grey thumbnails: the same picture


DEV_LICENCE = (
    "dev-faces (../shared/datasets/dev-faces/README.md): examples/test images of the MIT-licensed "
    "ageitgey/face_recognition and the insightface package's sample images; photos of public figures."
)


def git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True).stdout


def source_key(git_dir: Path) -> str:
    """``/work/.mirror/owner+name/repo`` -> ``owner+name``."""
    for part in reversed(git_dir.resolve().parts):
        if "+" in part:
            return part
    raise ValueError(f"{git_dir}: not a fetched snapshot (/work/.mirror/<owner>+<name>/...)")


def folder_label(src: RepoSource, path: str) -> tuple[str, str] | None:
    """(label, age) of ``<prefix>/<person>/<file>`` (or ``<prefix>/<person>/<young_dir>/<file>``);
    None for any other path (loose images there are group shots without labels)."""
    prefix = next(p for p in src.prefixes if path.startswith(p + "/"))
    rest = path[len(prefix) + 1 :].split("/")
    if not rest[-1].lower().endswith(IMAGE_EXT):
        return None
    if len(rest) == 2:
        return rest[0].lower(), "adult" if src.young_dir else ""
    if len(rest) == 3 and src.young_dir and rest[1] == src.young_dir:
        return rest[0].lower(), "young"
    return None


def repo_photos(git_dir: Path, sources: dict[str, RepoSource]) -> list[dict]:
    """Labelled photos of one snapshot at HEAD: dicts with repo, commit, path, label, data."""
    key = source_key(git_dir)
    if key not in sources:
        raise ValueError(f"{git_dir}: no per-person folder layout known for {key} (known: {sorted(sources)})")
    src = sources[key]
    commit = git(git_dir, "rev-parse", "HEAD").decode().strip()
    entries: list[tuple[str, str, str, str]] = []  # path, label, age, label source
    if src.prefixes:
        listing = git(git_dir, "ls-tree", "-r", "-z", "--name-only", commit, "--", *src.prefixes)
        names = [n for n in listing.decode().split("\0") if n]  # -z: names as they are, not C-quoted
        for path in sorted(names):
            lab = folder_label(src, path)
            if not lab:
                continue
            label, why = lab[0], src.label_source
            if src.young_dir and label in LAG_ALIASES:  # LAG's name fixes
                label, reason = LAG_ALIASES[label]
                why += f"; folder {lab[0]} is {label}: {reason}"
            if path in UNSCORED_FILES:
                label, why = "", f"unscored: {UNSCORED_FILES[path]}"
            entries.append((path, label, lab[1], why))
    entries += [(path, label, "", why) for path, label, why in src.files]
    out = []
    for path, label, age, why in entries:
        try:
            data = git(git_dir, "show", f"{commit}:{path}")
        except subprocess.CalledProcessError:
            print(
                f"note: {key} {path}: not in the snapshot (a large file the fetch left out), skipped", file=sys.stderr
            )
            continue
        out.append(
            {
                "source": key,
                "repo": src.repo,
                "commit": commit,
                "path": path,
                "label": label,
                "rule": "largest" if label else "unlabelled",
                "age": age,
                "label_source": why,
                "licence": src.licence,
                "data": data,
                "dest": f"{key}/{path}",
            }
        )
    return out


def dev_photos(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        {
            "source": "dev-faces",
            "repo": "../shared/datasets/dev-faces",
            "commit": None,
            "path": r["path"],
            "label": r["faces_left_to_right"],
            "rule": "left_to_right",
            "label_source": "labels.csv faces_left_to_right",
            "licence": DEV_LICENCE,
            "data": (root / r["path"]).read_bytes(),
            "dest": f"dev-faces/{r['path']}",
        }
        for r in rows
    ]


def thumb(path: Path):
    """24x24 grey thumbnail, zero-mean and unit-norm (None when the file does not decode)."""
    import cv2
    import numpy as np

    im = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if im is None:
        return None
    t = cv2.resize(im, (24, 24), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-9)


def pixel_conflicts(kept: list[dict], out: Path) -> dict[int, str]:
    """Photos whose picture (thumbnail correlation >= PIXEL_DUP) is also filed under ANOTHER
    label: one of the two labels is wrong and nothing says which, so both become unscored.
    Pixels only, never the face model. Index in ``kept`` -> reason."""
    import numpy as np

    idx = [i for i, p in enumerate(kept) if p["label"] and p["rule"] == "largest"]
    th = [thumb(out / kept[i]["file"]) for i in idx]
    idx = [i for i, t in zip(idx, th, strict=True) if t is not None]
    if len(idx) < 2:
        return {}
    m = np.stack([t for t in th if t is not None])
    c = m @ m.T
    a, b = np.nonzero(np.triu(c >= PIXEL_DUP, 1))
    found: dict[int, str] = {}
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        pi, pj = kept[idx[i]], kept[idx[j]]
        if pi["label"] != pj["label"]:
            found[idx[i]] = (
                f"unscored: the same picture (thumbnail correlation {c[i, j]:.3f}) is filed as {pj['label']}"
            )
            found[idx[j]] = (
                f"unscored: the same picture (thumbnail correlation {c[i, j]:.3f}) is filed as {pi['label']}"
            )
    return found


def build(photos: list[dict], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    kept, dup = [], []
    for p in photos:
        sha = hashlib.sha256(p["data"]).hexdigest()
        if sha in seen:
            dup.append({"path": p["path"], "source": p["source"], "same_as": seen[sha]})
            continue
        seen[sha] = p["dest"]
        dest = out / "photos" / p["dest"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(dest, p["data"])
        kept.append({k: v for k, v in p.items() if k != "data"} | {"sha256": sha, "file": f"photos/{p['dest']}"})
    conflicts = pixel_conflicts(kept, out)
    for i in sorted(conflicts):
        kept[i] |= {"label": "", "rule": "unlabelled", "label_source": conflicts[i]}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "rule", "labels"])
    for p in kept:
        w.writerow([p["file"], p["rule"], p["label"]])
    write_text(out / "labels.csv", buf.getvalue())
    prov = {"photos": kept, "duplicates_dropped": dup, "label_conflicts": len(conflicts)}
    write_json(out / "PROVENANCE.json", prov)
    return prov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("real", "hard"), default="real", help="which set to build")
    ap.add_argument("--mirror", action="append", default=[], help="fetched snapshot git dir (repeatable)")
    ap.add_argument("--dev-faces", default=str(REPO.parent / "shared" / "datasets" / "dev-faces"))
    ap.add_argument("--out", help="default work/bench/real_set or work/bench/hard_set")
    args = ap.parse_args(argv)
    out = Path(args.out or REPO / "work" / "bench" / f"{args.set}_set")
    photos: list[dict] = []
    dev = Path(args.dev_faces)
    if args.set == "hard":
        pass  # dev-faces is in the (easy) real set only
    elif (dev / "labels.csv").exists():
        photos += dev_photos(dev)
    else:
        print(f"note: {dev}/labels.csv not found, dev-faces left out", file=sys.stderr)
    for m in args.mirror:
        photos += repo_photos(Path(m), HARD_SOURCES if args.set == "hard" else SOURCES)
    if not photos:
        print("no photos: give --mirror and/or --dev-faces", file=sys.stderr)
        return 2
    prov = build(photos, out)
    by_source: dict[str, int] = {}
    for p in prov["photos"]:
        by_source[p["source"]] = by_source.get(p["source"], 0) + 1
    print(
        f"{len(prov['photos'])} photos ({by_source}), {len(prov['duplicates_dropped'])} byte-identical copies dropped"
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
