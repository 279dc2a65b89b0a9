"""LSE-C / LSE-D / AV offset: SyncNet scoring as Wav2Lip's ``evaluation/scores_LSE`` runs it.

Per clip (reference: ``SyncNetInstance_calc_scores.evaluate`` on top of joonson/syncnet_python):

1. frames: uint8 BGR, each resized to 224×224 with ``cv2.resize`` (INTER_LINEAR, also when
   downscaling; :func:`talkbench.crops.syncnet.resize_frames`), float 0..255, no normalisation;
2. audio: int16-valued 16 kHz samples -> ``python_speech_features.mfcc`` defaults, 13×F at 100 Hz;
3. ``min_length = min(T, floor(N / 640))``, ``n_windows = min_length - 5`` (the reference drops the
   last complete window); window i = frames i..i+4 and MFCC columns 4i..4i+19;
4. embeddings (1024-d, raw) of every window; audio embeddings zero-padded by ``vshift`` rows at both
   ends; ``d[i, j] = ||v_i - a_{i+j-vshift} + 1e-6||`` for j = 0..2·vshift (the padding rows count);
5. ``mean_dists[j]`` = mean over windows; LSE-D = min, AV offset = vshift - argmin,
   LSE-C = lower median - min.

The reference's ffmpeg JPEG round trip of the frames (and its ffmpeg audio extraction) is reproduced by
:mod:`talkbench.jpeg_compat`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from talkbench.audio_features import syncnet_mfcc
from talkbench.crops.syncnet import resize_frames
from talkbench.devices import to_device
from talkbench.nets.syncnet import SyncNet

logger = logging.getLogger(__name__)

VSHIFT = 15
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
MFCC_PER_FRAME = 4            # 100 Hz MFCC / 25 fps video
SAMPLES_PER_FRAME = 640       # 16 kHz / 25 fps
DEFAULT_CHUNK = 4             # lip-network windows per step on CPU: fastest measured (activations stay in cache)
PAIRWISE_EPS = 1e-6           # torch.nn.functional.pairwise_distance default, added to the difference
#: Windows per step of the audio network and of the distance computation: bounds memory on long clips (a minute:
#: 1500 windows; at once the audio activations took ~0.5 GB and the n×1024×31 differences ~0.6 GB).
ROW_CHUNK = 256


@dataclass
class LSEResult:
    """SyncNet scores of one clip (or one face track).

    Attributes:
        lse_c: confidence, lower median of ``mean_dists`` minus its minimum.
        lse_d: minimum of ``mean_dists``.
        av_offset: ``vshift - argmin`` (frames; > 0 means argmin < vshift).
        n_windows: 5-frame windows scored.
        mean_dists: float32 ``2·vshift+1`` mean distance per shift.
    """

    lse_c: float
    lse_d: float
    av_offset: int
    n_windows: int
    mean_dists: np.ndarray = field(repr=False)


# ----------------------------------------------------------------------------------------- inputs

def count_windows(n_frames: int, n_samples: int) -> int:
    """Scored windows: ``min(T, floor(N / 640)) - 5`` (may be <= 0: nothing to score)."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - WINDOW_FRAMES


def mfcc_windows(mfcc: np.ndarray, n_windows: int) -> torch.Tensor:
    """MFCC windows of 20 columns every 4 columns.

    Args:
        mfcc: ``13×F`` (float64 from :func:`syncnet_mfcc`; cast to float32 as the reference does).
    Returns:
        float32 ``n_windows×1×13×20`` (window i = columns 4i..4i+19).
    """
    need = MFCC_PER_FRAME * (n_windows - 1) + WINDOW_MFCC
    if mfcc.shape[1] < need:
        raise ValueError(f"MFCC has {mfcc.shape[1]} columns, {need} needed for {n_windows} windows.")
    m = torch.from_numpy(np.ascontiguousarray(mfcc, dtype=np.float32))
    win = m.unfold(1, WINDOW_MFCC, MFCC_PER_FRAME)[:, :n_windows]     # (13, n, 20)
    return win.permute(1, 0, 2).unsqueeze(1).contiguous()


# ------------------------------------------------------------------------------------------ scoring

