"""Real labelled photos (../shared/datasets/dev-faces): every labelled face is found,
byte-identical copies become aliases. Skipped with a message when the dataset is absent."""

import pandas as pd
import pytest

from facesets import schema
from facesets.embed import EmbedOptions, embed_listing, sidecar_paths
from facesets.listing import stage_source
from facesets.options import build
from facesets.store import FaceStore

pytestmark = pytest.mark.slow
CONFIDENT = 0.8  # faces scored above this are counted as "detected with confidence"


@pytest.fixture(scope="module")
def dev_tables(dev_faces, tmp_path_factory, opencv_analyzer):
    tmp = tmp_path_factory.mktemp("dev")
    listing = stage_source("dev", dev_faces, ["**/*.jpg", "**/*.jpeg", "**/*.png"], [], tmp / "listing.parquet")
    out = tmp / "faces.parquet"
    embed_listing(
        listing,
        opencv_analyzer,
        FaceStore(tmp / "store", opencv_analyzer.model_id),
        build(EmbedOptions, "embed"),
        out,
        True,
    )
    return listing, schema.read_table(out), schema.read_table(sidecar_paths(out)[0])


def _record(images: pd.DataFrame, path: str) -> pd.Series:
    hit = images[(images.path == path) | images.aliases.map(lambda a: path in list(a))]
    assert len(hit) == 1, path
    return hit.iloc[0]


def test_every_labelled_face_is_detected(dev_faces, dev_tables):
    _, faces, images = dev_tables
    labels = pd.read_csv(dev_faces / "labels.csv")
    assert len(labels) == 34
    for row in labels.itertuples():
        names = row.faces_left_to_right.split(";")
        wanted = [n for n in names if n != "bystander"]
        rec = _record(images, str(dev_faces / row.path))
        assert rec.status == "faces", row.path
        found = faces[faces.sha256 == rec.sha256]
        confident = int((found.det_score >= CONFIDENT).sum())
        assert len(wanted) <= confident <= len(names), (row.path, names, found.det_score.tolist())


def test_people_in_group_photos_are_told_apart(dev_faces, dev_tables):
    """Faces of one photo are numbered left to right; labels say who is where."""
    import numpy as np

    _, faces, images = dev_tables

    def emb(path, i):
        rec = _record(images, str(dev_faces / path))
        f = faces[(faces.sha256 == rec.sha256) & (faces.det_score >= CONFIDENT)].sort_values("x1")
        return np.asarray(f.embedding.iloc[i])

    obama, biden = emb("misc/two_people.jpg", 0), emb("misc/two_people.jpg", 1)
    assert float(obama @ emb("test/obama1.jpg", 0)) > float(obama @ emb("misc/biden.jpg", 0))
    assert float(biden @ emb("misc/biden.jpg", 0)) > float(biden @ emb("test/obama1.jpg", 0))


def test_byte_identical_copies_become_aliases(dev_faces, dev_tables):
    listing, faces, images = dev_tables
    for name in ("biden.jpg", "obama.jpg", "obama2.jpg"):
        rec = _record(images, str(dev_faces / "misc" / name))
        assert rec.path == str(dev_faces / "misc" / name)
        assert sorted(rec.aliases) == sorted(
            str(dev_faces / d / n)
            for d, n in [("tests_images", name), ("train/" + name.split(".")[0].rstrip("2"), name)]
        )
        assert (faces[faces.sha256 == rec.sha256].aliases.map(len) == 2).all()
    assert len(listing) == 28  # 34 files, 6 of them aliases
