"""Protocols: one frozen object per published table — which observer measures each metric, and how.

A protocol names the exact preprocessing and aggregation of a table: the observer of each metric, option
defaults (e.g. the JPEG round trip of the LSE frames under ``talklip2023``), the lip readers' crop recipe,
the text normalisation of the transcripts, the default metric set and the citation. Nothing else in
talkbench branches on a protocol's name: it asks the :class:`Protocol` object. The summary row records the
protocol and the options that change numbers and differ from the protocol's defaults (:func:`options_label`),
and the leaderboard never ranks rows whose protocol or options differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from talkbench.observers import (METRICS, SPECS, Observer, ObserverContext, ObserverSpec, build, check_compatible,
                                 parse_options)


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
    """

    name: str
    title: str
    citation: str
    observers: Mapping[str, str]
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    mouth_roi: str = "centre88"
    text_normalisation: str = "lower"
    default_metrics: tuple[str, ...] = ("psnr", "psnr_talklip_compat", "ssim")

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
             "cer2_corpus": "conformer", "acc": "mvm", "acc_top5": "mvm", "fd_colour": "colour_stats"}

TALKLIP2023 = Protocol(
    name="talklip2023", title="TalkLip paper, Table 1: the paper's preprocessing",
    citation="Wang et al., Seeing What You Said: Talking Face Generation Guided by a Lip Reading Expert, CVPR 2023",
    observers=_OFFICIAL, option_defaults={"lse_jpeg_compat": True}, mouth_roi="centre88")
AVHUBERT_OFFICIAL = Protocol(
    name="avhubert-official", title="AV-HuBERT's own preparation: landmark-aligned mouth ROIs",
    citation="Shi et al., Learning Audio-Visual Speech Representation by Masked Multimodal Cluster Prediction, "
             "ICLR 2022 (av_hubert preparation/align_mouth.py)",
    observers=_OFFICIAL, mouth_roi="landmark-aligned")
MINI = Protocol(
    name="mini", title="talkbench's mini observers on its synthetic corpus (offline, CPU)",
    citation="talkbench mini observers (cards mini-lipreader-b, mini-syncnet)",
    observers={**_IMAGE, "lse_c": "mini-syncnet", "lse_d": "mini-syncnet", "av_offset": "mini-syncnet",
               "wer1": "mini-lipreader", "cer1": "mini-lipreader", "fd_colour": "colour_stats"},
    mouth_roi="centre88",
    default_metrics=("wer1", "cer1", "lse_c", "lse_d", "av_offset", "psnr", "psnr_talklip_compat", "ssim"))

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


__all__ = ["AVHUBERT_OFFICIAL", "MINI", "PROTOCOLS", "Protocol", "TALKLIP2023", "build_observers", "get",
           "options_label"]
