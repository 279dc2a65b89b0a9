"""``talkbench lipread``: read the lips of one video with the WER1 observer of a protocol.

AV-HuBERT (beam search) under ``talklip2023`` and ``avhubert-official``; the bundled mini lip reader
(greedy CTC) under ``mini``. The crops are the protocol's (:attr:`talkbench.protocols.Protocol.mouth_roi`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from talkbench import protocols
from talkbench.media import decode_clip
from talkbench.observers import ClipData
from talkbench.protocols import build_observers


@dataclass(frozen=True)
class LipReading:
    """What the lip reader read from one video.

    Attributes:
        text: the best hypothesis, detokenised.
        score: its length-normalised log-probability (natural log).
        tokens: its token ids (ending with ``</s>``).
        frames: video frames read (25 fps).
    """

    text: str
    score: float
    tokens: list[int]
    frames: int


def lipread(video: str | Path, weights: Mapping[str, Path] | None = None, protocol: str = "talklip2023",
            device: str = "cpu", beam: int = 50, options: Mapping[str, Any] | None = None) -> LipReading:
    """Lip-read one video file with the WER1 observer of ``protocol``.

    Args:
        video: any video file (decoded to 25 fps BGR).
        weights: card name -> local checkpoint (``{"avhubert-large-lrs2": PATH}``); else the cache/download.
        protocol: ``talklip2023`` (centre crop of the full frame), ``avhubert-official`` (aligned mouth ROI), or
            ``mini`` (the bundled mini lip reader, synthetic-corpus faces only).
        device: ``cpu`` or ``cuda``.
        beam: beam width (50 as the reference; AV-HuBERT only, the mini reader decodes greedily).
        options: extra observer options (``avhubert_spm_model``, ``avhubert_dict``, ``mini_lexicon``).
    Raises:
        ValueError / MediaError: bad arguments or unreadable video; ClipSkipped: no mouth crop.
    """
    chosen = protocols.get(protocol)
    given = {**dict(options or {}), **({"avhubert_beam": beam, "max_frames": 10 ** 9}
                                       if chosen.observers["wer1"] == "avhubert" else {})}
    observer = build_observers(["wer1"], chosen.context(["wer1"], device, weights, given))[0]
    clip = decode_clip(video, need_audio=False)
    crops = observer.crops(ClipData(str(video), clip))
    text, score, tokens = observer.transcribe(crops)
    return LipReading(text=text, score=float(score), tokens=list(tokens), frames=int(crops.shape[0]))
