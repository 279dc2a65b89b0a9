"""LSE-C / LSE-D / AV offset under protocol ``mini``: the SyncNet observer with the mini SyncNet.

Everything but the network is :mod:`talkbench.observers.syncnet` (its :class:`SyncNetObserver`, options,
per-clip columns ``lse_c``, ``lse_d``, ``av_offset``, ``n_windows`` and summary): whole frames resized to
224×224, MFCC windows, offsets -15..15, as Wav2Lip's ``scores_LSE``. The network is the width-reduced
SyncNet of card ``mini-syncnet`` (:mod:`talkbench.nets.mini_syncnet`), bundled in the package and trained by
:mod:`talkbench.train.mini_observers` on the synthetic corpus (:mod:`talkbench.synthetic`). On anything else (real
faces) its numbers are noise, so it logs a warning for every clip that is not a corpus render (:func:`outside_renders`:
frame size and frame rate; the run also flags clips outside a corpus root, :class:`talkbench.protocols.Expects`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from talkbench import weights
from talkbench.devices import resolve_device
from talkbench.nets.mini_syncnet import load_mini_syncnet
from talkbench.observers.base import ClipData, ObserverContext, Row
from talkbench.observers.syncnet import METRICS, SyncNetObserver, observer_around, summarize
from talkbench.synthetic.corpus import FPS as CORPUS_FPS
from talkbench.synthetic.render import SIZE as RENDER_SIZE

logger = logging.getLogger(__name__)

CARD = "mini-syncnet"


def outside_renders(clip: ClipData) -> str | None:
    """Why a clip is not one of the synthetic corpus' renders (160×160 frames, 25 fps in the file), or None.

    The cheap test the mini observers run on every clip (frame size and the file's frame rate); the run also
    checks, once per clip, that the files lie under a corpus root (:class:`talkbench.protocols.Expects`).
    """
    height, width = clip.generated.frames.shape[1:3]
    if (height, width) != (RENDER_SIZE, RENDER_SIZE):
        return f"frames are {width}×{height}, the corpus' renders {RENDER_SIZE}×{RENDER_SIZE}"
    if abs(clip.generated.source_fps - CORPUS_FPS) > 0.01:
        return f"the file is {clip.generated.source_fps:g} fps, the corpus' renders {CORPUS_FPS:g}"
    return None


def warn_outside_renders(observer: str, clip: ClipData) -> None:
    """Log a warning when a mini observer is used on a clip that is not a corpus render (:func:`outside_renders`)."""
    why = outside_renders(clip)
    if why is not None:
        logger.warning("%s: %s was trained on talkbench's synthetic corpus and %s: its numbers mean nothing here "
                       "(use protocol talklip2023 or avhubert-official for real faces)", clip.clip_id, observer, why)


@dataclass
class MiniSyncNetObserver(SyncNetObserver):
    """The SyncNet observer around the mini SyncNet; warns on clips that are not corpus renders."""

    def measure(self, clip: ClipData) -> Row:
        warn_outside_renders(self.name, clip)
        return super().measure(clip)


def build(ctx: ObserverContext) -> MiniSyncNetObserver:
    """Load the mini SyncNet on ``ctx.device`` and wrap it in the SyncNet observer (same options, S3FD included)."""
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    model, _ = load_mini_syncnet(path, resolve_device(ctx.device))
    observer = observer_around(model, CARD, sha, ctx, name="mini-syncnet")
    return MiniSyncNetObserver(**{f: getattr(observer, f) for f in observer.__dataclass_fields__})


__all__ = ["CARD", "METRICS", "MiniSyncNetObserver", "build", "outside_renders", "summarize", "warn_outside_renders"]
