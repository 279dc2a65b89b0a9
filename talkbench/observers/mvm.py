"""ACC: LRW word accuracy with the MVM classifier, as MVM's test.py with ``--test_aug``.

Per clip: the generated frames (RGB) -> PIL crop box (59, 95, 195, 231) (136×136) -> PIL bilinear resize
to 112×112 on the RGB image -> PIL ``convert('L')`` (:func:`talkbench.crops.lipreader_inputs.lrw_crops`)
-> ``(x/255 - 0.4136) / 0.1700`` -> zero-filled to 29
frames (after normalisation, so the fill is mid-grey, exactly as the LRW test loader). The prediction is the
argmax of ``logits(clip) + logits(horizontal mirror)``; top-5 uses the same summed logits.

Labels: the clip's word (``ClipData.text``; an LRW ``Text: WORD`` line works too) or, without text, the LRW
file-name rule (the part of the clip's base name before the first ``_``, e.g. ``ABOUT_00001``). Class index =
position in the sorted list of the 500 LRW words shipped in ``talkbench/data/lrw_500_words_sorted.txt``.

Clip length: shorter clips are zero-filled to 29 frames. Longer clips make the reference loader fail, so by
default they are skipped with an error row; option ``mvm_long_clips="center"`` keeps the middle 29 frames
(LRW's word is centred in its 29 frames) and ``"first"`` the first 29.

Frames smaller than the crop box (195 wide, 231 high) are refused: PIL would silently fill the missing
part with black and the accuracy would mean nothing. LRW clips are 256×256.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from talkbench import weights
from talkbench.crops.lipreader_inputs import LRW_SIZE, mvm_lrw112
from talkbench.devices import resolve_device, to_device
from talkbench.nets.mvm import MAX_FRAMES, NUM_CLASSES, MVMClassifier, load_mvm
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

CARD = "mvm-lrw"
MEAN = 0.4136
STD = 0.1700
WORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "lrw_500_words_sorted.txt"


@lru_cache(maxsize=1)
def lrw_words() -> tuple[str, ...]:
    """The 500 LRW words in class order (sorted; index 0 = ABOUT)."""
    words = tuple(w.strip() for w in WORDS_FILE.read_text(encoding="utf-8").splitlines() if w.strip())
    if len(words) != NUM_CLASSES or list(words) != sorted(words) or len(set(words)) != NUM_CLASSES:
        raise ValueError(f"{WORDS_FILE}: expected the 500 distinct LRW words in sorted order; reinstall talkbench.")
    return words


@lru_cache(maxsize=1)
def _word_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(lrw_words())}


def label_of(clip: ClipData) -> str:
    """The clip's LRW word, upper case: from its text (first line, ``Text:`` label removed), else its file name."""
    if clip.text and clip.text.strip():
        line = clip.text.strip().splitlines()[0].strip()
        if line.startswith("Text:"):
            line = line[len("Text:"):].strip()
        return line.upper()
    return Path(clip.clip_id).name.split("_")[0].upper()


def class_index(word: str) -> int:
    """Class index of an LRW word; ValueError naming the word when it is not one of the 500."""
    index = _word_index().get(word)
    if index is None:
        raise ValueError(f"label {word!r} is not one of the 500 LRW words (talkbench/data/lrw_500_words_sorted.txt)")
    return index


def select_frames(num_frames: int, policy: str) -> slice:
    """Which frames feed the 29-frame input; ValueError for a longer clip under ``policy="skip"``."""
    if num_frames <= MAX_FRAMES:
        return slice(0, num_frames)
    if policy == "center":
        start = (num_frames - MAX_FRAMES) // 2
        return slice(start, start + MAX_FRAMES)
    if policy == "first":
        return slice(0, MAX_FRAMES)
    raise ValueError(f"the clip has {num_frames} frames; MVM takes at most {MAX_FRAMES} (LRW clips have 29). "
                     "Set option mvm_long_clips=center or =first to cut it.")


