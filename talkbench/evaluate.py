"""``talkbench evaluate``: suite -> decode once -> observers -> durable per-clip rows -> summary.

The store in the run directory is the source of truth: every clip's row is committed as soon as the
clip finishes, a re-run skips what is stored, and ``summary.csv`` / ``clips.csv`` are always
re-exported from the store. A clip that cannot be scored becomes a row with an ``error`` and the run
goes on (``strict=True`` makes the first failure fatal). An observer that fails on a clip (or gives a
non-finite number) loses only its own columns: the clip's other metrics still count.

Settings that change a number are stored with the run (:func:`run_meta`): metrics, protocol, options,
the generated folder and the suite's settings (:func:`talkbench.suites.suite_settings`: reference folder,
layout, the filelist's and the transcript table's sha256, LRW classes, boxes folder). A rerun with other settings is refused. Each clip's row also keeps its inputs' signature
(:func:`input_signature`); a clip whose generated or reference file, face boxes or transcript changed
since its row was stored is recomputed (and logged).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from talkbench import protocols, suites
from talkbench.devices import resolve_device
from talkbench.measure import Engine, LocalEngine, ObserverSetup
from talkbench.store import ClipRecord, ResultStore
from talkbench.summary import SUMMARY_COLUMNS, IntervalSettings, clip_columns, clip_rows, summary_row, write_csv

logger = logging.getLogger(__name__)

_REPORT_NAMES = 5  # how many clip ids a log line names
#: Meta key: how many clips this run (or shard) holds when finished; merge refuses a shard that holds fewer.
CLIPS_KEY = "clips_in_run"
#: Folder of the run directory where the clips' face tracks are cached (:func:`talkbench.tracks.cached_track`).
TRACKS_DIR = "tracks"


class EvaluationError(RuntimeError):
    """The run itself cannot proceed (bad arguments, empty suite, a clip failure under ``strict``)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """One ``talkbench evaluate`` run.

    Attributes:
        generated: folder of generated clips.
        reference: folder of ground-truth clips (+ transcripts), or None for reference-free metrics.
        out: run directory.
        metrics: metric columns to compute (see :data:`talkbench.observers.METRIC_COLUMNS`); empty = the
            protocol's default metrics.
        suite: suite layout (``auto``, ``lrs2``, ``lrw``, ``talklip-filelist``, ``folder``).
        filelist: TalkLip-style filelist for ``talklip-filelist``.
        protocol: preprocessing/aggregation protocol (``talklip2023`` = the paper's Table 1).
        model: name of the evaluated generator (leaderboard row label).
        split: split name recorded in the summary.
        device: torch device.
        weights: card name -> local checkpoint file.
        options: observer options the user set (e.g. ``lse_mode``); the others take the protocol's and
            their own defaults (:meth:`talkbench.protocols.Protocol.options`).
        strict: stop at the first clip failure.
        shard: (k, n) to evaluate the k-th of n deterministic shards (1-based k).
        retry_failed: recompute clips stored with an error.
        engine: where the clips are measured (:mod:`talkbench.engines`); None = this process, one by one.
        ci: how the summary's confidence intervals are made (they do not change the metrics and are not part of
            the run's settings: a rerun may change them).
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
    engine: Engine | None = None
    ci: IntervalSettings = field(default_factory=IntervalSettings)


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


def run_meta(config: EvaluateConfig, suite: suites.Suite, protocol: protocols.Protocol, metrics: Sequence[str]
             ) -> dict[str, Any]:
    """Settings that must not change between a run and its resumption: everything that changes a number for
    the whole run (per-clip inputs are checked by :func:`input_signature`). Options are stored typed and
    complete (the user's, the protocol's and the defaults)."""
    return {
        "metrics": list(metrics),
        "model": config.model,
        "suite": suite.kind,
        "split": config.split,
        "protocol": protocol.name,
        "shard": list(config.shard) if config.shard else None,
        "generated": str(config.generated.resolve()),
        "suite_settings": suites.suite_settings(suite),
        "options": protocol.options(metrics, config.options),
        # ASR transcripts (talkbench transcribe): recorded, and the summary's `transcripts` column says so
        **({"transcripts": suite.transcripts_source} if suite.transcripts_source else {}),
    }


def _stat(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def input_signature(pair: suites.ClipPair) -> dict[str, Any]:
    """What a clip's row was computed from: size and mtime of its generated clip, reference clip and face-box
    file, and a hash of its transcript. Cheap (no file is read)."""
    return {
        "generated": _stat(pair.generated),
        "reference": _stat(pair.reference),
        "boxes": _stat(pair.boxes),
        "text": hashlib.sha256(pair.text.encode("utf-8")).hexdigest()[:16] if pair.text is not None else None,
    }


def _check_config(config: EvaluateConfig) -> tuple[protocols.Protocol, tuple[str, ...]]:
    """The run's protocol and metrics, once every argument that can be checked without reading a clip is valid."""
    try:
        resolve_device(config.device)  # a bad --device fails before anything is read or written
        protocol = protocols.get(config.protocol)
        metrics = protocol.check_metrics(config.metrics or protocol.default_metrics)
        protocol.options(metrics, config.options)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    if config.generated.is_file():
        raise EvaluationError(f"{config.generated}: `evaluate` takes a folder of generated clips, not one file. To "
                              "score a single clip, put it in a folder of its own (with its reference clip at the "
                              "same relative path under --reference).")
    if not config.generated.is_dir():
        raise EvaluationError(f"{config.generated}: generated-clips folder not found.")
    if config.reference is not None and not config.reference.is_dir():
        raise EvaluationError(f"{config.reference}: reference folder not found (--reference).")
    return protocol, metrics


