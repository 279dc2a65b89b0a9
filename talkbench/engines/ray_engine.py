"""``--engine ray``: measure the clips of a run on a Ray Data actor pool (``pip install "talkbench[ray]"``).

The clips still to compute become a Ray dataset (one row per clip: its id and the pickled
:class:`~talkbench.suites.ClipPair`), mapped with ``map_batches`` over an ``ActorPoolStrategy`` of
``workers`` actors. Each actor (:class:`ClipMeasurer`) builds the run's observers once, in its
``__init__``, and keeps them loaded; ``__call__`` measures a batch of ``batch_clips`` clips and returns one
row per clip: the clip id, the pickled :class:`~talkbench.measure.Measurement` (per-clip columns, the
feature arrays of set-level metrics, the error) and the observers' provenance. The driver iterates the
mapped dataset as rows finish and yields them to :func:`talkbench.evaluate.evaluate`, which stays the only
writer of the run's store and commits each clip as it arrives: killing the driver, a worker or the whole
cluster loses at most the clips in flight, and a re-run computes only what is missing.

Failures:

- an observer failing on a clip is an error in that clip's :class:`Measurement`, exactly as in
  :class:`~talkbench.measure.LocalEngine` (:func:`~talkbench.measure.measure_clip`);
- a worker that dies (killed, out of memory, a crash in native code) is restarted by Ray and its batch is
  retried once (``max_task_retries=1``); a batch that loses its worker twice is dropped from the dataset
  (``DataContext.max_errored_blocks``) instead of failing the run, and its clips are measured again, one
  clip per batch: a clip whose own batch still kills its worker twice becomes an error row
  (``engine: worker died twice on this clip (...)``), the others are measured normally;
- the observers failing to build in a worker (missing checkpoint, ...) raise the same error as in this
  process (re-raised in the driver), before anything is stored.

Ray is imported inside the functions that use it, never at module import: it is an optional extra, and
``talkbench`` without it must import, test and run with the local engine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from talkbench.engines import EngineError
from talkbench.measure import Measurement, ObserverSetup, OnBuilt, measure_clip, provenance
from talkbench.suites import ClipPair

logger = logging.getLogger(__name__)

#: The pip command that installs the optional extra this engine needs.
INSTALL_HINT = 'pip install "talkbench[ray]"'
#: Environment variables forwarded to the workers (model cache and mirror: see docs/engines.md).
FORWARDED_ENV: tuple[str, ...] = ("TALKBENCH_HOME", "TALKBENCH_WEIGHTS_MIRROR")
#: How many times Ray retries a batch whose worker died (each retry runs on a restarted worker).
TASK_RETRIES = 1
#: CPU left free on a cluster for Ray Data's own tasks when sizing the workers' CPU requests (ENGINE_NOTES:
#: actors asking for every CPU starve the source stage and the dataset never progresses).
_RESERVED_CPU = 0.5
#: Ray Data's logger of dropped (errored) blocks: its records say why a worker died.
_ERRORED_BLOCK_LOGGER = "ray.data._internal.execution.streaming_executor_state"


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a :class:`EngineError` naming the pip command."""
    try:
        import ray  # noqa: PLC0415 - optional extra, imported only when this engine runs
        import ray.data  # noqa: F401,PLC0415 - optional extra: Ray Data is needed too
    except ImportError as err:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed ({err}); "
                          f"install it with: {INSTALL_HINT}") from None
    return ray


class ClipMeasurer:
    """The callable class of ``map_batches``: one per Ray actor; builds the observers once, measures batches.

    Args:
        setup: the run's observers (built here, in the worker).
        worker_init: called first, in the worker process (thread counts, logging, test instrumentation).
    """

    def __init__(self, setup: ObserverSetup, worker_init: Callable[[], None] | None = None) -> None:
        if worker_init is not None:
            worker_init()
        self.build_error: bytes = b""
        self.provenance = ""
        self.observers: list[Any] = []
        try:
            self.observers = setup.build()
            self.provenance = json.dumps(provenance(self.observers), sort_keys=True)
        except Exception as err:  # noqa: BLE001 - re-raised in the driver, where the user sees it
            logger.debug("building the observers failed in worker %d", os.getpid(), exc_info=True)
            self.build_error = _pickled_error(err)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Measure a batch of clips (columns ``clip_id``, ``pair``) -> one row per clip."""
        ids = [str(c) for c in batch["clip_id"]]
        measurements: list[bytes] = []
        for blob in batch["pair"]:
            if self.build_error:
                measurements.append(b"")
                continue
            pair: ClipPair = pickle.loads(blob)
            try:
                result = measure_clip(pair, self.observers)
            except Exception as err:  # noqa: BLE001 - one clip's failure is that clip's error row
                logger.debug("measuring %s failed", pair.clip_id, exc_info=True)
                result = Measurement({}, {}, f"engine: {type(err).__name__}: {err}")
            measurements.append(pickle.dumps(result))
        n = len(ids)
        return {"clip_id": ids, "measurement": measurements, "provenance": [self.provenance] * n,
                "build_error": [self.build_error] * n}


def _pickled_error(err: BaseException) -> bytes:
    """The exception itself when it pickles (so the driver raises the same type), else a RuntimeError."""
    try:
        blob = pickle.dumps(err)
        pickle.loads(blob)
        return blob
    except Exception:  # noqa: BLE001 - any unpicklable exception is reported by its text
        return pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))


def cpus_per_worker(cluster_cpus: float, workers: int, requested: float | None) -> float:
    """The CPUs each actor asks for: ``requested``, or 1, lowered so that ``workers`` actors leave
    :data:`_RESERVED_CPU` of the cluster free for Ray Data's own tasks (never below 0.1)."""
    if requested is not None:
        return requested
    room = max(cluster_cpus - _RESERVED_CPU, 0.1 * workers)
    return round(min(1.0, room / workers), 3)


