"""Protocols: one frozen object per published table — which observer measures each metric, and how.

A protocol names the exact preprocessing and aggregation of a table: the observer of each metric, option
defaults (e.g. the JPEG round trip of the LSE frames under ``talklip2023``), the lip readers' crop recipe,
the text normalisation of the transcripts, the default metric set and the citation. Nothing else in
talkbench branches on a protocol's name: it asks the :class:`Protocol` object. The summary row records the
protocol and the options that change numbers and differ from the protocol's defaults (:func:`options_label`),
and the leaderboard never ranks rows whose protocol or options differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from talkbench.observers import (METRICS, SPECS, Observer, ObserverContext, ObserverSpec, build, check_compatible,
                                 parse_options)
from talkbench.media import VideoHeader

#: Long side (pixels) above which a clip counts as a full frame rather than a face-centred crop, for protocols
#: that expect face-centred clips of no fixed size (LRS2 is 160, LRS3 224, the shared sample clips <= 256).
FULL_FRAME_SIDE = 320
#: The marker file the synthetic corpus generator writes at the corpus root (:mod:`talkbench.synthetic.corpus`).
CORPUS_MARKER = "corpus.json"
_CORPUS_FORMAT = "talkbench-mini-corpus"


@dataclass(frozen=True)
class Expects:
    """What a protocol's numbers assume about each clip (checked per clip by :meth:`flags`, before decoding).

    Attributes:
        summary: one line for the docs and the warnings.
        frame_size: ``(height, width)`` the protocol's clips have (None: any).
        fps: the protocol's clips' frame rate (None: any; other rates are converted, ``ffmpeg -r 25``).
        face_centred: the crops assume face-centred clips (LRS2-style). A clip that is not one (another frame size
            than ``frame_size``, or, without ``frame_size``, a long side over :data:`FULL_FRAME_SIDE`) is routed
            through its face track (:mod:`talkbench.tracks`): every frame is replaced by the face-centred
            ``route_size`` square of the track (from the suite's boxes when given, else detected), as
            ``talkbench prepare`` would cut it, and flagged ``face-track``.
        route_size: side of the face-centred squares of routed clips (LRS2: 160).
        synthetic_corpus: the observers were trained on talkbench's synthetic corpus; a clip whose generated and
            reference files lie under no corpus root (:data:`CORPUS_MARKER`) is flagged ``not-synthetic``.
        by_suite: suite layout -> what is expected of that layout's clips instead (:meth:`for_suite`).
    """

    summary: str = "any clip"
    frame_size: tuple[int, int] | None = None
    fps: float | None = None
    face_centred: bool = False
    route_size: int = 160
    synthetic_corpus: bool = False
    by_suite: tuple[tuple[str, "Expects"], ...] = ()

    def for_suite(self, kind: str) -> "Expects":
        """What the protocol expects of a suite of layout ``kind`` (e.g. ``lrw``: LRW's 256×256 clips, which MVM
        reads whole); itself when the protocol says nothing particular about that layout."""
        return dict(self.by_suite).get(kind, self)

    def routes(self, header: VideoHeader) -> bool:
        """True when a clip with this header must be cut around its face track before it is measured."""
        if not self.face_centred:
            return False
        if self.frame_size is not None:
            return (header.height, header.width) != tuple(self.frame_size)
        return max(header.height, header.width) > FULL_FRAME_SIDE

    def flags(self, header: VideoHeader, paths: Iterable[Path | None] = ()) -> list[str]:
        """The ways a clip does not fit (``[]`` when it does): ``frame-size=WxH``, ``fps=R``, ``face-track``
        (routed, see :attr:`face_centred`), ``not-synthetic``.

        Args:
            header: the generated clip's header (:func:`talkbench.media.probe_video`).
            paths: the clip's files (generated, reference), searched upwards for the corpus marker.
        """
        out = []
        if self.frame_size is not None and (header.height, header.width) != tuple(self.frame_size):
            out.append(f"frame-size={header.width}x{header.height}")
        if self.fps is not None and abs(header.source_fps - self.fps) > 0.01:
            out.append(f"fps={header.source_fps:g}")
        if self.routes(header):
            out.append("face-track")
        if self.synthetic_corpus and not any(in_synthetic_corpus(p) for p in paths if p is not None):
            out.append("not-synthetic")
        return out


def in_synthetic_corpus(path: Path, levels: int = 6) -> bool:
    """True when a folder above ``path`` (up to ``levels``) holds the synthetic corpus' marker file."""
    for folder in list(Path(path).resolve().parents)[:levels]:
        marker = folder / CORPUS_MARKER
        if marker.is_file():
            try:
                return json.loads(marker.read_text(encoding="utf-8")).get("format") == _CORPUS_FORMAT
            except (OSError, ValueError, AttributeError):
                return False
    return False


@dataclass(frozen=True)
class Protocol:
    """One protocol.

    Attributes:
        name: e.g. ``"talklip2023"``.
        title: one line.
        citation: the paper or code whose table it reproduces.
        observers: metric column -> observer name (:data:`talkbench.observers.SPECS`).
        option_defaults: observer options set by the protocol (over each option's own default).
        mouth_roi: the lip readers' crop recipe: ``centre88`` (gray centre 88×88 of the whole frame) or
            ``landmark-aligned`` (dlib landmarks, mean-face warp, 96×96 mouth patch, centre 88).
        text_normalisation: how transcripts are normalised for WER1 (:data:`talkbench.metrics.text.NORMALISATIONS`).
        default_metrics: the metrics of ``evaluate`` without ``--metrics``.
        expects: what the protocol assumes about each clip (:class:`Expects`; checked and flagged per clip).
    """

    name: str
    title: str
    citation: str
    observers: Mapping[str, str]
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    mouth_roi: str = "centre88"
    text_normalisation: str = "lower"
    default_metrics: tuple[str, ...] = ("psnr", "psnr_talklip_compat", "ssim")
    expects: Expects = field(default_factory=Expects)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this protocol has, in summary order."""
        return tuple(self.observers)

    def check_metrics(self, metrics: Iterable[str]) -> tuple[str, ...]:
        """``metrics`` if this protocol has all of them.

        Raises:
            ValueError: none given, or one the protocol does not have (the message lists the ones it has).
        """
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"--metrics must name some of {', '.join(self.metrics)} (protocol {self.name}); got "
                             f"{', '.join(unknown) or 'none'}.")
        missing = [m for m in metrics if m not in self.observers]
        if missing:
            raise ValueError(f"--protocol {self.name} has no {', '.join(missing)}; its metrics are "
                             f"{', '.join(self.metrics)}.")
        return metrics

    def observer_specs(self, metrics: Iterable[str]) -> list[ObserverSpec]:
        """The observers needed for ``metrics``, each once, in the order the metrics are first named."""
        specs: list[ObserverSpec] = []
        for metric in self.check_metrics(metrics):
            spec = SPECS[self.observers[metric]]
            if spec not in specs:
                specs.append(spec)
        return specs

    def options(self, metrics: Iterable[str], given: Mapping[str, Any]) -> dict[str, Any]:
        """The typed options of the observers of ``metrics``: ``given``, else the protocol's, else the default."""
        return parse_options(self.observer_specs(metrics), given, self.option_defaults)

    def context(self, metrics: Iterable[str], device: str = "cpu", weights: Mapping[str, Any] | None = None,
                options: Mapping[str, Any] | None = None) -> ObserverContext:
        """The :class:`ObserverContext` that builds this protocol's observers for ``metrics``."""
        return ObserverContext(device=device, protocol=self.name, weights=dict(weights or {}),
                               options=self.options(metrics, options or {}), mouth_roi=self.mouth_roi,
                               text_normalisation=self.text_normalisation)


_IMAGE = {"psnr": "image_quality", "psnr_talklip_compat": "image_quality", "ssim": "image_quality"}
_OFFICIAL = {**_IMAGE, "lse_c": "syncnet", "lse_d": "syncnet", "av_offset": "syncnet", "wer1": "avhubert",
             "cer1": "avhubert", "wer2": "conformer", "wer2_corpus": "conformer", "cer2": "conformer",
             "cer2_corpus": "conformer", "ver2": "conformer", "ver": "avhubert",
             "acc": "mvm", "acc_top5": "mvm", "fd_colour": "colour_stats",
             "fid": "fid", "fvd": "fvd",
             "lpips": "lpips", "csim": "identity", "lmd": "landmark_distance",
             # intelligibility (#18): Auto-AVSR always uses landmark-aligned mouth ROIs, whatever mouth_roi says
             "wer_avsr": "avsr", "cer_avsr": "avsr", "ver_avsr": "avsr", "lipscore": "lipscore"}

#: LRW's test clips (MVM's ACC reads them whole, with its fixed crop box), under either official protocol.
_LRW = Expects(summary="LRW test clips: 256×256 face-centred, 25 fps", frame_size=(256, 256), fps=25.0)

TALKLIP2023 = Protocol(
    name="talklip2023", title="TalkLip paper, Table 1: the paper's preprocessing",
    citation="Wang et al., Seeing What You Said: Talking Face Generation Guided by a Lip Reading Expert, CVPR 2023",
    observers=_OFFICIAL, option_defaults={"lse_jpeg_compat": True}, mouth_roi="centre88",
    expects=Expects(summary="LRS2 test clips: 160×160 face-centred, 25 fps", frame_size=(160, 160), fps=25.0,
                    face_centred=True, route_size=160, by_suite=(("lrw", _LRW),)))
AVHUBERT_OFFICIAL = Protocol(
    name="avhubert-official", title="AV-HuBERT's own preparation: landmark-aligned mouth ROIs",
    citation="Shi et al., Learning Audio-Visual Speech Representation by Masked Multimodal Cluster Prediction, "
             "ICLR 2022 (av_hubert preparation/align_mouth.py)",
    observers=_OFFICIAL, mouth_roi="landmark-aligned",
    expects=Expects(summary="face-centred clips of any size (LRS3: 224×224), 25 fps", fps=25.0, face_centred=True,
                    route_size=160, by_suite=(("lrw", _LRW),)))
MINI = Protocol(
    name="mini", title="talkbench's mini observers on its synthetic corpus (offline, CPU)",
    citation="talkbench mini observers (cards mini-lipreader-b, mini-syncnet)",
    observers={**_IMAGE, "lse_c": "mini-syncnet", "lse_d": "mini-syncnet", "av_offset": "mini-syncnet",
               "wer1": "mini-lipreader", "cer1": "mini-lipreader", "ver": "mini-lipreader",
               "fd_colour": "colour_stats"},
    mouth_roi="centre88",
    default_metrics=("wer1", "cer1", "ver", "lse_c", "lse_d", "av_offset", "psnr", "psnr_talklip_compat", "ssim"),
    expects=Expects(summary="the synthetic corpus' renders: 160×160, 25 fps, under a corpus root",
                    frame_size=(160, 160), fps=25.0, synthetic_corpus=True))

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (TALKLIP2023, AVHUBERT_OFFICIAL, MINI)}


