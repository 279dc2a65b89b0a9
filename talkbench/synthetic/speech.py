"""Speech with phoneme timings from espeak-ng, called through ctypes.

The library and its data come from the PyPI package ``espeakng-loader`` (no system install, no
subprocess). espeak-ng synthesises at 22 050 Hz and, with phoneme events switched on, reports every
phoneme it speaks with its start time in the audio; we resample the audio to 16 kHz mono int16 (the
sample format every talkbench reader expects) and turn the events into ``PhonemeEvent`` intervals.

espeak-ng keeps global state (one voice, one callback per process), so :class:`Espeak` is a
per-process singleton guarded by a lock; parallel corpus generation uses processes, not threads.
For reproducible audio every utterance is synthesised in a forked child of the initialised engine
(see :meth:`Espeak._synth_forked`) with espeak-ng's noise generator seeded explicitly.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.signal import resample_poly

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

INSTALL_HINT = ("espeak-ng is needed to synthesise the mini corpus; install the PyPI package that bundles it "
                "with `pip install espeakng-loader` (or `pip install 'talkbench[synth]'`).")

# espeak-ng's C constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7

#: Rates (words per minute) and pitches (0-100) espeak-ng accepts without distorting badly.
RATE_RANGE = (80, 450)
PITCH_RANGE = (0, 99)


_CHARS_UTF8 = 1  # espeakCHARS_UTF8 (espeak_TextToPhonemes' text encoding)


class EspeakError(RuntimeError):
    """espeak-ng is missing or refused a request; the message says what to do."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # espeak_EVENT from speak_lib.h; ctypes reproduces the C alignment (user_data at offset 24 on LP64).
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


# (event type, audio position in ms, text position, length, phoneme mnemonic)
_RawEvent = tuple[int, int, int, int, bytes]

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """One speaking style.

    Attributes:
        language: espeak-ng voice name, e.g. ``"en-us"``.
        variant: voice variant file under ``voices/!v`` (e.g. ``"f3"``, ``"m2"``) or None for the default.
        rate: speaking rate in words per minute.
        pitch: base pitch, 0-99 (espeak-ng's scale; 50 is the default).
        pitch_range: intonation range, 0-99 (50 default; 0 is monotone).
    """

    language: str = "en-us"
    variant: str | None = None
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50

    @property
    def espeak_name(self) -> str:
        return self.language if not self.variant else f"{self.language}+{self.variant}"


@dataclass(frozen=True)
class PhonemeEvent:
    """One phoneme of an utterance; times in seconds from the start of the audio.

    ``symbol`` is espeak-ng's mnemonic (``'E``, ``u:``, ``aI``, ``tS``, ``_:`` for a pause ...), with
    stress marks kept as espeak-ng reports them.
    """

    symbol: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class WordEvent:
    """One spoken word: start time in seconds and its character span in the synthesised text."""

    start_s: float
    text_position: int
    length: int


