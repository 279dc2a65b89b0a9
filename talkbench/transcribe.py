"""``talkbench transcribe``: transcripts from the driving audio with Whisper, for folder suites without text.

Dubbing with another speaker's or a TTS voice has no human transcript; lip-reading metrics (WER, VER) then need
one from the audio that drove the generator. This module writes a folder suite's ``transcripts.csv``
(:data:`talkbench.suites.TRANSCRIPTS_CSV`, columns ``path,text``) from each clip's own audio track, or from a
separate folder of driving audio (``--audio-dir``: ``<clip id>.wav`` / ``.flac`` / ``.mp3`` / any video, at the
clip's relative path), and beside it its provenance, ``transcripts.json``
(:data:`talkbench.suites.TRANSCRIPTS_PROVENANCE`): the Whisper card, the checkpoint's full sha256, the
``openai-whisper`` version and the decoding settings. A run that reads these transcripts records them and its
summary row says ``transcripts = asr:whisper-<model>`` (instead of ``human``); the leaderboard never ranks such
rows with rows scored against human transcripts.

Whisper (Radford et al., "Robust Speech Recognition via Large-Scale Weak Supervision", 2022; ``openai/whisper``,
code and weights MIT) comes from the optional extra ``asr`` (``pip install 'talkbench[asr]'``, PyPI
``openai-whisper``). Its checkpoints are cards ``whisper-<model>`` (``cards/whisper-*.toml``: the official URLs,
whose path holds the file's sha256) and are opened with talkbench's restricted unpickler, never ``torch.load``
of Whisper's own loader: ``{"dims": {...}, "model_state_dict": {...}}`` -> ``whisper.model.Whisper(ModelDimensions
(**dims))``, strict ``load_state_dict``.

Decoding (:class:`DecodingSettings`): ``whisper.transcribe`` with temperature 0 only (greedy, deterministic: no
fallback to sampling at higher temperatures, which Whisper's own CLI does), language ``en`` (the ``.en`` models
know no other), Whisper's default thresholds and conditioning on the previous window's text; fp16 on CUDA
(Whisper's default there), fp32 on CPU. The text is normalised with :func:`talkbench.metrics.text.normalize_text`
``letters`` (lowercase, punctuation removed, in-word apostrophes kept): the protocols compare words as written
("Hello, world." would otherwise cost two word errors against a lip reader's "hello world"). Digits stay as
Whisper writes them ("2"), where LRS2/LRS3 transcripts spell numbers out.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from talkbench import __version__, cards, media, suites
from talkbench import weights as weights_mod
from talkbench.devices import resolve_device
from talkbench.metrics.text import normalize_text
from talkbench.nets.checkpoint_keys import CheckpointError, require_matching_keys
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

#: Card name prefix: ``--model small.en`` is card ``whisper-small.en``.
CARD_PREFIX = "whisper-"
DEFAULT_MODEL = "small.en"
INSTALL_HINT = "Whisper is an optional extra: `pip install 'talkbench[asr]'` (PyPI openai-whisper)."
#: Audio files looked up in ``--audio-dir`` for a clip id, in this order (then the video extensions).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_vocab", "n_text_ctx",
         "n_text_state", "n_text_head", "n_text_layer")


@dataclass(frozen=True)
class DecodingSettings:
    """How Whisper decodes (recorded in the provenance).

    Attributes:
        temperature: 0 = greedy decoding, deterministic (no temperature fallback).
        language: spoken language (``en``; None lets a multilingual model detect it).
        condition_on_previous_text: Whisper's default: the previous 30-s window's text prompts the next one.
        normalisation: :data:`talkbench.metrics.text.NORMALISATIONS` rule applied to Whisper's text.
    """

    temperature: float = 0.0
    language: str | None = "en"
    condition_on_previous_text: bool = True
    normalisation: str = "letters"


@dataclass
class TranscriptsResult:
    """What :func:`transcribe_folder` wrote.

    Attributes:
        csv_path: the ``transcripts.csv``; provenance_path: its ``transcripts.json``.
        texts: relative clip path -> normalised text ("" for a clip that failed).
        failed: relative clip path -> why it has no text.
    """

    csv_path: Path
    provenance_path: Path
    texts: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def whisper_models() -> list[str]:
    """The ``--model`` names that have a card (``cards/whisper-<name>.toml``), sorted."""
    return sorted(c.name[len(CARD_PREFIX):] for c in cards.list_cards() if c.name.startswith(CARD_PREFIX))


def card_name(model: str) -> str:
    """Card of a ``--model`` name (``small.en`` -> ``whisper-small.en``).

    Raises:
        ValueError: no such Whisper card (the message lists them).
    """
    name = model if model.startswith(CARD_PREFIX) else CARD_PREFIX + model
    known = whisper_models()
    if name[len(CARD_PREFIX):] not in known:
        raise ValueError(f"--model must be one of {', '.join(known)}, got {model!r}.")
    return name


def _whisper() -> Any:
    try:
        import whisper  # lazy: optional extra `asr`
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return whisper


def load_whisper(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A Whisper model from an official checkpoint file, opened with the restricted unpickler.

    The file holds ``{"dims": {n_mels, n_audio_ctx, ...: int}, "model_state_dict": {name: tensor}}`` (fp16 in the
    released files; loaded into the fp32 parameters). Strict: every key and shape must match the model the dims
    describe.

    Raises:
        CheckpointError: not a Whisper checkpoint (the message names the file and what is wrong).
        ImportError: ``openai-whisper`` is not installed.
    """
    whisper = _whisper()
    fix = "Pass an official Whisper checkpoint (e.g. small.en.pt) with --weights whisper-<model>=PATH."
    checkpoint = load_checkpoint(path, map_location="cpu")
    if not isinstance(checkpoint, Mapping) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        keys = list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a Whisper checkpoint: expected keys `dims` and `model_state_dict`, got "
                              f"{keys}. {fix}")
    dims = checkpoint["dims"]
    if not isinstance(dims, Mapping) or sorted(dims) != sorted(_DIMS) or not all(
            isinstance(dims[k], int) and 0 < dims[k] < 10_000_000 for k in _DIMS):
        raise CheckpointError(f"{path}: not a Whisper checkpoint: `dims` must hold the positive integers "
                              f"{', '.join(_DIMS)}, got {dims!r}. {fix}")
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**{k: int(dims[k]) for k in _DIMS}))
    state = checkpoint["model_state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a Whisper checkpoint: `model_state_dict` is a {type(state).__name__}. "
                              f"{fix}")
    require_matching_keys(model.state_dict(), state, path, "a Whisper checkpoint", fix)
    model.load_state_dict(dict(state), strict=True)
    return model.to(resolve_device(device) if isinstance(device, str) else device).eval()