def input_tensor(crops: np.ndarray) -> torch.Tensor:
    """Gray uint8 ``T×112×112`` (T <= 29) -> ``1×1×29×112×112`` float32, normalised, zero-filled after frame T."""
    if crops.shape[0] > MAX_FRAMES:
        raise ValueError(f"{crops.shape[0]} frames > {MAX_FRAMES}")
    video = torch.zeros(MAX_FRAMES, LRW_SIZE, LRW_SIZE)
    video[: crops.shape[0]] = (torch.from_numpy(np.ascontiguousarray(crops)).float() / 255.0 - MEAN) / STD
    return video[None, None]


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Word accuracy in **percent**: ``acc`` = 100·mean(top-1 hit), ``acc_top5`` = 100·mean(top-5 hit).

    NaN without rows.
    """
    rows = [r for r in rows if r.get("acc") is not None]
    if not rows:
        return {"acc": math.nan, "acc_top5": math.nan}
    return {"acc": 100.0 * float(np.mean([float(r["acc"]) for r in rows])),
            "acc_top5": 100.0 * float(np.mean([float(r["acc_top5"]) for r in rows]))}


@dataclass
class MVMObserver:
    """ACC observer (card ``mvm-lrw``); see the module docstring for the protocol."""

    model: MVMClassifier
    device: torch.device
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    test_aug: bool = True
    long_clips: str = "skip"
    name: str = "mvm"
    metrics: tuple[str, ...] = ("acc", "acc_top5")
    needs_reference: bool = False
    needs_text: bool = False  # the label can also come from the LRW file name

    def logits(self, clip: ClipData) -> torch.Tensor:
        """Summed test-time-augmentation logits ``(500,)`` (no-flip only when ``test_aug`` is off), on CPU."""
        frames = clip.generated.frames
        if frames.shape[0] == 0:
            raise ClipSkipped("ACC: the generated clip has no frames")
        try:
            chosen = select_frames(frames.shape[0], self.long_clips)
            crops = mvm_lrw112(clip.cache, frames)
        except ValueError as err:
            raise ClipSkipped(f"ACC: {err}") from None
        video = to_device(input_tensor(crops[chosen]), self.device)
        with torch.no_grad():
            if self.test_aug:
                noflip, flip = self.model.logits_with_flip(video)
                return (noflip + flip)[0].cpu()
            return self.model(video)[0].cpu()

    def measure(self, clip: ClipData) -> Row:
        """Per-clip row: ``acc`` (0/1), ``acc_top5`` (0/1), ``pred_word``, ``label``.

        Raises:
            ClipSkipped: the label is not one of the 500 LRW words, the clip is too long (policy
                ``skip``), its frames are smaller than the crop box, or it has no frames.
        """
        label = label_of(clip)
        try:
            target = class_index(label)
        except ValueError as err:
            raise ClipSkipped(f"ACC: {err}") from None
        logits = self.logits(clip)
        top5 = torch.topk(logits, 5).indices.tolist()
        return {"acc": int(top5[0] == target), "acc_top5": int(target in top5),
                "pred_word": lrw_words()[top5[0]], "label": label}

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def build(ctx: ObserverContext) -> MVMObserver:
    """Load the ``mvm-lrw`` checkpoint on ``ctx.device``.

    Options (typed and checked by the spec, :func:`talkbench.observers.build`): ``mvm_test_aug`` (bool, default
    True: add the mirrored clip's logits, as ``--test_aug``); ``mvm_long_clips`` (``skip`` | ``center`` |
    ``first``, default ``skip``) for clips over 29 frames.
    """
    policy = ctx.options.get("mvm_long_clips", "skip")
    test_aug = ctx.options.get("mvm_test_aug", True)
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    model = load_mvm(path, device)
    return MVMObserver(model=model, device=device, weights_sha256={CARD: sha},
                       test_aug=bool(test_aug), long_clips=policy)
