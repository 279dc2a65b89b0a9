"""WER_AVSR observer: Auto-AVSR's VSR model (card ``auto-avsr-vsr``) transcribing the generated video.

Reproduces mpc001/auto_avsr @ 182b628 ``eval.py`` / ``lightning.ModelModule`` (video), per clip:

1. mouth crops: the ``landmark-aligned`` recipe of :mod:`talkbench.crops.mouth` **whatever the protocol's**
   ``mouth_roi`` (Auto-AVSR is only defined on its own landmark-aligned ROIs): dlib 68-point landmarks, a similarity
   warp onto ``20words_mean_face.npy`` (256×256), the 96×96 patch centred on the mouth points 48–67, gray, the
   centre 88×88. Auto-AVSR's own preparation differs in its details (docs/observers/avsr.md): RetinaFace (FAN
   landmarks) or MediaPipe instead of dlib, eight stable points (28, 33, 36, 39, 42, 45, 48, 54) fitted with
   ``cv2.estimateAffinePartial2D`` (LMEDS) instead of five with a least-squares similarity, landmarks smoothed over
   a centred ±6-frame window instead of a forward 12-frame one, the gray conversion before the warp, and the
   patches written to an MP4 file and read back;
2. VideoTransform "test": ``/255``, centre 88, torchvision ``Grayscale`` of the 3-channel ROI, ``(x − 0.421)/0.165``
   (:func:`talkbench.nets.avsr.video_input`);
3. the encoder, then the joint CTC/attention beam search (:func:`talkbench.nets.avsr_decoding.beam_search`:
   beam 40, CTC weight 0.1, no LM, no length bonus, max length = frames, end detection);
4. the best hypothesis' text; the reference = the transcript with ``{}`` removed, upper-cased, tokenised and
   detokenised (``<unk>`` for pieces outside the vocabulary), exactly what ``eval.py`` compares against; both
   lower-cased (``compute_word_level_distance``);
5. word edits (editdistance over whitespace-split words, as torchaudio's ``edit_distance`` on the word lists),
   character edits (not in the reference; as ``cer1``) and, when espeak-ng is available, viseme edits
   (``ver_avsr``: :func:`talkbench.metrics.visemes.viseme_columns`).

Aggregation (:func:`summarize`): ``wer_avsr`` = 100 · Σ word edits / Σ reference words over the clips (``eval.py``'s
``total_edit_distance / total_length``, in percent); ``cer_avsr`` and ``ver_avsr`` likewise.

LipScore (KeySync, 2025) shares this module's model: :mod:`talkbench.observers.avsr_lipscore`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from talkbench import weights
from talkbench.crops.mouth import mouth88
from talkbench.devices import resolve_device, to_device
from talkbench.metrics.text import corpus_rate_of
from talkbench.nets.avsr import AutoAVSR, load_auto_avsr, text_transform, video_input
from talkbench.nets.avsr_decoding import OFFICIAL, DecodeSettings, beam_search
from talkbench.observers.avhubert import lipreading_row
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

CARD = "auto-avsr-vsr"
METRICS: tuple[str, ...] = ("wer_avsr", "cer_avsr", "ver_avsr")
#: Auto-AVSR's own preparation: always the landmark-aligned mouth ROIs (see the module docstring).
CROP_RECIPE = "landmark-aligned"


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Corpus WER/CER/VER of Auto-AVSR in percent over stored per-clip rows (NaN without reference units)."""
    return {"wer_avsr": corpus_rate_of(rows, "edits_avsr", "ref_words_avsr"),
            "cer_avsr": corpus_rate_of(rows, "char_edits_avsr", "ref_chars_avsr"),
            "ver_avsr": corpus_rate_of(rows, "viseme_edits_avsr", "ref_visemes_avsr")}


def wer_avsr_row(ref: str, hyp: str, score: float) -> dict[str, Any]:
    """Per-clip columns (percent) with the counts the corpus-level summary adds up."""
    return lipreading_row(ref, hyp, score, "_avsr")


@functools.lru_cache(maxsize=1)
def shared_model(path: str, device: str) -> AutoAVSR:
    """The loaded model, once per (file, device): the WER and LipScore observers of one run share it."""
    return load_auto_avsr(Path(path), device)


