"""Single-face crops: geometry, padding shrink, masking, and the re-detection check on real photos."""

import dataclasses

import numpy as np
import pytest

from facesets import imageio, thresholds
from facesets.analyzers.base import Detection
from facesets.crops import (
    clean_pad_ratio,
    decode_long_side,
    decode_png,
    encode_png,
    iou,
    mask_faces,
    overlap_fraction,
    pad_schedule,
    render_crop,
    single_face_crop,
    square_box,
    to_crop_coords,
)
from facesets.export import make_detector, resolve_options

DEFAULTS = resolve_options({}, thresholds.ARCFACE)  # the schema's export defaults


@pytest.fixture(scope="module")
def roop_detector(model_dir):
    """YuNet at roop's settings (640 px, threshold 0.5): the check export uses for the opencv backend."""
    detect, _ = make_detector("opencv", {}, DEFAULTS, model_dir)
    return detect


def test_square_box_is_centred_and_padded():
    b = square_box([100, 50, 200, 250], 0.5)  # 100 wide, 200 tall: the long edge sets the side
    assert b.side == pytest.approx(400)
    assert (b.x0 + b.side / 2, b.y0 + b.side / 2) == pytest.approx((150, 150))
    # the face fills the middle half of a 512 crop
    assert to_crop_coords([100, 50, 200, 250], b, 512) == pytest.approx([192, 128, 320, 384])


def test_clean_padding_leaves_the_neighbour_out():
    target = [100, 100, 200, 200]
    far = [262, 100, 362, 200]  # 112 px right of the centre: the full 0.5 padding fits
    assert clean_pad_ratio(target, [far], 0.5, 0.15) == 0.5
    near = [220, 100, 320, 200]
    p = clean_pad_ratio(target, [near], 0.5, 0.15)
    assert 0.15 <= p < 0.25
    assert overlap_fraction(near, square_box(target, p).xyxy) == 0.0
    assert overlap_fraction(near, square_box(target, p + 0.02).xyxy) > 0.0  # it is the largest such padding
    touching = [190, 120, 290, 220]
    assert clean_pad_ratio(target, [touching], 0.5, 0.15) is None


def test_pad_schedule_order():
    o = DEFAULTS.crop
    assert pad_schedule(0.5, 0.5, o)[0] == (0.5, False)
    assert pad_schedule(0.5, 0.4, o)[:2] == [(0.4, False), (0.5, True)]  # a bit tighter beats a mask
    assert pad_schedule(0.5, 0.2, o)[:2] == [(0.5, True), (0.2, False)]  # much tighter: mask first
    assert pad_schedule(0.5, None, o)[-1] == (0.15, True)


def test_render_crop_pads_with_black_and_respects_decode_scale():
    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    full = np.ascontiguousarray(np.kron(full[::8, ::8], np.ones((8, 8, 1), np.uint8))[:400, :600])  # blocky
    box = square_box([500, 300, 580, 380], 0.5)  # runs past the right and bottom edges
    crop = render_crop(full, 1.0, box, 160)
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8
    assert crop[-5:, -5:].max() == 0 and crop[:, :5].max() > 0
    half = full[::2, ::2]  # a decode at half scale: 2 original px per decoded px
    crop2 = render_crop(half, 2.0, box, 160)
    inside = crop[:100, :100].astype(int) - crop2[:100, :100].astype(int)
    assert np.abs(inside).mean() < 25
    assert decode_long_side(6000, 4000, square_box([0, 0, 900, 900], 0.5), 512) == 1707  # 1800 px -> 512
    assert decode_long_side(600, 400, square_box([0, 0, 100, 100], 0.5), 512) is None  # upscaled: full decode


def test_mask_fills_the_bystander_but_never_the_target():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    out = mask_faces(img, [[10, 10, 30, 30], [35, 35, 75, 75]], keep=[40, 40, 70, 70], margin=0.0)
    assert (out[40:70, 40:70] == img[40:70, 40:70]).all()  # the target stays although the box covers it
    assert len(np.unique(out[10:30, 10:30].reshape(-1, 3), axis=0)) == 1  # one flat colour
    ring = np.ones((100, 100), bool)
    ring[40:70, 40:70] = False
    ring[:35, :] = ring[75:, :] = False
    ring[:, :35] = ring[:, 75:] = False
    assert len(np.unique(out[ring], axis=0)) == 1
    assert (out[80:, 80:] == img[80:, 80:]).all()  # the rest untouched
    grown = mask_faces(img, [[10, 10, 30, 30]], keep=None, margin=0.25)  # 5 px more per side
    assert len(np.unique(grown[5:35, 5:35].reshape(-1, 3), axis=0)) == 1


def test_png_roundtrip_is_8bit_rgb():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # red
    back = decode_png(encode_png(rgb))
    assert back.dtype == np.uint8 and back.shape == (8, 8, 3) and back[0, 0].tolist() == [255, 0, 0]


def test_every_face_of_a_group_photo_becomes_a_single_face_crop(demo_photos, opencv_analyzer, roop_detector):
    """insightface's t1.jpg: six people close together. With a wide margin (pad 1.0) a plain crop of
    some of them holds a neighbour too; the crops made by single_face_crop hold exactly one face,
    re-detected at roop's settings, and it is the target."""
    dec = imageio.decode(demo_photos / "insightface" / "t1.jpg")
    boxes = [d.bbox.tolist() for d in opencv_analyzer.detect(dec.rgb)]
    assert len(boxes) == 6
    opts = dataclasses.replace(DEFAULTS.crop, pad_ratio=1.0)
    plain_multi = 0
    modes = []
    for i, target in enumerate(boxes):
        others = boxes[:i] + boxes[i + 1 :]
        plain = render_crop(dec.rgb, 1.0, square_box(target, opts.pad_ratio), opts.out_size)
        plain_multi += len(roop_detector(plain)) > 1
        res = single_face_crop(dec.rgb, 1.0, target, others, roop_detector, opts)
        assert res.png is not None, (i, res)
        dets = roop_detector(decode_png(res.png))
        assert len(dets) == 1
        box = square_box(target, res.pad_ratio)
        assert iou(dets[0].bbox, to_crop_coords(target, box, opts.out_size)) > 0.5
        modes.append(res.mode)
    assert plain_multi >= 1, "the scenario must contain bystanders"
    assert set(modes) & {"masked", "shrunk"}, modes


def _fake(boxes):
    """A scripted detector for the refusal paths (the real detector is exercised above)."""

    def detect(rgb):
        return [Detection(np.asarray(b, np.float32), np.zeros((5, 2), np.float32), 0.9) for b in boxes]

    return detect


def test_refusal_reasons():
    rgb = np.full((600, 600, 3), 128, np.uint8)
    target = [250, 250, 350, 350]
    opts = DEFAULTS.crop
    centre = to_crop_coords(target, square_box(target, 0.5), 512).tolist()
    # the target plus a "face" inside it that masking cannot remove: refused as a bystander
    inner = [centre[0] + 10, centre[1] + 10, centre[0] + 60, centre[1] + 60]
    res = single_face_crop(rgb, 1.0, target, [], _fake([centre, inner]), opts)
    assert res.png is None and res.reason == "bystander"
    res = single_face_crop(rgb, 1.0, target, [], _fake([]), opts)
    assert res.png is None and res.reason == "no_face"
