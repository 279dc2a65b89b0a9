"""Wav2Lip's mel spectrogram (``audio.py`` + ``hparams.py`` of Rudrabha/Wav2Lip), in numpy.

The reference computes, from float samples in [-1, 1] (``librosa.load`` of 16 kHz audio = int16 / 32768):

1. pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]`` (``scipy.signal.lfilter([1, -0.97], [1], x)``);
2. ``librosa.stft(n_fft=800, hop_length=200, win_length=800)``: periodic Hann window, centred frames
   (the signal padded by 400 samples on each side, mirrored: librosa 0.7.0's ``pad_mode='reflect'``, the
   version Wav2Lip pins), so ``1 + len // 200`` frames;
3. magnitude → mel with ``librosa.filters.mel(16000, 800, n_mels=80, fmin=55, fmax=7600)`` (Slaney mel scale,
   Slaney area normalisation), :func:`mel_filter_bank` here;
4. ``20 log10(max(1e-5, x)) - 20`` dB (min_level_db -100, ref_level_db 20);
5. symmetric normalisation to [-4, 4] with clipping: ``clip(8 (S + 100) / 100 - 4, -4, 4)``.

The generator reads 16-column windows of it (:func:`mel_windows`): window ``i`` starts at column
``int(i * 80 / fps)``; once a window would run past the end, one last window of the final 16 columns is
added and the list stops (``inference.py``), or the list just stops (``evaluation/gen_videos_from_filelist.py``,
``clamp_last=False``).

No librosa: the filter bank is written here and checked against librosa's on the parity fixture
(``tests/fixtures/wav2lip``).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
#: mel columns per generator input window
MEL_STEP = 16
#: mel columns per second (16000 / 200)
MEL_RATE = SAMPLE_RATE / HOP

_F_SP = 200.0 / 3           # Slaney mel scale: linear part, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log = hz >= _MIN_LOG_HZ
    return np.where(log, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def mel_filter_bank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
                    fmax: float = FMAX) -> np.ndarray:
    """Triangular mel filters on the Slaney scale with Slaney area normalisation (librosa's defaults).

    Returns:
        float32 ``n_mels×(n_fft // 2 + 1)``.
    """
    fft_freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_MEL_BASIS = mel_filter_bank()


def preemphasis(wav: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
    """``y[n] = x[n] - k x[n-1]``, ``y[0] = x[0]`` (float64)."""
    x = np.asarray(wav, dtype=np.float64)
    y = x.copy()
    y[1:] -= k * x[:-1]
    return y


def stft_magnitude(y: np.ndarray) -> np.ndarray:
    """``|librosa.stft(y, n_fft=800, hop_length=200, win_length=800, pad_mode='reflect')|``.

    Returns:
        float64 ``401×(1 + len(y) // 200)``.
    Raises:
        ValueError: fewer than 401 samples (a mirrored pad of 400 needs more).
    """
    if len(y) <= N_FFT // 2:
        raise ValueError(f"audio of {len(y)} samples is too short for Wav2Lip's spectrogram (needs more than "
                         f"{N_FFT // 2} samples at 16 kHz)")
    padded = np.pad(y, N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)      # periodic Hann
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised mel spectrogram.

    Args:
        wav: mono 16 kHz samples as floats in [-1, 1] (or int16, divided by 32768 as ``librosa.load`` does).
    Returns:
        float32 ``80×(1 + len // 200)`` in [-4, 4].
    """
    wav = np.asarray(wav)
    if wav.dtype == np.int16:
        wav = wav.astype(np.float32) / 32768.0
    spec = _MEL_BASIS.astype(np.float64) @ stft_magnitude(preemphasis(wav))
    min_level = np.exp(MIN_LEVEL_DB / 20 * np.log(10))
    db = 20 * np.log10(np.maximum(min_level, spec)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    return np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_window_starts(n_columns: int, fps: float = 25.0, clamp_last: bool = True) -> np.ndarray:
    """First mel column of each generator window (``inference.py``'s ``mel_chunks`` loop).

    Window ``i`` starts at ``int(i * 80 / fps)`` while it fits; with ``clamp_last`` one more window, the last
    16 columns, ends the list (``inference.py``); without, the list just ends
    (``evaluation/gen_videos_from_filelist.py``).

    Raises:
        ValueError: fewer than 16 columns (0.19 s of audio), so not even one window.
    """
    if n_columns < MEL_STEP:
        raise ValueError(f"{n_columns} mel columns: Wav2Lip needs at least {MEL_STEP} (about 0.2 s of audio)")
    multiplier = MEL_RATE / fps
    starts = []
    i = 0
    while True:
        start = int(i * multiplier)
        if start + MEL_STEP > n_columns:
            if clamp_last:
                starts.append(n_columns - MEL_STEP)
            break
        starts.append(start)
        i += 1
    return np.asarray(starts, dtype=np.int64)


def mel_windows(mel: np.ndarray, fps: float = 25.0, clamp_last: bool = True) -> np.ndarray:
    """The generator's audio inputs: ``N×80×16`` windows of ``mel`` at :func:`mel_window_starts`."""
    starts = mel_window_starts(mel.shape[1], fps, clamp_last)
    return np.stack([mel[:, s:s + MEL_STEP] for s in starts])
