"""The synthetic viseme corpus: GRID-like sentences spoken by espeak-ng, faces with a rendered mouth.

Layout written by :func:`synthesize_corpus` (LRS2's, so every suite reader works on it)::

    OUT_DIR/corpus.json                       what was generated, with which seed and settings
    OUT_DIR/<split>/filelist.txt              one "<spk>/<utt>" per line (paths under main/), sorted
    OUT_DIR/<split>/main/<spk>/<utt>.mp4      160×160, 25 fps, H.264 video + 16 kHz mono audio
    OUT_DIR/<split>/main/<spk>/<utt>.txt      "Text:  BIN BLUE AT F TWO NOW", then word timings
    OUT_DIR/<split>/main/<spk>/<utt>.npy      int64 T×4 face boxes x1, y1, x2, y2 (TalkLip's bbx)
    OUT_DIR/<split>/main/<spk>/<utt>.visemes.npy   per-frame records (viseme id + 6 mouth parameters)

``<split>`` is ``train`` and ``test``; ``<spk>`` is ``spkNN``, the identity (face + voice) of the clip;
``<utt>`` is the clip's 5-digit index in its split. Every clip is made from its own random stream,
derived from (seed, split, index) only, so a corpus is identical for a seed whatever the number of
workers (byte for byte on one machine, mp4 files included: see :func:`talkbench.media.write_clip`), and
the train and test clips of a seed are different draws.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from talkbench import __version__
from talkbench.media import write_clip
from talkbench.synthetic import grammar, render, speech, visemes

logger = logging.getLogger(__name__)

FPS = 25.0
SAMPLES_PER_FRAME = int(speech.SAMPLE_RATE / FPS)   # 640
AAC_ALIGN_FRAMES = 8
SPLITS: dict[str, int] = {"train": 1, "test": 2}    # split name -> stream id in the seed sequence
FORMAT = "talkbench-mini-corpus"
FORMAT_VERSION = 1

# espeak-ng voice variants (espeak-ng-data/voices/!v) given to identities by their index.
_FEMININE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
_MASCULINE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip (the work item sent to a worker)."""

    split: str
    index: int
    seed: int
    n_identities: int


@dataclass
class SynthClip:
    """One generated clip, in memory.

    Attributes:
        speaker, utt: where it goes (``main/<speaker>/<utt>``).
        words: the sentence, lowercase.
        frames: uint8 ``T×160×160×3`` BGR.
        audio_int16: int16 ``T*640`` samples, 16 kHz mono.
        boxes: int64 ``T×4`` face boxes.
        track: per-frame viseme ids and mouth parameters.
        word_times: (start, end) seconds of each word.
        voice: the espeak-ng voice used.
    """

    speaker: str
    utt: str
    words: tuple[str, ...]
    frames: np.ndarray
    audio_int16: np.ndarray
    boxes: np.ndarray
    track: visemes.MouthTrack
    word_times: list[tuple[float, float]]
    voice: speech.Voice


@dataclass(frozen=True)
class CorpusSummary:
    """What :func:`synthesize_corpus` did."""

    out_dir: Path
    n_clips: int
    seconds: float
    bytes_on_disk: int
    audio_seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.n_clips / max(self.seconds, 1e-9)


def voice_for(identity: int, rng: np.random.Generator) -> speech.Voice:
    """The identity's voice (fixed variant and base pitch) with this clip's rate and pitch jitter."""
    ident = render.make_identity(identity)
    variants = _FEMININE_VARIANTS if ident.feminine else _MASCULINE_VARIANTS
    base_pitch = 40 + (identity * 17) % 30           # fixed per identity, 40..69
    return speech.Voice(language="en-us", variant=variants[identity % len(variants)],
                        rate=int(rng.integers(130, 231)), pitch=int(np.clip(base_pitch + rng.integers(-8, 9), 0, 99)),
                        pitch_range=int(rng.integers(30, 81)))


def _word_times(utt: speech.Utterance, n_words: int, offset_s: float) -> list[tuple[float, float]]:
    """(start, end) of each word from espeak-ng's word events; ends at the next word or last phoneme."""
    starts = [w.start_s + offset_s for w in utt.words]
    if len(starts) != n_words:
        logger.debug("espeak-ng reported %d words for %d in %r; no word timings.", len(starts), n_words, utt.text)
        return []
    spoken = [p for p in utt.phonemes if not p.symbol.startswith("_")]
    last = (spoken[-1].end_s if spoken else utt.duration_s) + offset_s
    return [(s, starts[i + 1] if i + 1 < n_words else last) for i, s in enumerate(starts)]


