"""Faces with a parametric mouth: the video half of the mini corpus.

An *identity* is a 160×160 face (plus a margin for head motion) whose real mouth has been painted
over with skin, in a canonical layout: eyes at (60, 60) and (100, 60), mouth centre at (80, 100),
chin near y = 131. So the mouth (about 40 px wide) sits inside the centre 88×88 crop that the
talklip2023 lip readers look at, and the face box (about 96×100 px, brows to chin plus the room
the jaw needs) gives TalkLip's 96×96 face crop the whole lower face.

Identities: the one frontal human portrait among scikit-image's offline sample images,
``astronaut`` (Eileen Collins, NASA, public domain), in several variants, plus procedurally drawn
cartoon faces; each identity gets a fixed variation (mirror, skin tone / colour, scale, smooth warp)
from its index. (The other sample images were checked: ``camera`` is a profile half hidden by a
camcorder, ``chelsea`` is a cat whose picture ends just under its nose, ``lfw_subset`` faces are
25×25 px with no clear licence; the rest need a download or are not faces.) Per clip we add small head motion, lighting
changes and sensor noise; per frame we draw the mouth from the six parameters of
:mod:`talkbench.synthetic.visemes` and open the jaw (the chin moves down with the lower lip).

Coordinates are (x, y) pixels of the 160×160 output frame unless a name says ``canvas``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SIZE = 160                     # output frame side, as LRS2 / TalkLip clips
MARGIN = 16                    # canvas border that head motion can bring into view
CANVAS = SIZE + 2 * MARGIN
EYE_L = np.array([60.0, 60.0])
EYE_R = np.array([100.0, 60.0])
MOUTH = np.array([80.0, 100.0])
CHIN_Y = 131.0
_PIVOT = np.array([80.0, 90.0])  # identity scale variation and head rotation are about this point
MOUTH_HALF_WIDTH = 20.0        # lips' half width at rest, before the identity's scale
JAW_DROP = 0.6                 # chin displacement per pixel of mouth opening
_SUB = 16                      # cv2 fixed-point drawing: 4 fractional bits, anti-aliased edges


@dataclass(frozen=True)
class _Portrait:
    """A photograph that ships with scikit-image and where its face is (source pixels, x/y)."""

    name: str
    eye_l: tuple[float, float]
    eye_r: tuple[float, float]
    mouth: tuple[float, float]
    mouth_half_width: float      # half the lip width in the source
    licence: str


# Anchors measured once with dlib's 68-point predictor: eye centres, mean of the 20 mouth points,
# mouth corners at x = 201 and 246.
_PORTRAITS = {
    "astronaut": _Portrait("astronaut", (203.2, 101.5), (246.5, 104.2), (223.3, 145.5), 22.5,
                           "public domain (NASA), via skimage.data.astronaut"),
}

#: How identities are made, by index modulo the list: (source, mirrored, variation strength).
_RECIPES: tuple[tuple[str, bool, float], ...] = (
    ("astronaut", False, 0.0), ("cartoon", False, 1.0), ("astronaut", True, 1.0), ("cartoon", False, 1.0),
    ("astronaut", False, 1.3), ("cartoon", False, 1.0), ("cartoon", False, 1.0), ("astronaut", True, 1.6),
)

#: Default number of identities of a corpus.
N_IDENTITIES = len(_RECIPES)


@dataclass(frozen=True)
class Identity:
    """A face ready for rendering.

    Attributes:
        name: e.g. ``"03-astronaut"``.
        canvas: uint8 BGR ``CANVAS×CANVAS×3``, the face with its mouth painted over; frame pixel
            (x, y) is canvas pixel (x + MARGIN, y + MARGIN) when the head is still.
        mouth: mouth centre (x, y) in frame pixels.
        chin_y: y of the chin (frame pixels); the jaw moves the face between the mouth and the chin.
        mouth_half_width: lips' half width at rest (px).
        lip_bgr, teeth_bgr, tongue_bgr, cavity_bgr: colours (float BGR, 0-255).
        face_box: (x1, y1, x2, y2) of the face with the head still: brows to chin, with room for the jaw.
        feminine: a hint for choosing voices.
        licence: where the picture comes from.
    """

    name: str
    canvas: np.ndarray
    mouth: tuple[float, float]
    chin_y: float
    mouth_half_width: float
    lip_bgr: tuple[float, float, float]
    teeth_bgr: tuple[float, float, float]
    tongue_bgr: tuple[float, float, float]
    cavity_bgr: tuple[float, float, float]
    face_box: tuple[float, float, float, float]
    feminine: bool
    licence: str


def _load_skimage(name: str) -> np.ndarray:
    try:
        import skimage.data  # lazy: optional extra (talkbench[synth]), needed only to draw the portraits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("The mini corpus draws faces from scikit-image's sample images; "
                          "install it with `pip install scikit-image`.") from exc
    rgb = getattr(skimage.data, name)()
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 least-squares similarity (rotation, uniform scale, shift) mapping points ``src`` (N×2) onto ``dst``."""
    # In complex numbers a similarity is z -> a z + b; least squares on centred points gives a.
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    cs, cd = zs - zs.mean(), zd - zd.mean()
    a = (np.conj(cs) @ cd) / (np.conj(cs) @ cs)
    b = zd.mean() - a * zs.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _canvas_points(points: np.ndarray) -> np.ndarray:
    return points + MARGIN