class _ErroredBlocks(logging.Handler):
    """Collects why Ray Data dropped blocks (the worker-death reason shown in the clips' error rows)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            first = (str(err).strip().splitlines() or [""])[0][:160]
            self.reasons.append(f"{type(err).__name__}: {first}" if first else type(err).__name__)


@contextmanager
def _errored_blocks() -> Iterator[_ErroredBlocks]:
    handler = _ErroredBlocks()
    target = logging.getLogger(_ERRORED_BLOCK_LOGGER)
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)


@dataclass
class RayEngine:
    """Measures clips on a Ray Data actor pool (a local instance or a cluster).

    Attributes:
        address: Ray address to join (``auto``: the cluster this node belongs to, ``ray://host:10001``: Ray
            Client); None starts a local instance on loopback (or uses the one ``ray.init`` already started
            in this process).
        workers: actors in the pool; None = one per GPU when ``gpus_per_worker`` is set, else one per CPU.
        gpus_per_worker: GPUs each actor reserves (0: CPU only). The run's ``--device`` must then be ``cuda``.
        cpus_per_worker: CPUs each actor reserves; None = 1, lowered to leave Ray Data room on small clusters
            (:func:`cpus_per_worker`).
        batch_clips: clips per batch (per actor call); small batches stream rows back sooner.
        num_cpus: CPUs of a local instance this engine starts (None: all of this machine's).
        runtime_env: Ray runtime environment of the workers; the driver's ``TALKBENCH_HOME`` and
            ``TALKBENCH_WEIGHTS_MIRROR`` are added to its ``env_vars`` unless it sets them.
        worker_init: a picklable callable run in each worker before it builds its observers.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    batch_clips: int = 4
    num_cpus: int | None = None
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    worker_init: Callable[[], None] | None = None
    name: str = "ray"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise EngineError(f"--workers must be at least 1, got {self.workers}.")
        if self.batch_clips < 1:
            raise EngineError(f"--batch-clips must be at least 1, got {self.batch_clips}.")
        if self.gpus_per_worker < 0:
            raise EngineError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}.")

    def measure(self, setup: ObserverSetup, pairs: Sequence[ClipPair], on_built: OnBuilt
                ) -> Iterator[tuple[ClipPair, Measurement]]:
        """Yield ``(pair, measurement)`` for every pair as workers finish them; ``on_built`` before the first.

        Raises:
            EngineError: Ray is missing, the cluster cannot be reached or was lost, or every clip left
                killed its worker (nothing to report provenance with).
            Exception: whatever building the observers raised in a worker (e.g. a missing checkpoint).
        """
        if not pairs:
            return
        ray = import_ray()
        started = self._connect(ray)
        try:
            yield from self._measure(ray, setup, list(pairs), on_built)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; True when this engine started it (and shuts it down afterwards)."""
        if ray.is_initialized():
            return False
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         _node_ip_address="127.0.0.1")
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = self.address or "a local instance"
            raise EngineError(f"cannot start or join Ray ({where}): {err}") from err
        return True

    def _pool(self, ray: Any) -> tuple[int, float]:
        """(actors, CPUs per actor) for the cluster Ray is connected to."""
        resources = ray.cluster_resources()
        cpus = float(resources.get("CPU", 1.0))
        workers = self.workers
        if workers is None:
            if self.gpus_per_worker > 0:
                workers = max(1, int(float(resources.get("GPU", 0.0)) // self.gpus_per_worker))
            else:
                workers = max(1, int(cpus))
        return workers, cpus_per_worker(cpus, workers, self.cpus_per_worker)

    def _worker_runtime_env(self) -> dict[str, Any]:
        env = dict(self.runtime_env)
        env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        env_vars.update(env.get("env_vars", {}))
        if env_vars:
            env["env_vars"] = env_vars
        return env

    def _measure(self, ray: Any, setup: ObserverSetup, pairs: list[ClipPair], on_built: OnBuilt
                 ) -> Iterator[tuple[ClipPair, Measurement]]:
        pending = {p.clip_id: p for p in pairs}
        workers, cpus = self._pool(ray)
        logger.info("ray: %d clip(s) on %d worker(s) (%.3g CPU%s each), %d clip(s) per batch", len(pending),
                    workers, cpus, f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else "",
                    self.batch_clips)
        built: str | None = None
        reasons: list[str] = []
        rounds = [self.batch_clips] if self.batch_clips == 1 else [self.batch_clips, 1]
        for batch in rounds:
            if not pending:
                break
            if batch != self.batch_clips:
                logger.warning("ray: %d clip(s) lost their worker twice in a batch; measuring them one per batch",
                               len(pending))
            with _errored_blocks() as dropped:
                solo = batch != self.batch_clips
                for clip_id, result, observers in self._round(ray, setup, list(pending.values()), batch, workers,
                                                              cpus, solo):
                    if built is None:
                        built = observers
                        on_built(json.loads(observers))
                    elif observers != built:
                        raise EngineError(f"workers built different observers ({built} vs {observers}): every "
                                          "node must see the same checkpoints (shared $TALKBENCH_HOME or the same "
                                          "--weights files).")
                    yield pending.pop(clip_id), result
            reasons = dropped.reasons
        if not pending:
            return
        self._check_alive(ray)
        reason = "; ".join(dict.fromkeys(reasons)) or "the worker process exited"
        if built is None:
            raise EngineError(f"every clip left ({len(pending)}) killed its Ray worker twice ({reason}); nothing "
                              "was stored. Check the workers' memory and logs (`ray logs`).")
        for pair in pending.values():
            yield pair, Measurement({}, {}, f"engine: worker died twice on this clip ({reason})")

    def _round(self, ray: Any, setup: ObserverSetup, pairs: list[ClipPair], batch: int, workers: int, cpus: float,
               solo: bool = False) -> Iterator[tuple[str, Measurement, str]]:
        """One pass of the actor pool over ``pairs``: ``(clip_id, measurement, provenance json)`` as they finish.
        Batches whose worker died twice are dropped (their clips are simply not yielded). ``solo``: one task in
        flight per actor, so that a worker's death fails only the clip it was measuring, not the ones queued."""
        from ray.data import ActorPoolStrategy, DataContext  # noqa: PLC0415 - optional extra

        context = DataContext.get_current()
        saved = (context.max_errored_blocks, context.enable_progress_bars)
        context.max_errored_blocks = -1  # a batch whose worker died twice is dropped, not fatal (see above)
        context.enable_progress_bars = False  # the CLI draws its own bar from the committed rows
        try:
            items = [{"clip_id": p.clip_id, "pair": pickle.dumps(p)} for p in pairs]
            dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
            with warnings.catch_warnings():
                # Ray 2.60 has no named parameter for max_task_retries (Ray Data's default is -1: a clip that
                # kills its worker would be retried forever); the `**ray_remote_args` route is deprecated for
                # 2.64, hence the pinned extra.
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
                mapped = dataset.map_batches(
                    ClipMeasurer, fn_constructor_args=(setup, self.worker_init), batch_size=batch,
                    batch_format="numpy", compute=ActorPoolStrategy(size=min(workers, len(items)), max_tasks_in_flight_per_actor=1 if solo else None), num_cpus=cpus,
                    num_gpus=self.gpus_per_worker or None, runtime_env=self._worker_runtime_env() or None,
                    max_restarts=-1, max_task_retries=TASK_RETRIES)
            for row in mapped.iter_rows():
                if row["build_error"]:
                    raise pickle.loads(row["build_error"])
                yield str(row["clip_id"]), pickle.loads(row["measurement"]), str(row["provenance"])
        finally:
            context.max_errored_blocks, context.enable_progress_bars = saved

    @staticmethod
    def _check_alive(ray: Any) -> None:
        """Clips are turned into error rows only while the cluster is there (a lost cluster is not their fault)."""
        try:
            alive = [n for n in ray.nodes() if n.get("Alive")]
        except Exception as err:  # noqa: BLE001 - any failure to reach the cluster means it is gone
            raise EngineError(f"lost the Ray cluster ({type(err).__name__}: {err}); re-run the same command to "
                              "resume: stored clips are kept") from err
        if not alive:
            raise EngineError("the Ray cluster has no live node; re-run the same command to resume: stored clips "
                              "are kept")


__all__ = ["ClipMeasurer", "FORWARDED_ENV", "INSTALL_HINT", "RayEngine", "TASK_RETRIES", "cpus_per_worker",
           "import_ray"]