def transcribe_audio(model: torch.nn.Module, audio_int16: np.ndarray,
                     settings: DecodingSettings = DecodingSettings()) -> str:
    """Whisper's text of 16 kHz mono int16 audio ``N``, normalised as ``settings.normalisation`` says."""
    whisper = _whisper()
    audio = audio_int16.astype(np.float32) / 32768.0  # as whisper.audio.load_audio scales ffmpeg's s16le
    fp16 = next(model.parameters()).device.type == "cuda"
    with torch.no_grad():
        result = whisper.transcribe(model, audio, verbose=None, temperature=settings.temperature,
                                    language=settings.language,
                                    condition_on_previous_text=settings.condition_on_previous_text, fp16=fp16)
    return normalize_text(str(result.get("text", "")), settings.normalisation)


def audio_path(clip: Path, clip_id: str, audio_dir: Path | None) -> Path:
    """Where a clip's driving audio is: the clip itself, or ``<audio_dir>/<clip id><ext>``.

    Raises:
        FileNotFoundError: ``audio_dir`` holds no file for the clip (the message lists what was tried).
    """
    if audio_dir is None:
        return clip
    for ext in AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS:
        candidate = audio_dir / f"{clip_id}{ext}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{audio_dir}: no driving audio for clip {clip_id!r} (looked for {clip_id}.wav, .flac, "
                            f".mp3, … and video files); put it at the clip's relative path.")


