"""LSE-C / LSE-D / AV offset under protocol ``mini``: the SyncNet observer with the mini SyncNet.

Everything but the network is :mod:`talkbench.observers.syncnet` (its :class:`SyncNetObserver`, options,
per-clip columns ``lse_c``, ``lse_d``, ``av_offset``, ``n_windows`` and summary): whole frames resized to
224×224, MFCC windows, offsets -15..15, as Wav2Lip's ``scores_LSE``. The network is the width-reduced
SyncNet of card ``mini-syncnet`` (:mod:`talkbench.nets.mini_syncnet`), bundled in the package and trained by
:mod:`talkbench.train.mini_observers` on the synthetic corpus (:mod:`talkbench.synthetic`).
"""

from __future__ import annotations

from talkbench import weights
from talkbench.devices import resolve_device
from talkbench.nets.mini_syncnet import load_mini_syncnet
from talkbench.observers.base import ObserverContext
from talkbench.observers.syncnet import METRICS, LSEOptions, SyncNetObserver, observer_around, summarize

CARD = "mini-syncnet"


def build(ctx: ObserverContext) -> SyncNetObserver:
    """Load the mini SyncNet on ``ctx.device`` and wrap it in the SyncNet observer (same options, S3FD included)."""
    LSEOptions.from_mapping(ctx.options)  # bad options fail before a checkpoint is looked for
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    model, _ = load_mini_syncnet(path, resolve_device(ctx.device))
    return observer_around(model, CARD, sha, ctx, name="mini-syncnet")


__all__ = ["CARD", "METRICS", "build", "summarize"]