@dataclass
class Utterance:
    """A synthesised sentence.

    Attributes:
        text: the text given to espeak-ng.
        audio_int16: int16 ``N`` mono samples at 16 kHz.
        phonemes: the phonemes in time order, contiguous intervals covering ``[first start, N/16000]``.
        words: word onsets in time order.
    """

    text: str
    audio_int16: np.ndarray
    phonemes: tuple[PhonemeEvent, ...]
    words: tuple[WordEvent, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return len(self.audio_int16) / SAMPLE_RATE


def strip_stress(symbol: str) -> str:
    """espeak-ng mnemonic without stress/length marks that do not change the mouth: ``'E`` -> ``E``."""
    return symbol.lstrip("',=%")


class _Phonemiser:
    """A child process forked once, answering requests with ``work(request) -> bytes`` over two pipes.

    Forked from the process's espeak-ng state; whatever ``work`` changes there stays in the child. It ends when
    this process closes the request pipe (at exit); a process forked from this one starts its own
    (:attr:`pid_of_parent`), so two processes never share one child.
    """

    def __init__(self, work: Callable[[bytes], bytes]) -> None:
        request_r, request_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: serve until the parent closes the pipe, leave without any Python cleanup
            # never collect objects inherited from the parent: a PyAV frame freed here waited forever for FFmpeg
            # slice threads that exist only in the parent (seen: the phonemiser hung in sws_freeContext)
            gc.disable()
            try:
                os.close(request_w)
                os.close(result_r)
                with os.fdopen(request_r, "rb") as requests, os.fdopen(result_w, "wb") as results:
                    while len(head := requests.read(8)) == 8:
                        body = requests.read(struct.unpack("<Q", head)[0])
                        try:
                            status, out = 0, work(body)
                        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
                            status, out = 1, str(exc).encode("utf-8", "replace")
                        results.write(struct.pack("<BQ", status, len(out)) + out)
                        results.flush()
            finally:
                os._exit(0)
        os.close(request_r)
        os.close(result_w)
        self.pid = pid
        self.pid_of_parent = os.getpid()
        self._requests = os.fdopen(request_w, "wb")
        self._results = os.fdopen(result_r, "rb")

    def ask(self, request: bytes) -> bytes:
        """Send one request and wait for its answer.

        Raises:
            EspeakError: ``work`` raised in the child (its message), or the child is gone.
        """
        try:
            self._requests.write(struct.pack("<Q", len(request)) + request)
            self._requests.flush()
            head = self._results.read(9)
        except OSError as exc:
            raise EspeakError(f"The espeak-ng phonemiser process is gone ({exc}).") from exc
        if len(head) < 9:
            raise EspeakError("The espeak-ng phonemiser process died.")
        status, size = struct.unpack("<BQ", head)
        body = self._results.read(size)
        if status:
            raise EspeakError(body.decode("utf-8", "replace"))
        return body


class Espeak:
    """The process-wide espeak-ng instance. Use :func:`engine` to get it."""

    def __init__(self) -> None:
        try:
            import espeakng_loader  # lazy: optional extra (talkbench[synth]), needed only to speak
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise EspeakError(INSTALL_HINT) from exc
        try:
            self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as exc:  # pragma: no cover - broken install
            raise EspeakError(f"Cannot load espeak-ng from espeakng-loader ({exc}). {INSTALL_HINT}") from exc
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_ng_SetRandSeed.restype = None
        self._lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                           _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}) with data in {data_path}. {INSTALL_HINT}")
        self.native_rate = int(rate)
        self.data_path = Path(data_path)
        self._lock = threading.Lock()
        self._phonemiser: _Phonemiser | None = None
        self._warned_state = False
        self._chunks: list[np.ndarray] = []
        self._events: list[_RawEvent] = []
        # ctypes frees a callback object that Python no longer references; keep it on the instance.
        self._callback = _SynthCallback(self._on_synth)
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while True:
            ev = events[i]
            if ev.type == _EVENT_LIST_TERMINATED:
                break
            if ev.type in (_EVENT_PHONEME, _EVENT_WORD):
                self._events.append((ev.type, ev.audio_position, ev.text_position, ev.length,
                                     bytes(ev.id.string).split(b"\0", 1)[0]))
            i += 1
        return 0  # 0 = continue synthesis

    def _set_voice(self, voice: Voice) -> None:
        if self._lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice `{voice.espeak_name}`; use a language such as `en-us` "
                             f"and a variant from espeak-ng-data/voices/!v (e.g. `f3`, `m2`).")
        self._lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, int(voice.pitch_range), 0)
        self._lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)

    def _synth_here(self, data: bytes, voice: Voice, seed: int) -> tuple[np.ndarray, list[_RawEvent]]:
        """Synthesise in this process: native-rate samples and the raw phoneme/word events."""
        self._set_voice(voice)
        # Breath noise and similar use espeak-ng's own generator, seeded from the clock unless set.
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks, self._events = [], []
        buf = ctypes.create_string_buffer(data)
        status = self._lib.espeak_Synth(buf, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        chunks, events = self._chunks, self._events
        self._chunks, self._events = [], []
        if status != 0:
            raise EspeakError(f"espeak_Synth failed with status {status} on {data!r}.")
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), events

    def _synth_forked(self, data: bytes, voice: Voice, seed: int) -> tuple[np.ndarray, list[_RawEvent]]:
        """Synthesise in a forked child, from the state espeak-ng had right after initialisation.

        espeak-ng keeps synthesis state across utterances in C statics that no API resets (pitch
        flutter index, harmonic-spectrum double buffer, wave phase), so the same text comes out a few
        samples different depending on what was spoken before. The parent never synthesises; each
        child starts from the same pristine state, so the audio depends on (text, voice, seed) only.
        """
        def work() -> bytes:
            audio, events = self._synth_here(data, voice, seed)
            meta = json.dumps([[t, a, tp, n, sym.decode("latin-1")] for t, a, tp, n, sym in events]).encode()
            return b"".join([struct.pack("<QQ", audio.nbytes, len(meta)), audio.tobytes(), meta])

        payload = self._forked(work, repr(data))
        if len(payload) < 16:
            raise EspeakError(f"The espeak-ng child process sent no result on {data!r}.")
        n_audio, n_meta = struct.unpack("<QQ", payload[:16])
        audio = np.frombuffer(payload[16:16 + n_audio], np.int16).copy()
        events = [(t, a, tp, n, sym.encode("latin-1"))
                  for t, a, tp, n, sym in json.loads(payload[16 + n_audio:16 + n_audio + n_meta])]
        return audio, events

    @staticmethod
    def _forked(work: Callable[[], bytes], what: str) -> bytes:
        """``work()`` run in a forked child (so that espeak-ng's state in this process stays as initialised);
        returns its bytes. A ValueError in the child is raised here as ValueError, anything else as EspeakError."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: do the work, send the result, leave without running any Python cleanup
            gc.disable()  # as in _Phonemiser: inherited objects are never freed here
            code = 0
            try:
                os.close(read_fd)
                payload = work()
            except ValueError as exc:  # e.g. a bad voice: the parent raises it as ValueError again
                code, payload = 2, str(exc).encode("utf-8", "replace")
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
                code, payload = 1, repr(exc).encode("utf-8", "replace")
            try:
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(payload)
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2:
            raise ValueError(payload.decode("utf-8", "replace"))
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1:
            raise EspeakError(f"espeak-ng failed on {what}: {payload.decode('utf-8', 'replace')}")
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise EspeakError(f"The espeak-ng child process died (status {status}) on {what}.")
        return payload

    def synthesize(self, text: str, voice: Voice = Voice(), seed: int = 0) -> Utterance:
        """Speak ``text`` with ``voice``; returns 16 kHz audio with phoneme and word timings.

        ``seed`` seeds espeak-ng's noise generator (breathy voices). Where the OS can fork (Linux,
        macOS) the result depends on ``text``, ``voice`` and ``seed`` only; elsewhere it also depends,
        by a few samples, on what this process synthesised before (see _synth_forked).
        """
        if not text.strip():
            raise ValueError("Cannot synthesise an empty text.")
        self._check_voice(voice)
        data = text.encode("utf-8")
        with self._lock:
            if hasattr(os, "fork"):
                native, events = self._synth_forked(data, voice, int(seed))
            else:  # pragma: no cover - Windows
                if not self._warned_state:
                    logger.warning("No fork() on this OS: espeak-ng output depends on earlier utterances, so "
                                   "corpora are reproducible only with the same --workers.")
                    self._warned_state = True
                native, events = self._synth_here(data, voice, int(seed))
        return _to_utterance(text, native, self.native_rate, events)

    def text_to_phonemes(self, text: str, voice_name: str, separator: str = "|") -> str:
        """espeak-ng's phoneme mnemonics of ``text`` (``espeak_TextToPhonemes``): words separated by spaces,
        phonemes within a word by ``separator``, stress marks kept.

        ``espeak_TextToPhonemes`` changes C state that later syntheses inherit (measured: the corpus' word events
        vanished after it ran in this process), so where the OS can fork it runs in one long-lived child forked
        from this process (:class:`_Phonemiser`; a fork per text would cost tens of ms in a large process).

        Raises:
            EspeakError: espeak-ng has no voice ``voice_name``, or the child died.
        """
        request = json.dumps([text, voice_name, separator]).encode("utf-8")
        with self._lock:
            if not hasattr(os, "fork"):  # pragma: no cover - Windows: in this process
                return self._phonemes_here(request).decode("utf-8", "replace")
            if self._phonemiser is None or self._phonemiser.pid_of_parent != os.getpid():
                self._phonemiser = _Phonemiser(self._phonemes_here)
            return self._phonemiser.ask(request).decode("utf-8", "replace")

    def _phonemes_here(self, request: bytes) -> bytes:
        """``text_to_phonemes`` in this process; ``request`` = JSON ``[text, voice name, separator]``."""
        text, voice_name, separator = json.loads(request)
        lib = self._lib
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        if lib.espeak_SetVoiceByName(voice_name.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice_name!r}; reinstall espeakng-loader. {INSTALL_HINT}")
        data = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(data))
        clauses: list[bytes] = []
        while pointer.value:
            clauses.append(lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, ord(separator) << 8) or b"")
        return b" ".join(clauses)

    def _check_voice(self, voice: Voice) -> None:
        """Refuse a voice espeak-ng would not honour (it silently ignores an unknown variant)."""
        if voice.variant and not (self.data_path / "voices" / "!v" / voice.variant).is_file():
            raise ValueError(f"espeak-ng has no voice variant `{voice.variant}`; choose one of the files in "
                             f"{self.data_path / 'voices' / '!v'} (e.g. `f3`, `m2`).")
        for name, value, (lo, hi) in (("rate", voice.rate, RATE_RANGE), ("pitch", voice.pitch, PITCH_RANGE),
                                      ("pitch_range", voice.pitch_range, PITCH_RANGE)):
            if not lo <= value <= hi:
                raise ValueError(f"Voice {name} must be in [{lo}, {hi}], but got {value}.")


def _resample_int16(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    g = gcd(rate_in, rate_out)
    y = resample_poly(samples.astype(np.float64), rate_out // g, rate_in // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def _to_utterance(text: str, native: np.ndarray, native_rate: int,
                  events: list[_RawEvent]) -> Utterance:
    audio = _resample_int16(native, native_rate, SAMPLE_RATE)
    duration = len(audio) / SAMPLE_RATE
    phon = [(pos / 1000.0, sym.decode("ascii", "replace")) for typ, pos, _, _, sym in events
            if typ == _EVENT_PHONEME and sym]
    phonemes = []
    for k, (start, sym) in enumerate(phon):
        # A phoneme lasts until the next one starts; the last one until the audio ends.
        end = phon[k + 1][0] if k + 1 < len(phon) else max(duration, start)
        phonemes.append(PhonemeEvent(sym, min(start, duration), min(max(end, start), duration)))
    words = tuple(WordEvent(pos / 1000.0, tp, ln) for typ, pos, tp, ln, _ in events if typ == _EVENT_WORD)
    return Utterance(text=text, audio_int16=audio, phonemes=tuple(phonemes), words=words)


_ENGINE: Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> Espeak:
    """The process's espeak-ng instance, initialised on first use.

    Raises:
        EspeakError: espeak-ng (PyPI ``espeakng-loader``) is not installed; the message says how to install it.
    """
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Espeak()
        return _ENGINE


def synthesize(text: str, voice: Voice = Voice(), seed: int = 0) -> Utterance:
    """Speak ``text`` with ``voice`` (see :meth:`Espeak.synthesize`)."""
    return engine().synthesize(text, voice, seed)