def provenance_path(csv_path: Path) -> Path:
    """The provenance file of a transcripts table: ``transcripts.csv`` -> ``transcripts.json``."""
    return csv_path.with_suffix(".json")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def transcribe_folder(folder: str | Path, out: str | Path | None = None, audio_dir: str | Path | None = None,
                      model: str = DEFAULT_MODEL, weights: Mapping[str, Path] | None = None, device: str = "cpu",
                      settings: DecodingSettings = DecodingSettings(),
                      progress: Callable[[int, int], Any] | None = None) -> TranscriptsResult:
    """Write ``transcripts.csv`` (``path,text``) and ``transcripts.json`` (provenance) for a folder of clips.

    Args:
        folder: the folder suite (every video under it, :func:`talkbench.suites.find_videos`).
        out: the table to write (default ``<folder>/transcripts.csv``, what the folder suite reads); the
            provenance goes beside it with the suffix ``.json``.
        audio_dir: folder of driving audio at the clips' relative paths; None = each clip's own audio.
        model: Whisper model name (card ``whisper-<model>``, e.g. ``small.en``).
        weights: ``--weights`` overrides (card -> local file).
        device: torch device.
        settings: decoding settings.
        progress: called as ``progress(done, total)`` after each clip.
    Returns:
        what was written; a clip whose audio cannot be read gets an empty text (its WER becomes an error row
        at evaluation) and is listed in ``failed`` (and in the provenance).
    Raises:
        ValueError: no folder / no clips / unknown model / a bad --audio-dir.
        ImportError: ``openai-whisper`` is not installed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder not found.")
    audio_root = Path(audio_dir) if audio_dir is not None else None
    if audio_root is not None and not audio_root.is_dir():
        raise ValueError(f"{audio_root}: --audio-dir folder not found.")
    csv_path = Path(out) if out is not None else folder / suites.TRANSCRIPTS_CSV
    if csv_path.suffix.lower() != ".csv":
        raise ValueError(f"--out {csv_path}: give a .csv file (its provenance is written beside it as .json).")
    clips = suites.find_videos(folder)
    if not clips:
        raise ValueError(f"{folder}: no video clips found.")
    card = card_name(model)
    _whisper()  # fail before downloading a checkpoint when the extra is missing
    path, _ = weights_mod.resolve_with_sha(card, weights or {})
    sha = weights_mod.file_sha256(path)
    net = load_whisper(path, device)
    result = TranscriptsResult(csv_path, provenance_path(csv_path))
    for i, (clip_id, clip) in enumerate(sorted(clips.items())):
        rel = clip.relative_to(folder).as_posix() if clip.is_relative_to(folder) else f"{clip_id}{clip.suffix}"
        try:
            source = audio_path(clip, clip_id, audio_root)
            result.texts[rel] = transcribe_audio(net, media.read_wav_int16(source), settings)
        except (OSError, media.MediaError, ValueError) as err:
            logger.warning("%s: no transcript (%s)", rel, err)
            result.texts[rel], result.failed[rel] = "", str(err)
        if progress is not None:
            progress(i + 1, len(clips))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "text"])
    writer.writerows(sorted(result.texts.items()))
    table = buffer.getvalue()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(csv_path, table)
    whisper = _whisper()
    provenance = {
        "format": suites.TRANSCRIPTS_FORMAT,
        "source": "asr",
        "model": card,
        "sha256": sha,
        "weights_file": str(Path(path).resolve()),
        "asr_package": f"openai-whisper {getattr(whisper, '__version__', '?')}",
        "decoding": dataclasses.asdict(settings) | {"fp16": next(net.parameters()).device.type == "cuda",
                                                    "device": str(next(net.parameters()).device)},
        "audio": str(audio_root.resolve()) if audio_root is not None else "each clip's own audio track",
        "csv_sha256": suites.sha256_text(table),
        "failed": result.failed,
        "talkbench_version": __version__,
    }
    _atomic_write(result.provenance_path, json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    logger.info("%s: %d transcript(s) with %s (%d failed); provenance in %s", csv_path, len(result.texts), card,
                len(result.failed), result.provenance_path)
    return result


__all__ = ["AUDIO_EXTENSIONS", "CARD_PREFIX", "DEFAULT_MODEL", "DecodingSettings", "TranscriptsResult", "audio_path",
           "card_name", "load_whisper", "provenance_path", "transcribe_audio", "transcribe_folder", "whisper_models"]