def _photo_canvas(p: _Portrait) -> tuple[np.ndarray, float]:
    """The portrait aligned to the canonical layout on the canvas, its mouth inpainted; and the scale."""
    src = np.array([p.eye_l, p.eye_r, p.mouth])
    dst = _canvas_points(np.array([EYE_L, EYE_R, MOUTH]))
    m = _similarity(src, dst)
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    img = cv2.warpAffine(_load_skimage(p.name), m, (CANVAS, CANVAS), flags=cv2.INTER_AREA,
                         borderMode=cv2.BORDER_REPLICATE)
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    c = _canvas_points(MOUTH)
    half_w = p.mouth_half_width * scale
    cv2.ellipse(mask, (int(c[0]), int(c[1])), (int(half_w + 7), int(0.45 * half_w + 6)), 0, 0, 360, 255, -1)
    img = cv2.inpaint(img, mask, 6, cv2.INPAINT_TELEA)
    # Inpainting leaves streaks; a blur restricted to the painted area makes it read as smooth skin.
    soft = cv2.GaussianBlur(mask, (0, 0), 3).astype(np.float32)[..., None] / 255.0
    img = (img * (1 - soft) + cv2.GaussianBlur(img, (0, 0), 3.5) * soft).astype(np.uint8)
    return img, scale * p.mouth_half_width / MOUTH_HALF_WIDTH


def _rand_colour(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.uniform(lo, hi, 3))