def get(name: str) -> Protocol:
    """The protocol called ``name``.

    Raises:
        ValueError: unknown name (the message lists the protocols).
    """
    if name not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}.")
    return PROTOCOLS[name]


def build_observers(metrics: Iterable[str], ctx: ObserverContext) -> list[Observer]:
    """Build each observer needed for ``metrics`` under ``ctx.protocol`` once, in the order the metrics are named.

    ``ctx.options`` may be partial (missing options take the protocol's and the options' defaults).

    Raises:
        ValueError: unknown protocol, a metric it does not have, or a bad option.
    """
    protocol = get(ctx.protocol)
    specs = protocol.observer_specs(metrics)
    check_compatible(specs)
    full = protocol.context(metrics, ctx.device, ctx.weights, ctx.options)
    return [build(spec, full) for spec in specs]


def options_label(protocol: Protocol, options: Mapping[str, Any]) -> str:
    """The options of a run that change numbers and differ from the protocol's defaults, as sorted
    ``name=value`` pairs separated by ``;`` — empty for a run with the protocol's defaults.

    Two runs of one protocol give equal labels exactly when every option that changes a number is equal, so
    the leaderboard groups by it; reported rows (from papers) have the empty label of the defaults. Options
    that change only speed or memory (e.g. ``lse_chunk``) are left out.
    """
    parts = set()
    for name in dict.fromkeys(protocol.observers.values()):
        for option in SPECS[name].options:
            if not option.changes_numbers or option.name not in options:
                continue
            default = option.parse(protocol.option_defaults.get(option.name, option.default))
            value = option.parse(options[option.name])
            if value != default:
                parts.add(f"{option.name}={str(value).lower() if isinstance(value, bool) else value}")
    return ";".join(sorted(parts))


__all__ = ["AVHUBERT_OFFICIAL", "CORPUS_MARKER", "Expects", "FULL_FRAME_SIDE", "MINI", "PROTOCOLS", "Protocol",
           "in_synthetic_corpus", "TALKLIP2023", "build_observers", "get",
           "options_label"]
