"""Every protocol's crops, one owner: what each crop is, how it is cut, and the typed key it is shared under.

Modules (each crop is cut by exactly one function; the observers, ``generate``, training and the metrics call
these):

* :mod:`talkbench.crops.face` — 96×96 face-box crops (PSNR/SSIM/``fd_colour`` and TalkLip's generator input).
* :mod:`talkbench.crops.mouth` — the lip readers' gray 88×88 mouth crops by recipe (``centre88``,
  ``landmark-aligned``) and the dlib landmarks the second one is aligned with.
* :mod:`talkbench.crops.lipreader_inputs` — the Conformer's gray 224→112 crops and MVM's fixed LRW crop.
* :mod:`talkbench.crops.syncnet` — SyncNet's inputs: whole frames resized to 224 (wav2lip mode, optionally
  through the reference's JPEG round trip) and face-track crops (pipeline mode) with the detections they
  come from.

Sharing: the observers of one clip share a per-clip dict (``ClipData.cache``, a :data:`ClipCache`) whose keys are
:class:`CropKey` values — a :class:`Kind` (one member per shared array), the clip side it was cut from and,
for kinds that have several recipes, the recipe. Keys are made only by the per-kind accessors of this package
(``face96_pair``, ``mouth88``, ``landmarks``, ``conformer112``, ``mvm_lrw112``, ``syncnet224``,
``face_detections``), each of which computes its crop once per clip through :func:`cached`; an unknown kind,
side or recipe is a ``ValueError``, so two observers cannot keep the same crop under two names.

Face boxes are validated by :mod:`talkbench.boxes` (bottom layer: suites read box files with it too).

Layer: below the observers and :mod:`talkbench.lse`, above :mod:`talkbench.tracks` (a clip's face track) and
:mod:`talkbench.faces` (detectors, landmarks, syncnet_python tracks); imports tracks, faces and the bottom layer
(media, boxes, jpeg_compat, reference_ffmpeg), never nets, observers,
protocols, evaluate or the CLI (the contracts in pyproject.toml).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

from talkbench.faces import DETECTORS

#: The clip a crop is cut from.
Side = Literal["generated", "reference"]
SIDES: tuple[str, ...] = ("generated", "reference")

_T = TypeVar("_T")


class Kind(enum.Enum):
    """Every per-clip array the observers share; a member's value is ``(label, recipes)``.

    * ``FACE96``: uint8 ``N×96×96×3`` BGR face-box crops of the N frames the generated and the reference clip have
      in common (:func:`talkbench.crops.face.face96_pair`).
    * ``MOUTH88``: uint8 ``T×88×88`` gray lip-reader crops; recipes ``centre88`` and ``landmark-aligned``
      (:func:`talkbench.crops.mouth.mouth88`).
    * ``LANDMARKS``: per frame a float64 ``68×2`` dlib landmark array or None (:func:`talkbench.crops.mouth.landmarks`).
    * ``CONFORMER112``: uint8 ``T×112×112`` gray, 224→centre 112 (:func:`talkbench.crops.lipreader_inputs.conformer112`).
    * ``MVM_LRW112``: uint8 ``T×112×112`` gray, fixed LRW box → 112 (:func:`talkbench.crops.lipreader_inputs.mvm_lrw112`).
    * ``SYNCNET224``: uint8 ``T×224×224×3`` BGR whole frames; recipes ``resize`` and ``jpeg-compat``
      (:func:`talkbench.crops.syncnet.syncnet224`).
    * ``FACE_DETECTIONS``: per frame float64 ``K×5`` face detections; recipe = the detector
      (:func:`talkbench.crops.syncnet.face_detections`).
    * ``FACE_TRACK``: the clip's :class:`talkbench.tracks.ClipTrack` in the coordinates of the measured frames, when
      the clip was cut around its face track (:func:`talkbench.crops.face.clip_face_track`).
    """

    FACE96 = ("face96", ())
    MOUTH88 = ("mouth88", ("centre88", "landmark-aligned"))
    LANDMARKS = ("landmarks", ())
    CONFORMER112 = ("conformer112", ())
    MVM_LRW112 = ("mvm_lrw112", ())
    SYNCNET224 = ("syncnet224", ("resize", "jpeg-compat"))
    FACE_DETECTIONS = ("face_detections", DETECTORS)
    FACE_TRACK = ("face_track", ())

    def __init__(self, label: str, recipes: tuple[str, ...]) -> None:
        self.label = label
        self.recipes = recipes


@dataclass(frozen=True)
class CropKey:
    """The key of one shared per-clip array in a :data:`ClipCache`.

    Attributes:
        kind: what the array is.
        side: the clip it was cut from (``generated`` or ``reference``).
        recipe: how it was cut, for kinds with several recipes (one of ``kind.recipes``); None otherwise.
    Raises:
        ValueError: an unknown side, a recipe the kind does not have, or a missing recipe.
    """

    kind: Kind
    side: Side = "generated"
    recipe: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            raise ValueError(f"Argument `kind` must be a talkbench.crops.Kind, but got {self.kind!r}.")
        if self.side not in SIDES:
            raise ValueError(f"Argument `side` must be one of {', '.join(SIDES)}, but got {self.side!r}.")
        if self.kind.recipes and self.recipe not in self.kind.recipes:
            raise ValueError(f"Unknown {self.kind.label} crop recipe `{self.recipe}`; choose from "
                             f"{', '.join(self.kind.recipes)}.")
        if not self.kind.recipes and self.recipe is not None:
            raise ValueError(f"{self.kind.label} crops have a single recipe; got recipe {self.recipe!r}.")

    def __str__(self) -> str:
        return ".".join(p for p in (self.kind.label, self.recipe, self.side) if p)


#: Per-clip store of shared crops (``ClipData.cache``).
ClipCache = dict[CropKey, Any]


def cached(cache: ClipCache, key: CropKey, make: Callable[[], _T]) -> _T:
    """``cache[key]``, computed with ``make()`` the first time (nothing is stored when ``make`` raises).

    Called by the per-kind accessors of this package, which own their key and their ``make``; other modules ask
    those accessors rather than this function.
    """
    if key not in cache:
        cache[key] = make()
    return cache[key]


__all__ = ["SIDES", "ClipCache", "CropKey", "Kind", "Side", "cached"]