def _cartoon_canvas(rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A procedurally drawn face in the canonical layout (our own drawing, no licence question)."""
    n = CANVAS
    o = MARGIN
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    top, bottom = np.array(_rand_colour(rng, 60, 230)), np.array(_rand_colour(rng, 40, 200))
    t = (yy / (n - 1))[..., None]
    img = top * (1 - t) + bottom * t
    img += cv2.GaussianBlur(rng.normal(0, 25, (n, n, 1)).astype(np.float32), (0, 0), 9)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)

    skin_tones = [(190, 215, 245), (150, 185, 225), (110, 150, 200), (80, 115, 165), (55, 80, 120)]
    skin = np.array(skin_tones[int(rng.integers(len(skin_tones)))], np.float64) * rng.uniform(0.9, 1.08, 3)
    skin = tuple(float(v) for v in np.clip(skin, 0, 255))
    shadow = tuple(0.78 * v for v in skin)
    hair = [(20, 20, 25), (30, 50, 90), (60, 110, 170), (40, 60, 150), (170, 170, 175)][int(rng.integers(5))]
    shirt = _rand_colour(rng, 20, 220)
    feminine = bool(rng.random() < 0.5)

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round((x + o) * _SUB)), int(round((y + o) * _SUB))

    def ell(c, axes, colour, angle=0.0, start=0, end=360, thick=-1):
        cv2.ellipse(img, pt(*c), (int(axes[0] * _SUB), int(axes[1] * _SUB)), angle, start, end, colour, thick,
                    cv2.LINE_AA, 4)

    face_w = rng.uniform(40, 47)
    # shoulders and neck
    ell((80, 190), (78, 40), shirt)
    cv2.rectangle(img, (int(80 - 18 + o), int(118 + o)), (int(80 + 18 + o), int(165 + o)), shadow, -1)
    # long hair behind the head
    if feminine:
        ell((80, 72), (face_w + 9, 48), hair)
    ell((80 - face_w, 82), (6, 12), shadow)
    ell((80 + face_w, 82), (6, 12), shadow)
    # head: an ellipse whose lower half narrows to the jaw
    ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    hx = np.cos(ang) * face_w * (1 - 0.18 * np.clip(np.sin(ang), 0, None) ** 2)
    hy = np.where(np.sin(ang) > 0, np.sin(ang) * (CHIN_Y - 80), np.sin(ang) * 56)
    head = np.stack([80 + hx, 80 + hy], 1)
    cv2.fillPoly(img, [np.round((head + o) * _SUB).astype(np.int32)], skin, cv2.LINE_AA, 4)
    # hair on top
    ell((80, 44), (face_w + 3, 26 + rng.uniform(-4, 6)), hair, 0, 180, 360)
    ell((80 + rng.uniform(-10, 10), 40), (face_w * 0.9, 14), hair)
    # eyes, irises, brows
    iris = _rand_colour(rng, 30, 140)
    brow_y = 50 + rng.uniform(-2, 2)
    for ex in (EYE_L[0], EYE_R[0]):
        ell((ex, 60), (8, 4.2), (240, 240, 240))
        ell((ex, 60), (3.6, 3.6), iris)
        ell((ex, 60), (1.7, 1.7), (15, 15, 15))
        ell((ex, 59.5), (8.5, 4.8), shadow, 0, 180, 360, 2)
        cv2.line(img, pt(ex - 9, brow_y + 1), pt(ex + 9, brow_y - 1 if ex < 80 else brow_y + 1), hair,
                 2, cv2.LINE_AA, 4)
    # nose: a shaded ridge and nostrils
    cv2.line(img, pt(80, 66), pt(77, 85), shadow, 2, cv2.LINE_AA, 4)
    ell((76, 87), (2.5, 1.4), tuple(0.5 * v for v in skin))
    ell((84, 87), (2.5, 1.4), tuple(0.5 * v for v in skin))
    # cheeks
    blush = np.zeros((n, n), np.float32)
    for cx in (58, 102):
        cv2.circle(blush, (int(cx + o), int(88 + o)), 9, 1.0, -1)
    blush = cv2.GaussianBlur(blush, (0, 0), 5)[..., None] * rng.uniform(0.1, 0.3)
    img = img * (1 - blush) + np.array([110.0, 110.0, 220.0]) * blush
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7)
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), feminine


def _vary(canvas: np.ndarray, rng: np.random.Generator, strength: float, mirror: bool) -> tuple[np.ndarray, float]:
    """An identity variant: mirror, colour/skin tone change, scale and a smooth warp; returns the scale."""
    img = canvas[:, ::-1] if mirror else canvas
    if strength <= 0:
        return np.ascontiguousarray(img), 1.0
    lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB).astype(np.float32)
    lab[..., 0] = np.clip(lab[..., 0] * rng.uniform(1 - 0.25 * strength, 1 + 0.08 * strength), 0, 255)
    lab[..., 1] = np.clip(lab[..., 1] + rng.uniform(-6, 10) * strength, 0, 255)
    lab[..., 2] = np.clip(lab[..., 2] + rng.uniform(-8, 14) * strength, 0, 255)
    img = cv2.cvtColor(lab.astype(np.uint8), cv2.COLOR_LAB2BGR)
    # Scale about a point above the mouth so that the mouth stays inside the centre crop.
    scale = 1.0 + rng.uniform(-0.07, 0.06) * strength
    aspect = 1.0 + rng.uniform(-0.08, 0.08) * strength   # wider or narrower face
    pivot = _canvas_points(_PIVOT)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    # Smooth warp: low-frequency sinusoids of a few pixels, so the face changes shape, not texture.
    amp = 2.5 * strength
    k = rng.uniform(0.015, 0.04, 4)
    ph = rng.uniform(0, 2 * np.pi, 4)
    dx = amp * np.sin(k[0] * yy + ph[0]) * np.cos(k[1] * xx + ph[1])
    dy = amp * np.sin(k[2] * xx + ph[2]) * np.cos(k[3] * yy + ph[3])
    # No warp around the mouth: the painted-over area stays where the mouth will be drawn.
    mc = _canvas_points(_scaled(MOUTH, scale))
    fade = 1 - np.exp(-(((xx - mc[0]) / 25) ** 2 + ((yy - mc[1]) / 18) ** 2))
    map_x = (pivot[0] + (xx - pivot[0]) / (scale * aspect) + dx * fade).astype(np.float32)
    map_y = (pivot[1] + (yy - pivot[1]) / scale + dy * fade).astype(np.float32)
    img = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return img, scale


def _scaled(point: np.ndarray, scale: float) -> np.ndarray:
    """Where a canonical point goes when the face is scaled by ``scale`` about :data:`_PIVOT`."""
    return _PIVOT + (np.asarray(point, np.float64) - _PIVOT) * scale


def _mean_colour(img: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
    x, y = int(centre[0]), int(centre[1])
    return img[y - half:y + half, x - half:x + half].reshape(-1, 3).astype(np.float64).mean(0)


@lru_cache(maxsize=64)
def make_identity(index: int) -> Identity:
    """The identity with this index (deterministic: the same index gives the same face everywhere)."""
    if index < 0:
        raise ValueError(f"Identity index must be >= 0, but got {index}.")
    source, mirror, strength = _RECIPES[index % len(_RECIPES)]
    # Indices beyond the recipe list reuse a recipe with a fresh, stronger variation.
    rng = np.random.default_rng([7919, index])
    if index >= len(_RECIPES):
        strength = max(strength, 1.0)
        mirror = bool(rng.random() < 0.5)
    if source == "cartoon":
        canvas, feminine = _cartoon_canvas(rng)
        size_scale, licence = 1.0, "procedural (talkbench)"
    else:
        canvas, size_scale = _photo_canvas(_PORTRAITS[source])
        feminine, licence = source == "astronaut", _PORTRAITS[source].licence
    canvas, scale = _vary(canvas, rng, strength, mirror)
    mouth = _scaled(MOUTH, scale)
    skin = _mean_colour(canvas, _canvas_points(mouth + [0, 14]), 5)
    lip = np.clip(skin * np.array([0.62, 0.55, 0.92]) + np.array([10, 5, 25]), 0, 255)
    teeth = np.clip(np.array([205, 225, 235]) * rng.uniform(0.9, 1.03), 0, 255)
    half_w = MOUTH_HALF_WIDTH * scale * float(np.clip(size_scale, 0.9, 1.1)) * rng.uniform(0.93, 1.07)
    # Face box: cheek to cheek, brows to chin, plus the jaw's full drop (see module docstring).
    fw = 48.0 * scale
    (_, top), (_, bottom) = _scaled([0, 42], scale), _scaled([0, CHIN_Y + 10], scale)
    box = (80 - fw, top, 80 + fw, bottom)
    return Identity(name=f"{index:02d}-{source}", canvas=canvas, mouth=(float(mouth[0]), float(mouth[1])),
                    chin_y=float(_scaled([0, CHIN_Y], scale)[1]),
                    mouth_half_width=float(half_w), lip_bgr=tuple(lip), teeth_bgr=tuple(teeth),
                    tongue_bgr=(70.0, 62.0, 165.0), cavity_bgr=(25.0, 20.0, 45.0),
                    face_box=tuple(float(v) for v in box), feminine=feminine, licence=licence)


# ---------------------------------------------------------------------------------------------------
# The mouth


@dataclass(frozen=True)
class MouthShape:
    """Contours of one mouth, in pixels relative to the mouth centre (x right, y down)."""

    outer: np.ndarray   # K×2 closed contour of both lips
    inner: np.ndarray   # K×2 closed contour of the opening (may be flat)
    upper_teeth: np.ndarray
    lower_teeth: np.ndarray
    tongue: tuple[float, float, float, float]  # centre x, y, half axes a, b
    opening: float      # inner height (px)
    jaw_drop: float     # chin displacement (px)
    lower_lip_y: float  # middle of the lower lip at the centre line (where its highlight goes)


def mouth_shape(params: np.ndarray, half_width: float) -> MouthShape:
    """Geometry of the mouth for one frame's parameters (jaw, width, round, teeth, tongue, tuck)."""
    jaw, width, rnd, teeth, tongue, tuck = (float(v) for v in params[:6])
    w = half_width * (0.80 + 0.40 * width) * (1 - 0.32 * rnd)
    h = 0.85 * half_width * jaw                        # opening between the lips
    wi = w * (0.90 - 0.35 * rnd)                       # rounding makes the opening rounder
    up_thick = 0.20 * half_width * (1 + 0.5 * rnd)     # protruded lips look fuller
    low_thick = 0.26 * half_width * (1 + 0.4 * rnd) * (1 - 0.45 * tuck)
    up_in, low_in = 0.25 * h, 0.75 * h                 # the jaw moves the lower lip, not the upper
    low_in -= 1.2 * tuck                               # a tucked lower lip rises under the teeth

    u = np.linspace(-1.0, 1.0, 25)
    x = u * w
    env = (1 - u ** 2) ** 0.55
    bow = 1 - 0.18 * np.exp(-(u / 0.16) ** 2)          # the dip of the cupid's bow
    ui = np.clip(x / max(wi, 1e-3), -1, 1)
    inner_env = np.sqrt(np.clip(1 - ui ** 2, 0, None)) * (np.abs(x) < wi)
    upper_outer = np.stack([x, -(up_in * inner_env + up_thick * env * bow)], 1)
    lower_outer = np.stack([x, low_in * inner_env + low_thick * env], 1)
    upper_inner = np.stack([x, -up_in * inner_env], 1)
    lower_inner = np.stack([x, low_in * inner_env], 1)
    outer = np.concatenate([upper_outer, lower_outer[::-1]])
    inner = np.concatenate([upper_inner, lower_inner[::-1]])

    tw = 0.72 * wi
    t_up = teeth * min(0.45 * h + 1.5 * tuck, 0.22 * half_width) + 1.8 * tuck
    ut = np.array([[-tw, -up_in - 1], [tw, -up_in - 1], [tw, -up_in * 0.5 + t_up], [-tw, -up_in * 0.5 + t_up]])
    t_low = teeth * min(0.25 * h, 0.15 * half_width) * (1 - tuck)
    lt = np.array([[-tw, low_in + 1], [tw, low_in + 1], [tw, low_in - t_low], [-tw, low_in - t_low]])
    tongue_geom = (0.0, low_in - 0.15 * h, 0.55 * wi, max(0.55 * h * tongue, 0.0))
    return MouthShape(outer, inner, ut, lt, tongue_geom, opening=h, jaw_drop=JAW_DROP * h,
                      lower_lip_y=low_in + 0.5 * low_thick)


def _poly(img: np.ndarray, pts: np.ndarray, colour, origin: np.ndarray) -> None:
    cv2.fillPoly(img, [np.round((pts + origin) * _SUB).astype(np.int32)], colour, cv2.LINE_AA, 4)


def _draw_mouth(canvas: np.ndarray, ident: Identity, params: np.ndarray, shape: MouthShape) -> None:
    """Draw the mouth of ``shape`` (from ``params``) on ``canvas`` (canvas coordinates, in place)."""
    hw = int(ident.mouth_half_width * 1.6) + 4
    centre = np.array(ident.mouth) + MARGIN
    x0, y0 = centre.astype(int) - hw
    roi = canvas[y0:y0 + 2 * hw, x0:x0 + 2 * hw]
    origin = centre - [x0, y0]  # the mouth centre in ROI pixels
    # A soft shadow under the lower lip and at the corners gives the lips volume.
    shade = np.zeros(roi.shape[:2], np.float32)
    low = shape.outer[len(shape.outer) // 2:]
    _poly(shade, low + [0, 2.0], 1.0, origin)
    shade = cv2.GaussianBlur(shade, (0, 0), 2.0)[..., None] * 0.25
    roi[:] = np.clip(roi * (1 - shade), 0, 255).astype(np.uint8)

    lip = np.array(ident.lip_bgr)
    _poly(roi, shape.outer, tuple(lip), origin)
    upper = shape.outer[:len(shape.outer) // 2]
    _poly(roi, np.concatenate([upper, upper[::-1] * [1, 0.55]]), tuple(0.85 * lip), origin)  # upper lip in shade
    # Opening: dark cavity, then teeth and tongue clipped to it.
    if shape.opening > 0.25:
        layer = np.empty_like(roi)
        layer[:] = np.array(ident.cavity_bgr, np.uint8)
        _poly(layer, shape.lower_teeth, tuple(0.9 * np.array(ident.teeth_bgr)), origin)
        # The tongue comes forward over the lower teeth (l, th), under the upper ones.
        tx, ty, ta, tb = shape.tongue
        if tb > 0.3:
            cv2.ellipse(layer, (int((tx + origin[0]) * _SUB), int((ty + origin[1]) * _SUB)),
                        (int(ta * _SUB), int(tb * _SUB)), 0, 0, 360, ident.tongue_bgr, -1, cv2.LINE_AA, 4)
        _poly(layer, shape.upper_teeth, ident.teeth_bgr, origin)
        mask = np.zeros(roi.shape[:2], np.uint8)
        _poly(mask, shape.inner, 255, origin)
        m = mask.astype(np.float32)[..., None] / 255.0
        roi[:] = (roi * (1 - m) + layer * m).astype(np.uint8)
        tongue = float(params[4])
        if tongue > 0.7 and tb > 0.3:
            # "th": the tip comes out between the teeth and over the lower lip's edge.
            tip = (tongue - 0.7) / 0.3
            centre = (int((tx + origin[0]) * _SUB), int((ty + 0.5 * tb + origin[1]) * _SUB))
            cv2.ellipse(roi, centre, (int(0.45 * ta * _SUB), int((0.6 + 1.4 * tip) * _SUB)), 0, 0, 360,
                        ident.tongue_bgr, -1, cv2.LINE_AA, 4)
    tuck = float(params[5])
    if tuck > 0.05:
        # f/v: the upper teeth rest on the lower lip, over the lip's top edge.
        t = shape.upper_teeth * [0.8, 1.0]
        t[2:, 1] = shape.upper_teeth[2:, 1] * tuck + shape.upper_teeth[:2, 1].mean() * (1 - tuck)
        layer = roi.copy()
        _poly(layer, t, ident.teeth_bgr, origin)
        roi[:] = (roi * (1 - tuck) + layer * tuck).astype(np.uint8)
    # The lip line: where the lips meet, a dark crease; highlight on the lower lip.
    upper_inner = shape.inner[:len(shape.inner) // 2]
    cv2.polylines(roi, [np.round((upper_inner + origin) * _SUB).astype(np.int32)], False,
                  tuple(0.45 * lip), 1, cv2.LINE_AA, 4)
    hl = np.zeros(roi.shape[:2], np.float32)
    lx, ly = origin + [0.0, shape.lower_lip_y]
    cv2.ellipse(hl, (int(lx * _SUB), int(ly * _SUB)), (int(0.35 * ident.mouth_half_width * _SUB), int(1.2 * _SUB)),
                0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    hl = cv2.GaussianBlur(hl, (0, 0), 1.0)[..., None] * 0.18
    roi[:] = np.clip(roi + (255 - roi.astype(np.float32)) * hl, 0, 255).astype(np.uint8)
    # Soften the drawn edges a little, as a camera would.
    roi[:] = cv2.GaussianBlur(roi, (0, 0), 0.6)


def _jaw_maps(ident: Identity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remap grids and the per-pixel weight of the jaw displacement (canvas pixels)."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    cx, cy = np.array(ident.mouth) + MARGIN
    chin = ident.chin_y + MARGIN
    below = np.clip((yy - (cy - 2)) / 4.0, 0, 1)                 # starts at the lip line
    fade = np.clip(1 - (yy - chin) / 14.0, 0, 1)                 # and ends under the chin
    side = np.exp(-(np.abs(xx - cx) / (2.0 * ident.mouth_half_width)) ** 4)
    return xx, yy, (below * fade * side).astype(np.float32)


@dataclass(frozen=True)
class ClipStyle:
    """Per-clip variation: head motion, lighting and noise (drawn by :func:`random_style`)."""

    motion_amp: tuple[float, float, float, float]     # tx px, ty px, rotation deg, log-scale
    motion_freq: tuple[float, float, float, float]    # Hz
    motion_phase: tuple[float, float, float, float]
    gain: float                                       # overall brightness
    gain_wobble: float                                # slow brightness change, relative
    colour: tuple[float, float, float]                # per-channel (BGR) gain
    light_dir: float                                  # direction of a brightness gradient, radians
    light_strength: float
    light_turn: float                                 # rad/s the gradient turns
    gamma: float
    noise: float                                      # sensor noise std (grey levels)


def random_style(rng: np.random.Generator) -> ClipStyle:
    """A clip's head motion and lighting, drawn from ``rng``."""
    return ClipStyle(
        motion_amp=(float(rng.uniform(0.5, 3.0)), float(rng.uniform(0.5, 2.5)), float(rng.uniform(0.3, 3.0)),
                    float(rng.uniform(0.0, 0.02))),
        motion_freq=tuple(float(v) for v in rng.uniform(0.1, 0.7, 4)),
        motion_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 4)),
        gain=float(rng.uniform(0.8, 1.15)), gain_wobble=float(rng.uniform(0.0, 0.06)),
        colour=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)),
        light_dir=float(rng.uniform(0, 2 * np.pi)), light_strength=float(rng.uniform(0.0, 0.3)),
        light_turn=float(rng.uniform(-0.5, 0.5)), gamma=float(rng.uniform(0.85, 1.15)),
        noise=float(rng.uniform(0.5, 3.0)))


def _head_pose(style: ClipStyle, t: float) -> np.ndarray:
    """2×3 affine from canvas to frame pixels at time ``t`` (seconds)."""
    a, f, p = style.motion_amp, style.motion_freq, style.motion_phase
    tx, ty, rot, logs = (a[i] * np.sin(2 * np.pi * f[i] * t + p[i]) for i in range(4))
    pivot = _canvas_points(_PIVOT)
    m = cv2.getRotationMatrix2D((float(pivot[0]), float(pivot[1])), float(rot), float(np.exp(logs)))
    m[:, 2] += [tx - MARGIN, ty - MARGIN]
    return m


def render_frames(ident: Identity, params: np.ndarray, style: ClipStyle, noise_rng: np.random.Generator,
                  fps: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """Render a clip.

    Args:
        ident: the face.
        params: float ``T×6`` mouth parameters per frame (see :data:`talkbench.synthetic.visemes.PARAMS`).
        style: head motion and lighting of the clip.
        noise_rng: generator of the sensor noise.
        fps: frame rate (sets the speed of head motion and lighting changes).

    Returns:
        frames: uint8 ``T×160×160×3`` BGR.
        boxes: int64 ``T×4`` face boxes (x1, y1, x2, y2), TalkLip's ``.npy`` bbx format.
    """
    params = np.asarray(params, np.float64)
    if params.ndim != 2 or params.shape[1] < 6:
        raise ValueError(f"params must be T×6 (jaw, width, round, teeth, tongue, tuck), but got {params.shape}.")
    n = len(params)
    xx, yy, jaw_weight = _jaw_maps(ident)
    fy, fx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    rel = np.stack([(fx - 80) / 80, (fy - 80) / 80])
    frames = np.empty((n, SIZE, SIZE, 3), np.uint8)
    boxes = np.empty((n, 4), np.int64)
    x1, y1, x2, y2 = ident.face_box
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) + MARGIN
    # Gamma through a lookup table on uint8 (exact to the grey level, and far cheaper than a power).
    gamma_lut = np.clip((np.arange(256) / 255.0) ** (1.0 / style.gamma) * 255.0, 0, 255).astype(np.float32)
    colour = np.array(style.colour, np.float32)
    # Sensor noise: random crops of a small bank of noise fields, 5× cheaper than fresh draws per frame.
    bank = noise_rng.standard_normal((4, SIZE + 16, SIZE + 16, 3), dtype=np.float32) * np.float32(style.noise)
    picks = noise_rng.integers(0, [4, 17, 17], size=(n, 3))
    for k in range(n):
        t = k / fps
        shape = mouth_shape(params[k], ident.mouth_half_width)
        canvas = cv2.remap(ident.canvas, xx, yy - shape.jaw_drop * jaw_weight, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        _draw_mouth(canvas, ident, params[k], shape)
        m = _head_pose(style, t)
        img = cv2.warpAffine(canvas, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Lighting: a slowly turning brightness gradient, a slow overall change, colour cast, gamma.
        ang = style.light_dir + style.light_turn * t
        gain = style.gain * (1 + style.gain_wobble * np.sin(2 * np.pi * 0.3 * t + style.light_dir))
        cos_g, sin_g = (np.float32(gain * style.light_strength * f(ang)) for f in (np.cos, np.sin))
        light = np.float32(gain) + cos_g * rel[0] + sin_g * rel[1]
        out = gamma_lut[img] * (light[..., None] * colour)
        b, dy, dx = picks[k]
        out += bank[b, dy:dy + SIZE, dx:dx + SIZE]
        frames[k] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        box = corners @ m[:, :2].T + m[:, 2]
        lo = np.clip(np.floor(box.min(0)), 0, SIZE)
        hi = np.clip(np.ceil(box.max(0)), 0, SIZE)
        boxes[k] = [lo[0], lo[1], hi[0], hi[1]]
    return frames, boxes
