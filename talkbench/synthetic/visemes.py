"""espeak-ng phonemes -> viseme classes -> per-frame mouth parameters, with coarticulation.

A *viseme* is a class of phonemes that look the same on the lips (p/b/m all close the lips). Each
class has a target mouth shape: six parameters in [0, 1] that the renderer draws:

``jaw``    vertical opening between the lips (0 closed, 1 wide open)
``width``  horizontal lip spread (0 narrow/pursed, 0.5 neutral, 1 spread as in a smile)
``round``  rounding and protrusion (0 none, 1 fully rounded as in "oo")
``teeth``  how much of the teeth shows (0 hidden by the lips, 1 fully shown)
``tongue`` how much of the tongue shows (0 hidden, 1 tip between the teeth as in "th")
``tuck``   lower lip drawn in under the upper teeth (1 for "f"/"v", else 0)

The table is documented in docs/VISEMES.md; keep the two in step.

Coarticulation uses dominance functions (Cohen & Massaro, 1993): every phoneme segment pulls each
parameter towards its target with a weight that is the segment's *strength* inside the segment and
decays exponentially with the distance to it, faster after the segment (carry-over) than before it
(anticipation); the parameter at time t is the weighted mean of the targets. So short consonants
between vowels blend into them, consonants that must be seen (lip closure of p/b/m, lip-teeth contact
of f/v) win by a large strength, and lip rounding of "oo"/"w" is anticipated over preceding
consonants, as it is in real speech. Diphthongs are two half-length targets (``aI`` = open, then spread).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from talkbench.synthetic.speech import PhonemeEvent, strip_stress

logger = logging.getLogger(__name__)

PARAMS: tuple[str, ...] = ("jaw", "width", "round", "teeth", "tongue", "tuck")


@dataclass(frozen=True)
class Viseme:
    """One viseme class: its target mouth shape and how strongly it imposes each parameter."""

    name: str
    target: tuple[float, ...]    # one value per PARAMS entry
    strength: tuple[float, ...]  # dominance weight of each parameter
    description: str
    tau_scale: float = 1.0       # scales the dominance decay times: < 1 for short, sharp gestures


#: The viseme classes; a class's id is its index here (the ids stored in ``<utt>.visemes.npy``).
VISEMES: tuple[Viseme, ...] = (
    #      name   target: jaw, width, round, teeth, tongue, tuck    strength: jaw, width, round, teeth, tongue, tuck
    Viseme("sil", (0.02, 0.50, 0.10, 0.00, 0.00, 0.0), (1.0, 1.0, 1.0, 1.0, 1.0, 1.0), "silence, lips at rest"),
    # Lip closure must be complete: a strength far above any vowel's, with short tails so that the
    # neighbouring vowels still open fully.
    Viseme("PBM", (0.00, 0.48, 0.15, 0.00, 0.00, 0.0), (30.0, 1.0, 0.5, 10.0, 10.0, 4.0), "lips pressed together",
           tau_scale=0.5),
    Viseme("FV", (0.10, 0.52, 0.00, 1.00, 0.00, 1.0), (6.0, 1.0, 1.0, 8.0, 4.0, 8.0),
           "lower lip drawn in under the upper teeth", tau_scale=0.7),
    Viseme("TH", (0.28, 0.55, 0.00, 0.70, 1.00, 0.0), (2.0, 1.0, 1.0, 4.0, 6.0, 2.0), "tongue tip between the teeth"),
    # Alveolar and velar stops are hardly visible: weak strengths let them take their vowels' shape.
    Viseme("TDN", (0.22, 0.55, 0.05, 0.60, 0.45, 0.0), (0.8, 0.3, 0.3, 1.0, 1.0, 1.0),
           "tongue on the ridge, teeth apart"),
    Viseme("SZ", (0.10, 0.68, 0.00, 1.00, 0.00, 0.0), (3.0, 1.0, 1.0, 4.0, 2.0, 2.0),
           "teeth nearly closed, lips spread"),
    Viseme("SH", (0.18, 0.30, 0.80, 0.90, 0.00, 0.0), (2.0, 2.0, 3.0, 3.0, 2.0, 2.0),
           "teeth close, lips rounded and pushed out"),
    Viseme("L", (0.35, 0.55, 0.05, 0.50, 0.85, 0.0), (1.0, 0.5, 0.5, 1.0, 3.0, 1.0), "mouth half open, tongue tip up"),
    Viseme("KG", (0.38, 0.55, 0.05, 0.30, 0.15, 0.0), (0.5, 0.3, 0.3, 0.5, 0.5, 0.5), "back of the tongue, open mouth"),
    Viseme("R", (0.22, 0.35, 0.55, 0.30, 0.10, 0.0), (1.0, 1.5, 2.0, 1.0, 1.0, 1.0), "lips slightly rounded"),
    Viseme("W", (0.08, 0.12, 1.00, 0.00, 0.00, 0.0), (3.0, 4.0, 6.0, 3.0, 2.0, 2.0), "lips tightly rounded"),
    Viseme("AA", (0.95, 0.60, 0.05, 0.45, 0.30, 0.0), (2.0, 2.0, 2.0, 1.0, 1.0, 2.0), "open vowel, jaw dropped"),
    Viseme("EH", (0.58, 0.68, 0.05, 0.60, 0.20, 0.0), (2.0, 2.0, 2.0, 1.0, 1.0, 2.0), "mid vowel, mouth half open"),
    Viseme("IY", (0.22, 0.95, 0.00, 0.85, 0.10, 0.0), (2.0, 2.0, 2.0, 1.0, 1.0, 2.0), "close front vowel, lips spread"),
    Viseme("OW", (0.65, 0.28, 0.75, 0.25, 0.10, 0.0), (2.0, 2.0, 4.0, 1.0, 1.0, 2.0), "open rounded vowel"),
    Viseme("UW", (0.25, 0.12, 0.95, 0.10, 0.00, 0.0), (2.0, 2.0, 4.0, 1.0, 1.0, 2.0), "close rounded vowel"),
)

VISEME_IDS: dict[str, int] = {v.name: i for i, v in enumerate(VISEMES)}

#: espeak-ng English phoneme mnemonic (stress marks removed) -> viseme names; two names for a
#: diphthong (first half, second half). Covers espeak-ng's en / en-us inventory, not only the grammar.
PHONEME_TO_VISEMES: dict[str, tuple[str, ...]] = {
    # pauses
    "_": ("sil",), "_:": ("sil",), "_!": ("sil",), "_|": ("sil",), "_^_": ("sil",),
    # consonants
    "p": ("PBM",), "b": ("PBM",), "m": ("PBM",), "m-": ("PBM",),
    "f": ("FV",), "v": ("FV",),
    "T": ("TH",), "D": ("TH",),
    "t": ("TDN",), "d": ("TDN",), "n": ("TDN",), "n-": ("TDN",), "t#": ("TDN",), "t2": ("TDN",),
    "d#": ("TDN",), "*": ("TDN",),
    "s": ("SZ",), "z": ("SZ",),
    "S": ("SH",), "Z": ("SH",), "tS": ("SH",), "dZ": ("SH",),
    "l": ("L",), "l/2": ("L",), "l/": ("L",), "@L": ("L",),
    "k": ("KG",), "g": ("KG",), "N": ("KG",), "h": ("KG",), "x": ("KG",), "C": ("KG",), "?": ("KG",),
    "r": ("R",), "r-": ("R",), "3": ("R",), "3:": ("R",), "@r": ("R",), "IR": ("R",),
    "w": ("W",), "W": ("W",),
    # ";" is espeak-ng's palatal glide between "ee" and a following vowel ("three again")
    "j": ("IY",), ";": ("IY",),
    # monophthongs
    "a": ("AA",), "a#": ("AA",), "a2": ("AA",), "A:": ("AA",), "aa": ("AA",), "A": ("AA",), "0": ("AA",),
    "E": ("EH",), "E2": ("EH",), "E3": ("EH",), "e": ("EH",), "@": ("EH",), "@2": ("EH",), "@5": ("EH",),
    "V": ("EH",), "e@": ("EH",), "a@": ("EH",),
    "i": ("IY",), "i:": ("IY",), "I": ("IY",), "I#": ("IY",), "I2": ("IY",), "I2#": ("IY",),
    "O": ("OW",), "O:": ("OW",), "O@": ("OW", "R"), "O2": ("OW",), "0#": ("OW",),
    "u:": ("UW",), "U": ("UW",), "u": ("UW",),
    # diphthongs and r-coloured vowels: two targets
    "aI": ("AA", "IY"), "aI@": ("AA", "IY"), "aI3": ("AA", "R"), "aU": ("AA", "UW"), "aU@": ("AA", "UW"),
    "eI": ("EH", "IY"), "oU": ("OW", "UW"), "oU#": ("OW", "UW"), "OI": ("OW", "IY"),
    "i@": ("IY", "EH"), "i@3": ("IY", "R"), "U@": ("UW", "EH"), "u@": ("UW", "EH"),
    "o@": ("OW", "R"), "A@": ("AA", "R"),
}

# Dominance decay (seconds): anticipation reaches further than carry-over; rounding much further.
TAU_ANTICIPATION = np.array([0.045, 0.045, 0.110, 0.045, 0.045, 0.045])
TAU_CARRY_OVER = np.array([0.035, 0.035, 0.050, 0.035, 0.035, 0.035])


class UnknownPhoneme(KeyError):
    """A phoneme symbol that has no viseme in the table."""


def visemes_of(symbol: str) -> tuple[str, ...]:
    """Viseme names for one espeak-ng mnemonic (stress marks ignored).

    Raises:
        UnknownPhoneme: the symbol is not in :data:`PHONEME_TO_VISEMES`.
    """
    key = strip_stress(symbol)
    if key in PHONEME_TO_VISEMES:
        return PHONEME_TO_VISEMES[key]
    if key.startswith("_"):  # every pause variant is silence
        return ("sil",)
    raise UnknownPhoneme(f"No viseme for espeak-ng phoneme {symbol!r}; add it to PHONEME_TO_VISEMES "
                         f"in talkbench/synthetic/visemes.py and to docs/VISEMES.md.")


@dataclass(frozen=True)
class Segment:
    """A time interval (seconds) carrying one viseme target."""

    viseme: int
    start_s: float
    end_s: float


def segments(phonemes: tuple[PhonemeEvent, ...] | list[PhonemeEvent], offset_s: float = 0.0) -> list[Segment]:
    """Viseme segments of a phoneme sequence, shifted by ``offset_s``; diphthongs split in halves.

    An unknown phoneme (a voice outside the tested set) is logged and takes the neutral ``EH`` shape
    rather than stopping a corpus run.
    """
    out: list[Segment] = []
    for ph in phonemes:
        try:
            names = visemes_of(ph.symbol)
        except UnknownPhoneme as exc:
            logger.warning("%s Using EH.", exc.args[0])
            names = ("EH",)
        start, end = ph.start_s + offset_s, ph.end_s + offset_s
        step = (end - start) / len(names)
        for k, name in enumerate(names):
            out.append(Segment(VISEME_IDS[name], start + k * step, start + (k + 1) * step))
    return _lengthen_closures(out)


#: Shortest time the lips stay closed (p/b/m) or on the teeth (f/v). espeak-ng's stops are often
#: 20 ms long: its event marks the release, and the closure before it belongs to the previous phoneme.
MIN_VISIBLE_S: dict[str, float] = {"PBM": 0.07, "FV": 0.06}


def _lengthen_closures(segs: list[Segment]) -> list[Segment]:
    """Start short closures earlier, taking at most half of the previous segment."""
    out = list(segs)
    for i in range(1, len(out)):
        seg, prev = out[i], out[i - 1]
        need = MIN_VISIBLE_S.get(VISEMES[seg.viseme].name, 0.0)
        if seg.end_s - seg.start_s >= need:
            continue
        start = max(seg.end_s - need, 0.5 * (prev.start_s + prev.end_s))
        if start < seg.start_s:
            out[i - 1] = Segment(prev.viseme, prev.start_s, start)
            out[i] = Segment(seg.viseme, start, seg.end_s)
    return out


@dataclass
class MouthTrack:
    """Per-frame mouth description of a clip.

    Attributes:
        params: float32 ``T×P``, one column per :data:`PARAMS` entry, each in [0, 1].
        viseme: int16 ``T``, the class that dominates each frame (id into :data:`VISEMES`).
    """

    params: np.ndarray
    viseme: np.ndarray


def _dominance(segs: list[Segment], times: np.ndarray) -> np.ndarray:
    """Dominance of every segment at every time: ``S×N×P`` (P = len(PARAMS))."""
    starts = np.array([s.start_s for s in segs])[:, None, None]
    ends = np.array([s.end_s for s in segs])[:, None, None]
    strength = np.array([VISEMES[s.viseme].strength for s in segs])[:, None, :]
    scale = np.array([VISEMES[s.viseme].tau_scale for s in segs])[:, None, None]
    t = times[None, :, None]
    before = np.clip(starts - t, 0.0, None) / (TAU_ANTICIPATION * scale)
    after = np.clip(t - ends, 0.0, None) / (TAU_CARRY_OVER * scale)
    return strength * np.exp(-(before + after))


def mouth_track(segs: list[Segment], num_frames: int, fps: float = 25.0) -> MouthTrack:
    """Mouth parameters and viseme class of each video frame.

    Frame ``k`` shows the mouth at the middle of its interval, ``(k + 0.5) / fps`` seconds, the audio
    window a lip-sync model pairs with it. Before the first and after the last segment the mouth rests
    (silence segments reaching to +-infinity). A frame's class is the segment spoken at that time.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, but got {num_frames}.")
    if not segs:
        raise ValueError("mouth_track needs at least one segment.")
    times = (np.arange(num_frames) + 0.5) / fps
    sil = VISEME_IDS["sil"]
    all_segs = [Segment(sil, -1e9, segs[0].start_s), *segs, Segment(sil, segs[-1].end_s, 1e9)]
    dom = _dominance(all_segs, times)
    targets = np.array([VISEMES[s.viseme].target for s in all_segs])[:, None, :]
    params = (dom * targets).sum(0) / dom.sum(0)
    ends = np.array([s.end_s for s in all_segs])
    # Index of the segment whose [start, end) holds each time (segments are contiguous and sorted).
    inside = np.clip(np.searchsorted(ends, times, side="right"), 0, len(all_segs) - 1)
    ids = np.array([s.viseme for s in all_segs])[inside]
    return MouthTrack(params=np.clip(params, 0.0, 1.0).astype(np.float32), viseme=ids.astype(np.int16))


#: dtype of ``<utt>.visemes.npy``: one record per video frame.
FRAME_DTYPE = np.dtype([("viseme", np.int16)] + [(p, np.float32) for p in PARAMS])


def to_records(track: MouthTrack) -> np.ndarray:
    """The track as a structured array of :data:`FRAME_DTYPE` (``T`` records)."""
    rec = np.zeros(len(track.viseme), FRAME_DTYPE)
    rec["viseme"] = track.viseme
    for j, p in enumerate(PARAMS):
        rec[p] = track.params[:, j]
    return rec
