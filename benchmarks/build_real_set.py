"""Build the real labelled face set for the recall benchmark (benchmarks/bench_recall.py).

Sources (nothing is copied into this repository; the set is written under a gitignored folder):

* ``dev-faces`` (``../shared/datasets/dev-faces``): 34 labelled photos; ``labels.csv`` names the
  faces of each photo left to right (rule ``left_to_right``).
* Public GitHub repositories, read from snapshots brought here by the ``fetch`` tool (bare git
  directories ``/work/.mirror/<owner>+<name>/repo``), at the snapshot's HEAD commit, with
  ``git --git-dir=DIR show COMMIT:PATH``. Each repository's per-person folders are listed in
  ``SOURCES``: ``<prefix>/<person>/<file>`` is a photo of ``<person>`` (rule ``largest``: the
  labelled face is the largest detection; any other face in the photo is an unknown person).

Photos are de-duplicated by content (sha256): a byte-identical copy under another path is the
same photo to the workflow (an alias), so it is written once. Output::

    OUT/photos/<source>/<person or dev path>/<file>
    OUT/labels.csv        path,rule,labels  (labels ';'-separated, left to right for left_to_right)
    OUT/PROVENANCE.json   per photo: source repository, commit, path in it, label, sha256, licence note

    python benchmarks/build_real_set.py --mirror /work/.mirror/krasserm+face-recognition/repo \
        --mirror /work/.mirror/justadudewhohacks+face-api.js/repo \
        --mirror /work/.mirror/bhachauk+reality_of_one_shot_learning/repo --out work/bench/real_set
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


def repo_photos(git_dir: Path) -> list[dict]:
    """Per-person photos of one snapshot at HEAD: dicts with repo, commit, path, label, data."""
    key = source_key(git_dir)
    if key not in SOURCES:
        raise ValueError(f"{git_dir}: no per-person folder layout known for {key} (known: {sorted(SOURCES)})")
    src = SOURCES[key]
    commit = git(git_dir, "rev-parse", "HEAD").decode().strip()
    names = git(git_dir, "ls-tree", "-r", "--name-only", commit, "--", *src.prefixes).decode().splitlines()
    out = []
    for path in sorted(names):
        prefix = next(p for p in src.prefixes if path.startswith(p + "/"))
        rest = path[len(prefix) + 1 :].split("/")
        if len(rest) != 2 or not rest[1].lower().endswith(IMAGE_EXT):
            continue  # only <prefix>/<person>/<file>: loose images there are group shots without labels
        out.append(
            {
                "source": key,
                "repo": src.repo,
                "commit": commit,
                "path": path,
                "label": rest[0].lower(),
                "rule": "largest",
                "licence": src.licence,
                "data": git(git_dir, "show", f"{commit}:{path}"),
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
            "licence": DEV_LICENCE,
            "data": (root / r["path"]).read_bytes(),
            "dest": f"dev-faces/{r['path']}",
        }
        for r in rows
    ]


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
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "rule", "labels"])
    for p in kept:
        w.writerow([p["file"], p["rule"], p["label"]])
    write_text(out / "labels.csv", buf.getvalue())
    prov = {"photos": kept, "duplicates_dropped": dup}
    write_json(out / "PROVENANCE.json", prov)
    return prov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", action="append", default=[], help="fetched snapshot git dir (repeatable)")
    ap.add_argument("--dev-faces", default=str(REPO.parent / "shared" / "datasets" / "dev-faces"))
    ap.add_argument("--out", default=str(REPO / "work" / "bench" / "real_set"))
    args = ap.parse_args(argv)
    photos: list[dict] = []
    dev = Path(args.dev_faces)
    if (dev / "labels.csv").exists():
        photos += dev_photos(dev)
    else:
        print(f"note: {dev}/labels.csv not found, dev-faces left out", file=sys.stderr)
    for m in args.mirror:
        photos += repo_photos(Path(m))
    if not photos:
        print("no photos: give --mirror and/or --dev-faces", file=sys.stderr)
        return 2
    prov = build(photos, Path(args.out))
    by_source: dict[str, int] = {}
    for p in prov["photos"]:
        by_source[p["source"]] = by_source.get(p["source"], 0) + 1
    print(
        f"{len(prov['photos'])} photos ({by_source}), {len(prov['duplicates_dropped'])} byte-identical copies dropped"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