def crops_of(clip: ClipData, side: str = "generated") -> np.ndarray:
    """Auto-AVSR's gray 88×88 uint8 crops ``T×88×88`` of a clip side (landmark-aligned, shared per clip).

    Raises:
        ClipSkipped: no frames or no usable mouth crop.
    """
    frames = clip.generated.frames if side == "generated" else clip.reference.frames  # type: ignore[union-attr]
    if frames.shape[0] == 0:
        raise ClipSkipped(f"Auto-AVSR: the {side} clip has no frames")
    try:
        return mouth88(clip.cache, frames, CROP_RECIPE, side=side)  # type: ignore[arg-type]
    except ValueError as err:
        raise ClipSkipped(f"Auto-AVSR: no mouth crop of the {side} clip ({err})") from None


def encoder_features(model: AutoAVSR, crops: np.ndarray, device: torch.device, frame_chunk: int = 0) -> torch.Tensor:
    """Encoder output ``T×768`` (float32, on ``device``) of gray uint8 crops ``T×88×88``."""
    return model.encode(to_device(video_input(torch.from_numpy(np.ascontiguousarray(crops))), device), frame_chunk)[0]


@dataclass
class AutoAVSRObserver:
    """WER_AVSR observer; see the module docstring for the protocol.

    Attributes:
        model: the VSR model (eval mode, on ``device``).
        settings: beam search settings (default: Auto-AVSR's).
        max_frames: longer clips are error rows (None: no limit).
        frame_chunk: front-end frames per step (0 = all; memory only).
    """

    model: AutoAVSR
    device: torch.device
    settings: DecodeSettings = OFFICIAL
    max_frames: int | None = None
    frame_chunk: int = 0
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "avsr"
    metrics: tuple[str, ...] = METRICS
    needs_reference: bool = False
    needs_text: bool = True

    def transcribe(self, crops: np.ndarray) -> tuple[str, float, list[int]]:
        """Best hypothesis of gray crops ``T×88×88``: ``(text, score, tokens)`` (tokens end with <eos>)."""
        memory = encoder_features(self.model, crops, self.device, self.frame_chunk)
        best = beam_search(self.model, memory, self.settings)[0]
        return text_transform().hypothesis(best.tokens), best.score, best.tokens

    def measure(self, clip: ClipData) -> Row:
        """Per-clip row: ``wer_avsr``, ``hyp_avsr``, ``ref_avsr``, ``score_avsr``, the word/char counts and, with
        espeak-ng, ``viseme_edits_avsr``/``ref_visemes_avsr``.

        Raises:
            ClipSkipped: no transcript, no frames, more than ``max_frames`` frames, or no mouth crop.
        """
        if not clip.text or not clip.text.strip():
            raise ClipSkipped("no transcript for WER_AVSR")
        num = int(clip.generated.frames.shape[0])
        if self.max_frames is not None and num > self.max_frames:
            raise ClipSkipped(f"WER_AVSR: {num} frames, more than max_frames={self.max_frames}; raise the option "
                              "max_frames to score it")
        hyp, score, _ = self.transcribe(crops_of(clip))
        ref = text_transform().reference(clip.text)
        return wer_avsr_row(ref.lower(), hyp.lower(), score)

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def load_shared(ctx: ObserverContext) -> tuple[AutoAVSR, torch.device, str]:
    """The run's model (card ``auto-avsr-vsr``: ``--weights auto-avsr-vsr=PATH``, the cache or the download), its
    device and the file's sha256 prefix."""
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    return shared_model(str(Path(path).resolve()), str(device)), device, sha


def build(ctx: ObserverContext) -> AutoAVSRObserver:
    """Options (typed and checked by the spec, :func:`talkbench.observers.build`): ``avsr_beam`` (40),
    ``max_frames`` (None = no limit), ``avsr_frame_chunk`` (0).

    Raises:
        ValueError: CUDA asked for but absent.
    """
    model, device, sha = load_shared(ctx)
    return AutoAVSRObserver(model=model, device=device,
                            settings=DecodeSettings(beam=ctx.options.get("avsr_beam", OFFICIAL.beam)),
                            max_frames=ctx.options.get("max_frames"),
                            frame_chunk=ctx.options.get("avsr_frame_chunk", 0),
                            weights_sha256={CARD: sha})
