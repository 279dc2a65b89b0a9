"""``talkbench evaluate``: suite -> decode once -> observers -> durable per-clip rows -> summary.

The store in the run directory is the source of truth: every clip's row is committed as soon as the
clip finishes, a re-run skips what is stored, and ``summary.csv`` / ``clips.csv`` are always
re-exported from the store. A clip that cannot be scored becomes a row with an ``error`` and the run
goes on (``strict=True`` makes the first failure fatal).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from talkbench import media, suites
from talkbench.observers import ALL_METRICS, ClipData, ClipSkipped, Observer, ObserverContext, build_observers
from talkbench.store import ClipRecord, ResultStore
from talkbench.summary import SUMMARY_COLUMNS, clip_columns, clip_rows, summary_row, write_csv

logger = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("talklip2023", "avhubert-official", "mini")


class EvaluationError(RuntimeError):
    """The run itself cannot proceed (bad arguments, empty suite, a clip failure under ``strict``)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """One ``talkbench evaluate`` run.

    Attributes:
        generated: folder of generated clips.
        reference: folder of ground-truth clips (+ transcripts), or None for reference-free metrics.
        out: run directory.
        metrics: metric columns to compute (see :data:`talkbench.observers.ALL_METRICS`).
        suite: suite layout (``auto``, ``lrs2``, ``lrw``, ``talklip-filelist``, ``folder``).
        filelist: TalkLip-style filelist for ``talklip-filelist``.
        protocol: preprocessing/aggregation protocol (``talklip2023`` = the paper's Table 1).
        model: name of the evaluated generator (leaderboard row label).
        split: split name recorded in the summary.
        device: torch device.
        weights: card name -> local checkpoint file.
        options: observer options (e.g. ``lse_mode``).
        strict: stop at the first clip failure.
        shard: (k, n) to evaluate the k-th of n deterministic shards (1-based k).
        retry_failed: recompute clips stored with an error.
    """

    generated: Path
    out: Path
    metrics: tuple[str, ...]
    reference: Path | None = None
    suite: str = "auto"
    filelist: Path | None = None
    protocol: str = "talklip2023"
    model: str = ""
    split: str = "test"
    device: str = "cpu"
    weights: Mapping[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False
    shard: tuple[int, int] | None = None
    retry_failed: bool = False


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    summary: dict[str, Any]
    n_clips: int
    n_failed: int
    computed: int


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``K/N`` (1 <= K <= N)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 2/8), got {text!r}.") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N, got {text!r}.")
    return k, n


