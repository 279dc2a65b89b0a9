"""Faces with a parametric mouth."""

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("skimage")

from talkbench.synthetic import render, visemes  # noqa: E402

STILL = render.ClipStyle((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0), 1.0, 0.0, (1, 1, 1), 0.0, 0.0, 0.0, 1.0, 0.0)
CENTRE = slice(36, 124)  # the talklip2023 protocol's centre 88×88 crop of the 160×160 frame


def _targets(*names):
    return np.array([visemes.VISEMES[visemes.VISEME_IDS[n]].target for n in names])


def test_identities_are_deterministic_and_distinct():
    a = render.make_identity(1).canvas.copy()
    render.make_identity.cache_clear()
    assert np.array_equal(a, render.make_identity(1).canvas)
    canvases = [render.make_identity(i).canvas.astype(np.int16) for i in range(render.N_IDENTITIES)]
    for i in range(len(canvases)):
        for j in range(i):
            assert np.abs(canvases[i] - canvases[j]).mean() > 5, (i, j)
    with pytest.raises(ValueError):
        render.make_identity(-1)


@pytest.mark.parametrize("index", range(render.N_IDENTITIES))
def test_mouth_is_inside_the_centre_crop_and_the_face_box(index):
    ident = render.make_identity(index)
    # Same jaw opening, different lip shapes: what changes is the mouth alone (no chin motion).
    params = _targets("EH", "UW", "IY", "TH")
    params[:, visemes.PARAMS.index("jaw")] = 0.6
    frames, boxes = render.render_frames(ident, params, STILL, np.random.default_rng(0))
    assert frames.shape == (4, 160, 160, 3) and frames.dtype == np.uint8
    assert boxes.shape == (4, 4) and boxes.dtype == np.int64
    diff = np.abs(frames[1:].astype(np.int16) - frames[:1]).max(axis=(0, 3))
    ys, xs = np.nonzero(diff > 20)
    assert len(xs) > 200
    assert (diff[CENTRE, CENTRE] > 20).sum() == len(xs)
    width = xs.max() - xs.min() + 1
    assert 30 <= width <= 60, width
    # The face box holds the mouth and the chin with room to spare, and is about TalkLip's face size.
    x1, y1, x2, y2 = boxes[0]
    assert x1 < xs.min() - 10 and x2 > xs.max() + 10 and y2 > ys.max() + 15 and y1 < ys.min() - 35
    assert 80 <= x2 - x1 <= 115 and 85 <= y2 - y1 <= 120
    # Rounded lips are narrower than spread ones.
    widths = [np.ptp(np.nonzero(np.abs(frames[k].astype(np.int16) - frames[0]).max(2) > 20)[1]) for k in (1, 2)]
    assert widths[0] < widths[1]


def test_jaw_opening_darkens_the_mouth_and_moves_the_chin():
    ident = render.make_identity(0)
    frames, _ = render.render_frames(ident, _targets("PBM", "AA"), STILL, np.random.default_rng(0))
    gray = frames.astype(np.float64).mean(3)
    import cv2

    # The opening: a dark blob around the mouth centre, wholly inside the centre crop.
    dark = (gray[1] < gray[0] - 60).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dark)
    x, y, w, h, area = stats[labels[104, 80]]
    assert labels[104, 80] > 0 and area > 50
    assert 36 <= x and x + w <= 124 and 36 <= y and y + h <= 124
    # below the mouth the chin moved down: the picture there changed too
    assert np.abs(gray[1][118:140, 60:100] - gray[0][118:140, 60:100]).mean() > 1.0


def test_motion_lighting_and_noise_are_reproducible():
    ident = render.make_identity(3)
    style = render.random_style(np.random.default_rng(4))
    params = np.repeat(_targets("EH"), 20, 0)
    a, ba = render.render_frames(ident, params, style, np.random.default_rng(9))
    b, bb = render.render_frames(ident, params, style, np.random.default_rng(9))
    assert np.array_equal(a, b) and np.array_equal(ba, bb)
    c, _ = render.render_frames(ident, params, style, np.random.default_rng(10))
    assert not np.array_equal(a, c)
    # the head moves: boxes change over the clip but stay in the frame
    assert np.ptp(ba, axis=0).max() >= 1
    assert ba.min() >= 0 and ba.max() <= 160


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="T×6"):
        render.render_frames(render.make_identity(0), np.zeros((3, 5)), STILL, np.random.default_rng(0))