def make_clip(spec: ClipSpec) -> SynthClip:
    """Generate one clip (speech, mouth track, frames) from its spec; deterministic."""
    if spec.split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, but got {spec.split!r}.")
    seq = np.random.SeedSequence([spec.seed, SPLITS[spec.split], spec.index])
    rng, noise_rng, audio_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    identity = int(rng.integers(spec.n_identities))
    words = grammar.sample_sentence(rng)
    voice = voice_for(identity, rng)
    utt = speech.synthesize(grammar.spoken_text(words), voice, seed=int(rng.integers(2**31)))

    # Silence before and after the sentence (the lips rest), then whole video frames of audio.
    lead = int(rng.uniform(0.2, 0.5) * speech.SAMPLE_RATE)
    tail = int(rng.uniform(0.2, 0.5) * speech.SAMPLE_RATE)
    n_frames = -(-(lead + len(utt.audio_int16) + tail) // SAMPLES_PER_FRAME)
    # A multiple of 8 frames is a multiple of AAC's 1024-sample frame (8 × 640 = 5 × 1024): the
    # decoded audio then has exactly T × 640 samples, with no encoder padding at the end.
    n_frames = -(-n_frames // AAC_ALIGN_FRAMES) * AAC_ALIGN_FRAMES
    audio = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float64)
    peak = max(int(np.abs(utt.audio_int16.astype(np.int32)).max()), 1)
    audio[lead:lead + len(utt.audio_int16)] = utt.audio_int16 * (10 ** (rng.uniform(-9, -2) / 20) * 32767 / peak)
    # A quiet noise floor (-75..-55 dBFS), as any microphone has; no digital silence.
    audio += audio_rng.normal(0, 32767 * 10 ** (rng.uniform(-75, -55) / 20), len(audio))
    audio_int16 = np.clip(np.round(audio), -32768, 32767).astype(np.int16)

    offset = lead / speech.SAMPLE_RATE
    track = visemes.mouth_track(visemes.segments(utt.phonemes, offset), n_frames, FPS)
    # Speakers articulate more or less: scale the jaw opening per clip.
    jaw = visemes.PARAMS.index("jaw")
    track.params[:, jaw] = np.clip(track.params[:, jaw] * rng.uniform(0.85, 1.15), 0, 1)
    style = render.random_style(rng)
    frames, boxes = render.render_frames(render.make_identity(identity), track.params, style, noise_rng, FPS)
    return SynthClip(speaker=f"spk{identity:02d}", utt=f"{spec.index:05d}", words=words, frames=frames,
                     audio_int16=audio_int16, boxes=boxes, track=track,
                     word_times=_word_times(utt, len(words), offset), voice=voice)


def transcript_text(clip: SynthClip) -> str:
    """The ``<utt>.txt`` content: LRS2's first line, then word timings (seconds) when known."""
    lines = [f"Text:  {grammar.transcript(clip.words)}", ""]
    if clip.word_times:
        lines.append("WORD START END")
        lines += [f"{w.upper()} {s:.2f} {e:.2f}" for w, (s, e) in zip(clip.words, clip.word_times)]
    return "\n".join(lines) + "\n"


def write_clip_files(clip: SynthClip, split_dir: Path, codec: str = "h264", crf: int | None = None) -> Path:
    """Write the clip's four files under ``split_dir/main/<spk>/``; returns the mp4 path.

    The sidecars come first and the video last (written atomically by :func:`talkbench.media.write_clip`),
    so an interrupted run never leaves a video without its transcript and boxes.
    """
    folder = split_dir / "main" / clip.speaker
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{clip.utt}.txt").write_text(transcript_text(clip), encoding="utf-8")
    np.save(folder / f"{clip.utt}.npy", clip.boxes)
    np.save(folder / f"{clip.utt}.visemes.npy", visemes.to_records(clip.track))
    video = folder / f"{clip.utt}.mp4"
    write_clip(video, clip.frames, clip.audio_int16, fps=FPS, codec=codec, crf=crf)
    return video


@dataclass(frozen=True)
class _Job:
    spec: ClipSpec
    split_dir: Path
    codec: str
    crf: int | None


def _run_job(job: _Job) -> tuple[str, str, float, int]:
    """Worker: make and write one clip; returns (split, "<spk>/<utt>", audio seconds, bytes)."""
    clip = make_clip(job.spec)
    mp4 = write_clip_files(clip, job.split_dir, job.codec, job.crf)
    size = sum(p.stat().st_size for p in mp4.parent.glob(f"{clip.utt}.*"))
    return job.spec.split, f"{clip.speaker}/{clip.utt}", len(clip.audio_int16) / speech.SAMPLE_RATE, size


def _worker_init() -> None:
    # Each worker is one of `workers` processes: keep OpenCV and BLAS from starting threads of their own.
    cv2.setNumThreads(1)


def synthesize_corpus(out_dir: Path | str, n_train: int, n_test: int, seed: int = 0, workers: int = 1, *,
                      n_identities: int = render.N_IDENTITIES, codec: str = "h264", crf: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> CorpusSummary:
    """Generate the corpus into ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: output folder (created; existing clips with the same names are overwritten).
        n_train, n_test: number of clips per split.
        seed: the corpus seed; the same seed gives identical frames and audio.
        workers: processes to use (1 = in this process).
        n_identities: how many faces/voices to draw from (see :mod:`talkbench.synthetic.render`).
        codec, crf: video encoding, passed to :func:`talkbench.media.write_clip`.
        progress: called as ``progress(done, total)`` after each clip.

    Raises:
        ValueError: a count is negative, workers < 1 or n_identities < 1.
        talkbench.synthetic.speech.EspeakError: espeak-ng is not installed (the message says how to install it).
    """
    for name, value, low in (("n_train", n_train, 0), ("n_test", n_test, 0), ("workers", workers, 1),
                             ("n_identities", n_identities, 1)):
        if int(value) < low:
            raise ValueError(f"`{name}` must be >= {low}, but got {value}.")
    out = Path(out_dir)
    speech.engine()  # fail early, with the install hint, if espeak-ng is missing
    jobs = [_Job(ClipSpec(split, i, int(seed), int(n_identities)), out / split, codec, crf)
            for split, n in (("train", n_train), ("test", n_test)) for i in range(int(n))]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[tuple[str, str, float, int]] = []
    total = len(jobs)
    if workers == 1 or total <= 1:
        _worker_init()
        for job in jobs:
            results.append(_run_job(job))
            if progress:
                progress(len(results), total)
    else:
        # spawn, not fork: the parent may hold threads (torch, espeak-ng) that fork would copy mid-state.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes=int(workers), initializer=_worker_init) as pool:
            for res in pool.imap_unordered(_run_job, jobs, chunksize=4):
                results.append(res)
                if progress:
                    progress(len(results), total)
    seconds = time.perf_counter() - started

    for split in SPLITS:
        names = sorted(name for s, name, _, _ in results if s == split)
        if names or (out / split).exists():
            (out / split).mkdir(parents=True, exist_ok=True)
            (out / split / "filelist.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "talkbench_version": __version__,
        "seed": int(seed), "n_train": int(n_train), "n_test": int(n_test), "n_identities": int(n_identities),
        "fps": FPS, "sample_rate": speech.SAMPLE_RATE, "frame_size": render.SIZE, "codec": codec, "crf": crf,
        "vocabulary": list(grammar.VOCABULARY), "visemes": [v.name for v in visemes.VISEMES],
        "mouth_params": list(visemes.PARAMS),
        "identities": [{"speaker": f"spk{i:02d}", "name": render.make_identity(i).name,
                        "licence": render.make_identity(i).licence} for i in range(n_identities)],
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    summary = CorpusSummary(out_dir=out, n_clips=total, seconds=seconds,
                            bytes_on_disk=sum(r[3] for r in results), audio_seconds=sum(r[2] for r in results))
    logger.info("Wrote %d clips to %s in %.1f s (%.2f clips/s, %.0f kB per clip).", total, out, seconds,
                summary.clips_per_second, summary.bytes_on_disk / max(total, 1) / 1024)
    return summary