def in_shard(clip_id: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic shard membership by a hash of the clip id (stable when the suite grows)."""
    if shard is None:
        return True
    k, n = shard
    return zlib.crc32(clip_id.encode("utf-8")) % n == k - 1


def run_meta(config: EvaluateConfig, suite_kind: str) -> dict[str, Any]:
    """Settings that must not change between a run and its resumption."""
    return {
        "metrics": list(config.metrics),
        "model": config.model,
        "suite": suite_kind,
        "split": config.split,
        "protocol": config.protocol,
        "shard": list(config.shard) if config.shard else None,
        "generated": str(config.generated.resolve()),
        "options": {k: v for k, v in sorted(config.options.items())},
    }


def _check_config(config: EvaluateConfig) -> None:
    unknown = [m for m in config.metrics if m not in ALL_METRICS]
    if unknown or not config.metrics:
        raise EvaluationError(f"--metrics must name some of {', '.join(ALL_METRICS)}; got {list(config.metrics)}.")
    if config.protocol not in PROTOCOLS:
        raise EvaluationError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {config.protocol!r}.")
    if not config.generated.is_dir():
        raise EvaluationError(f"{config.generated}: generated-clips folder not found.")
    if config.reference is not None and not config.reference.is_dir():
        raise EvaluationError(f"{config.reference}: reference folder not found (--reference).")


def _clip_data(pair: suites.ClipPair, observers: Sequence[Observer]) -> ClipData:
    if pair.generated is None:
        raise ClipSkipped("no generated clip for this reference clip (expected at the same relative path)")
    generated = media.decode_clip(pair.generated, need_audio=False)
    reference = None
    if any(o.needs_reference for o in observers):
        if pair.reference is None:
            raise ClipSkipped("no reference clip for this generated clip (needed by PSNR/SSIM)")
        reference = media.decode_clip(pair.reference, need_audio=False)
    if any(o.needs_text for o in observers) and not pair.text:
        raise ClipSkipped("no transcript/label for this clip (needed by the lip-reading metrics)")
    boxes = suites.load_boxes(pair.boxes, generated.num_frames) if pair.boxes is not None else None
    return ClipData(clip_id=pair.clip_id, generated=generated, reference=reference, text=pair.text, boxes=boxes)


def measure_clip(pair: suites.ClipPair, observers: Sequence[Observer]) -> tuple[dict[str, Any], str | None]:
    """Decode one clip once and run every observer on it.

    Returns:
        (values, error): the measured columns, and None or the error text. Each observer's failure is
        recorded (``observer: message``); the values of observers that succeeded are kept for inspection.
    """
    try:
        data = _clip_data(pair, observers)
    except (media.MediaError, ClipSkipped, OSError, ValueError) as err:
        return {}, f"input: {err}"
    values: dict[str, Any] = {}
    errors: list[str] = []
    for observer in observers:
        try:
            values.update(observer.measure(data))
        except (ClipSkipped, media.MediaError, ValueError) as err:
            errors.append(f"{observer.name}: {err}")
        except Exception as err:  # noqa: BLE001 - an observer bug on one clip must not lose the run
            logger.debug("observer %s failed on %s", observer.name, pair.clip_id, exc_info=True)
            errors.append(f"{observer.name}: {type(err).__name__}: {err}")
    return values, "; ".join(errors) or None


def export(run_dir: Path, store: ResultStore) -> dict[str, Any]:
    """Re-export ``clips.csv`` and ``summary.csv`` from the store; returns the summary row."""
    records: list[ClipRecord] = list(store.records())
    write_csv(run_dir / "clips.csv", clip_rows(records), clip_columns(records))
    summary = summary_row(store.meta(), records)
    write_csv(run_dir / "summary.csv", [summary], SUMMARY_COLUMNS)
    return summary


def evaluate(config: EvaluateConfig, progress: Callable[[int, int], Any] | None = None) -> RunResult:
    """Run (or resume) an evaluation.

    Args:
        config: the run.
        progress: called as ``progress(done, total)`` after each clip (the CLI draws a bar with it).
    Raises:
        EvaluationError: the run cannot proceed (bad arguments, no clips, a failure under ``strict``).
    """
    _check_config(config)
    try:
        suite = suites.load_suite(config.suite, config.generated, config.reference, config.filelist)
    except (ValueError, OSError) as err:
        raise EvaluationError(str(err)) from err
    pairs = [p for p in suite.pairs if in_shard(p.clip_id, config.shard)]
    if not pairs and not suite.unmatched_generated:
        raise EvaluationError(f"{config.generated}: no clips found for suite {suite.kind!r}.")

    meta = run_meta(config, suite.kind)
    with ResultStore(config.out, meta) as store:
        done = store.finished_ids(include_failed=not config.retry_failed)
        for clip_id in suite.unmatched_generated:
            if in_shard(clip_id, config.shard) and clip_id not in done:
                store.put(clip_id, {}, "input: generated clip matches no reference clip or transcript")
        todo = [p for p in pairs if p.clip_id not in done]
        total = len(pairs)
        logger.info("%d clip(s) in this run, %d already stored, %d to compute", total, total - len(todo), len(todo))
        observers: list[Observer] = []
        if todo:
            ctx = ObserverContext(device=config.device, protocol=config.protocol,
                                  weights=dict(config.weights), options=dict(config.options))
            observers = build_observers(config.metrics, ctx)
            provenance = {k: v for o in observers for k, v in o.weights_sha256.items()}
            _record_observers(store, provenance)
        n_done = total - len(todo)
        for pair in todo:
            values, error = measure_clip(pair, observers)
            if error and config.strict:
                raise EvaluationError(f"{pair.clip_id}: {error} (--strict stops at the first failure)")
            store.put(pair.clip_id, values, error)
            if error:
                logger.warning("%s: %s", pair.clip_id, error)
            n_done += 1
            if progress is not None:
                progress(n_done, total)
        summary = export(config.out, store)
    return RunResult(config.out, summary, int(summary["n_clips"]), int(summary["n_failed"]), len(todo))


def _record_observers(store: ResultStore, provenance: Mapping[str, str]) -> None:
    """Keep the checkpoints' sha256 prefixes in the store; a resumed run with other weights is refused."""
    meta = store.meta()
    if "observers" not in meta:
        store.set_meta("observers", dict(provenance))
    elif meta["observers"] != dict(provenance):
        raise EvaluationError(
            f"{store.path}: stored rows were computed with checkpoints {meta['observers']}, "
            f"this run uses {dict(provenance)}. Use another --out directory."
        )