def export(run_dir: Path, store: ResultStore, ci: IntervalSettings = IntervalSettings()) -> dict[str, Any]:
    """Re-export ``clips.csv`` and ``summary.csv`` from the store (intervals made as ``ci`` says); returns the
    summary row."""
    records: list[ClipRecord] = list(store.records())
    write_csv(run_dir / "clips.csv", clip_rows(records), clip_columns(records))
    summary = summary_row(store.meta(), records, store.features, ci)
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
    protocol, metrics = _check_config(config)
    try:
        suite = suites.load_suite(config.suite, config.generated, config.reference, config.filelist)
    except (ValueError, OSError) as err:
        raise EvaluationError(str(err)) from err
    if not suite.pairs and not suite.unmatched_generated:
        raise EvaluationError(f"{config.generated}: no clips found for suite {suite.kind!r}.")
    # a shard may hold no clip of a small suite: its run directory is still written, so that merge sees it
    pairs = [p for p in suite.pairs if in_shard(p.clip_id, config.shard)]
    unmatched = [c for c in suite.unmatched_generated if in_shard(c, config.shard)]

    meta = run_meta(config, suite, protocol, metrics)
    with ResultStore(config.out, meta) as store:
        signatures = {p.clip_id: input_signature(p) for p in pairs}
        done = store.finished_ids(include_failed=not config.retry_failed)
        stored_inputs = store.inputs()
        changed = sorted(c for c, sig in signatures.items() if c in done and stored_inputs.get(c) not in ({}, None, sig))
        if changed:
            more = ", …" if len(changed) > _REPORT_NAMES else ""
            logger.warning("%d clip(s) changed since their rows were stored (first: %s%s); recomputing them",
                           len(changed), ", ".join(changed[:_REPORT_NAMES]), more)
            done -= set(changed)
        store.set_meta(CLIPS_KEY, len(pairs) + len(unmatched))
        todo = [p for p in pairs if p.clip_id not in done]
        new_unmatched = [c for c in unmatched if c not in done]
        total = len(pairs) + len(unmatched)
        logger.info("%d clip(s) in this run, %d already stored, %d to compute", total,
                    total - len(todo) - len(new_unmatched), len(todo) + len(new_unmatched))
        engine = config.engine or LocalEngine()
        setup = ObserverSetup(protocol.name, metrics, config.device, dict(config.weights), dict(config.options),
                              tracks_dir=config.out / TRACKS_DIR, suite_kind=suite.kind)

        def store_unmatched() -> None:
            for clip_id in new_unmatched:
                store.put(clip_id, {}, "input: generated clip matches no reference clip or transcript")

        def on_built(observers_provenance: dict[str, str]) -> None:
            _record_observers(store, observers_provenance)
            store_unmatched()  # only once the observers exist: a run that cannot build them stores nothing

        if not todo:
            store_unmatched()
        n_done = total - len(todo)
        for pair, result in engine.measure(setup, todo, on_built) if todo else ():
            if result.error and config.strict:
                raise EvaluationError(f"{pair.clip_id}: {result.error} (--strict stops at the first failure)")
            store.put(pair.clip_id, result.values, result.error, inputs=signatures[pair.clip_id],
                      features=result.features)
            if result.error and pair.generated is not None:  # missing generated clips: the suite's report names them
                logger.warning("%s: %s", pair.clip_id, result.error)
            n_done += 1
            if progress is not None:
                progress(n_done, total)
        summary = export(config.out, store, config.ci)
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
