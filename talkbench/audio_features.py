"""Audio features of the reference observers, computed on int16-valued 16 kHz samples.

The reference scripts read wav files with ``scipy.io.wavfile.read`` and pass the **int16 values**
(not rescaled to [-1, 1]) to python_speech_features; we do the same, so the features match to float
precision.
"""

from __future__ import annotations

import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
STACK = 4  # log-fbank frames (100 Hz) per video frame (25 Hz)


def syncnet_mfcc(samples_int16: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """MFCC as SyncNet's evaluation computes it: ``python_speech_features.mfcc`` defaults at 100 Hz.

    Args:
        samples_int16: mono samples ``N`` (int16 values; any integer or float dtype holding them).
    Returns:
        float64 array ``13×F``, F = 1 + ceil((N - 400) / 160) frames (feature-major, as SyncNet wants).
    """
    mfcc = python_speech_features.mfcc(np.asarray(samples_int16), sample_rate)
    return np.asarray(mfcc).T


def logfbank_26(samples_int16: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """26 log mel filterbank energies at 100 Hz (python_speech_features defaults), float32 ``F×26``."""
    return python_speech_features.logfbank(np.asarray(samples_int16), samplerate=sample_rate).astype(np.float32)


def stack_frames(fbank: np.ndarray, stack: int = STACK) -> np.ndarray:
    """Stack ``stack`` consecutive rows into one (AV-HuBERT's ``stacker``).

    The remainder is zero-padded **after the log** (rows of zeros), then row j is
    ``[f(4j) | f(4j+1) | f(4j+2) | f(4j+3)]``.

    Args:
        fbank: ``F×C`` features.
    Returns:
        ``ceil(F/stack) × (stack·C)`` array of the same dtype.
    """
    rows, channels = fbank.shape
    remainder = rows % stack
    if remainder:
        fbank = np.concatenate([fbank, np.zeros((stack - remainder, channels), dtype=fbank.dtype)], axis=0)
    return fbank.reshape(-1, stack * channels)


def avhubert_audio_features(samples_int16: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """AV-HuBERT's audio input: stacked 26-band log-fbank (104-d at 25 Hz), layer-normed per frame.

    Args:
        samples_int16: mono samples ``N`` with int16 values at 16 kHz.
    Returns:
        float32 ``T'×104``, T' = ceil(F/4); each row normalised over its 104 values (eps 1e-5, no affine).
    """
    stacked = stack_frames(logfbank_26(samples_int16, sample_rate))
    with torch.no_grad():
        normed = F.layer_norm(torch.from_numpy(stacked), stacked.shape[1:])
    return normed.numpy()