def shifted_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """Distances of every window to the audio ``vshift`` windows before/after it (reference ``calc_pdist``).

    ``d[i, j] = ||video_emb[i] - audio_p[i + j] + 1e-6||_2`` with ``audio_p`` = audio embeddings
    zero-padded by ``vshift`` rows at both ends, all in one tensor operation.

    Args:
        video_emb, audio_emb: ``n×D``.
    Returns:
        ``n×(2·vshift+1)`` in the embeddings' dtype.
    """
    n = video_emb.shape[0]
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))                     # (n + 2v, D)
    windows = padded.unfold(0, 2 * vshift + 1, 1)[:n]                      # (n, D, 2v+1), a view
    out = []
    for start in range(0, n, ROW_CHUNK):   # row by row the same arithmetic: chunks bound the (rows, D, 2v+1) copies
        stop = min(n, start + ROW_CHUNK)
        diff = video_emb[start:stop].unsqueeze(2) - windows[start:stop] + PAIRWISE_EPS
        out.append(torch.linalg.vector_norm(diff, dim=1))
    return torch.cat(out, 0) if out else video_emb.new_zeros((0, 2 * vshift + 1))


def scores_from_distances(dists: torch.Tensor, vshift: int = VSHIFT) -> LSEResult:
    """LSE-D, LSE-C and offset from the per-window distances ``n×(2·vshift+1)``."""
    mean_dists = dists.mean(0)
    minval, minidx = torch.min(mean_dists, 0)          # first index on ties, as the reference
    conf = torch.median(mean_dists) - minval           # torch.median: lower median
    return LSEResult(lse_c=float(conf), lse_d=float(minval), av_offset=int(vshift - int(minidx)),
                     n_windows=int(dists.shape[0]), mean_dists=mean_dists.cpu().numpy())


def embed_clip(model: "SyncNet", frames224: np.ndarray, audio_int16: np.ndarray, n_windows: int,
               device: str | torch.device = "cpu", chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip and audio embeddings of windows 0..n_windows-1.

    Args:
        frames224: uint8 BGR ``T×224×224×3`` (T >= n_windows + 4).
        audio_int16: mono 16 kHz samples (int16 values).
        chunk: windows per lip-network step (bounds memory; results change only by float32 rounding).
    Returns:
        (video_emb, audio_emb), float32 ``n_windows×1024`` on ``device``.
    """
    mfcc = syncnet_mfcc(np.asarray(audio_int16))
    with torch.inference_mode():
        windows = to_device(mfcc_windows(mfcc, n_windows), device)
        audio_emb = torch.cat([model.audio_embeddings(windows[i:i + ROW_CHUNK])
                               for i in range(0, n_windows, ROW_CHUNK)], 0)
        video = to_device(torch.from_numpy(np.ascontiguousarray(frames224[: n_windows + WINDOW_FRAMES - 1])), device)
        video_emb = model.lip_embeddings(video, n_windows, chunk=chunk)  # (T, 224, 224, 3) uint8 in
    return video_emb, audio_emb


def lse_scores(model: "SyncNet", frames_bgr: np.ndarray, audio_int16: np.ndarray,
               device: str | torch.device = "cpu", vshift: int = VSHIFT, chunk: int = DEFAULT_CHUNK) -> LSEResult:
    """LSE of one clip from its frames and audio (frames are resized to 224×224 here unless they already are).

    Args:
        frames_bgr: uint8 BGR ``T×H×W×3`` at 25 fps.
        audio_int16: mono 16 kHz samples ``N``.
    Raises:
        ValueError: the clip has no complete window (``min(T, N // 640) <= 5``); the reference crashes there.
    """
    n = count_windows(len(frames_bgr), len(audio_int16))
    if n <= 0:
        raise ValueError(f"Too short for SyncNet: {len(frames_bgr)} frames and {len(audio_int16)} audio "
                         f"samples give min(T, N // 640) = {n + WINDOW_FRAMES}; more than 5 are needed "
                         "(at least 6 frames = 0.24 s of video and audio).")
    frames224 = resize_frames(np.asarray(frames_bgr[: n + WINDOW_FRAMES - 1]))
    video_emb, audio_emb = embed_clip(model, frames224, audio_int16, n, device, chunk)
    with torch.inference_mode():
        return scores_from_distances(shifted_distances(video_emb, audio_emb, vshift), vshift)


__all__ = ["LSEResult", "ROW_CHUNK", "VSHIFT", "count_windows", "embed_clip", "lse_scores", "mfcc_windows",
           "scores_from_distances", "shifted_distances"]
