"""``--engine slurm``: a run as a SLURM job array through submitit (``pip install "talkbench[slurm]"``).

Task ``K`` of an array of ``N`` runs :func:`talkbench.evaluate.evaluate` on ``--shard K/N`` into its own run
directory, ``<out>/shards/K-of-N`` (each shard's store has one writer: its task); once every task has
finished, :func:`talkbench.merge.merge_runs` combines the shards into ``<out>`` (store, clips.csv,
summary.csv): the numbers one uninterrupted run gives, set-level metrics included. Re-running the same
command resumes: every shard recomputes only its missing clips, then the merge is redone. With
``wait=False`` the job ids and the exact ``talkbench merge`` command are returned (the CLI prints them).

``cluster="local"`` runs the array as local processes (submitit's LocalExecutor: tests, one machine);
``cluster="slurm"`` submits with ``sbatch``. Inputs, ``<out>`` and the model cache (``$TALKBENCH_HOME``)
must be on a filesystem every node sees.

submitit is imported inside the functions that use it, never at module import: it is an optional extra.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from talkbench.engines import EngineError
from talkbench.evaluate import EvaluateConfig, EvaluationError, RunResult, evaluate
from talkbench.merge import merge_runs

logger = logging.getLogger(__name__)

#: The pip command that installs the optional extra this engine needs.
INSTALL_HINT = 'pip install "talkbench[slurm]"'
#: submitit clusters this engine accepts.
CLUSTERS: tuple[str, ...] = ("slurm", "local", "debug")


def import_submitit() -> Any:
    """The ``submitit`` module, or a :class:`EngineError` naming the pip command."""
    try:
        import submitit  # noqa: PLC0415 - optional extra, imported only when this engine runs
    except ImportError as err:
        raise EngineError(f"--engine slurm needs submitit, which is not installed ({err}); "
                          f"install it with: {INSTALL_HINT}") from None
    return submitit


@dataclass(frozen=True)
class SlurmSettings:
    """How the job array is submitted.

    Attributes:
        array: tasks in the array = shards of the run (``N``).
        parallelism: tasks running at once (``--array=...%P``); None = all.
        partition: SLURM partition (``--partition``); None = the cluster's default.
        gpus: GPUs per task (``--gpus-per-node``).
        cpus: CPUs per task (``--cpus-per-task``).
        time_min: time limit of each task, in minutes.
        params: further submitit parameters, e.g. ``{"slurm_account": "abc", "mem_gb": 32}``.
        cluster: ``slurm``, ``local`` (local processes) or ``debug`` (in this process, for tests).
        folder: where submitit writes its scripts, pickles and logs (default ``<out>/slurm``).
    """

    array: int
    parallelism: int | None = None
    partition: str | None = None
    gpus: int = 0
    cpus: int = 2
    time_min: int = 240
    params: Mapping[str, Any] = field(default_factory=dict)
    cluster: str = "slurm"
    folder: Path | None = None

    def __post_init__(self) -> None:
        if self.array < 1:
            raise EngineError(f"--slurm-array must be at least 1, got {self.array}.")
        if self.parallelism is not None and self.parallelism < 1:
            raise EngineError(f"the array's parallelism (N%P) must be at least 1, got {self.parallelism}.")
        if self.cluster not in CLUSTERS:
            raise EngineError(f"unknown submitit cluster {self.cluster!r}; choose from {', '.join(CLUSTERS)}.")
        if self.gpus < 0 or self.cpus < 1 or self.time_min < 1:
            raise EngineError("--slurm-gpus must be >= 0, CPUs and --slurm-time at least 1.")


@dataclass
class Submitted:
    """A submitted array: what to wait for and how to merge it by hand.

    Attributes:
        job_ids: one per task (``<array id>_<index>`` on SLURM).
        shard_dirs: the tasks' run directories, shard 1 first.
        out: the merged run directory.
        merge_command: the ``talkbench merge`` command that combines the shards once every task has finished.
        jobs: the submitit job objects (empty when only the ids are known).
    """

    job_ids: list[str]
    shard_dirs: list[Path]
    out: Path
    merge_command: str
    jobs: list[Any] = field(default_factory=list, repr=False)


def parse_array(text: str) -> tuple[int, int | None]:
    """``N`` or ``N%P`` (N tasks, at most P at once), as for ``sbatch --array``."""
    count, sep, limit = text.partition("%")
    try:
        n = int(count)
        p = int(limit) if sep else None
    except ValueError:
        raise EngineError(f"--slurm-array takes N or N%P (e.g. 16 or 16%4), got {text!r}.") from None
    if n < 1 or (p is not None and p < 1):
        raise EngineError(f"--slurm-array needs N >= 1 (and P >= 1), got {text!r}.")
    return n, p


def shard_dirs(out: Path, n: int) -> list[Path]:
    """The run directory of each shard: ``<out>/shards/K-of-N``."""
    return [out / "shards" / f"{k}-of-{n}" for k in range(1, n + 1)]


def merge_command(shards: Sequence[Path], out: Path) -> str:
    """The shell command that merges ``shards`` into ``out``."""
    return shlex.join(["talkbench", "merge", *map(str, shards), "--out", str(out)])


def run_shard(config: EvaluateConfig) -> dict[str, int]:
    """One task of the array (runs on a node): evaluate the config's shard into its run directory."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = evaluate(config)
    return {"computed": result.computed, "n_clips": result.n_clips, "n_failed": result.n_failed}


def _absolute(config: EvaluateConfig) -> EvaluateConfig:
    """Paths that mean the same thing in a task started elsewhere (another working directory)."""
    return replace(
        config,
        generated=config.generated.resolve(),
        out=config.out.resolve(),
        reference=config.reference.resolve() if config.reference is not None else None,
        filelist=config.filelist.resolve() if config.filelist is not None else None,
        weights={k: Path(v).resolve() for k, v in config.weights.items()},
    )


def _executor(settings: SlurmSettings, folder: Path, n: int) -> Any:
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=folder, cluster=settings.cluster)
    params: dict[str, Any] = {"name": "talkbench", "timeout_min": settings.time_min,
                              "cpus_per_task": settings.cpus, "slurm_array_parallelism": settings.parallelism or n}
    if settings.gpus:
        params["gpus_per_node"] = settings.gpus
    if settings.partition:
        params["slurm_partition"] = settings.partition
    params.update(settings.params)
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError) as err:
        raise EngineError(f"submitit refused the job parameters ({err}).") from None
    return executor


def submit(config: EvaluateConfig, settings: SlurmSettings) -> Submitted:
    """Submit the array (one task per shard) and return at once.

    Raises:
        EngineError: submitit is missing, the config already names a shard or an engine, or submission failed.
    """
    if config.shard is not None:
        raise EngineError("--engine slurm shards the run itself (--slurm-array N); drop --shard.")
    if config.engine is not None:
        raise EngineError("--engine slurm runs each shard in its task's own process; it takes no other engine.")
    for folder_path, flag in ((config.generated, "generated-clips folder"), (config.reference, "--reference")):
        if folder_path is not None and not folder_path.is_dir():
            raise EvaluationError(f"{folder_path}: {flag} not found (nothing was submitted).")
    config = _absolute(config)
    n = settings.array
    dirs = shard_dirs(config.out, n)
    folder = (settings.folder or config.out / "slurm").resolve()
    executor = _executor(settings, folder, n)
    tasks = [replace(config, shard=(k, n), out=d) for k, d in zip(range(1, n + 1), dirs)]
    try:
        jobs = executor.map_array(run_shard, tasks)
    except Exception as err:  # noqa: BLE001 - sbatch/submitit failures of any kind are reported, not traced
        raise EngineError(f"submitting the job array failed: {type(err).__name__}: {err}") from err
    submitted = Submitted([str(j.job_id) for j in jobs], dirs, config.out, merge_command(dirs, config.out), list(jobs))
    logger.info("submitted %d task(s) (%s); logs in %s", n, ", ".join(submitted.job_ids), folder)
    return submitted


def wait_and_merge(submitted: Submitted) -> RunResult:
    """Wait for every task, then merge the shards into ``submitted.out``.

    Raises:
        EngineError: a task failed (named with its shard and log); finished shards are kept, so re-running
            the same command recomputes only what is missing.
    """
    submitit = import_submitit()
    failed: list[str] = []
    computed = 0
    poll_s = 1.0 if all(type(j).__name__ != "SlurmJob" for j in submitted.jobs) else 30.0  # spare the scheduler
    for job in submitit.helpers.as_completed(submitted.jobs, poll_frequency=poll_s):
        k = submitted.jobs.index(job) + 1
        try:
            outcome = job.result()
        except Exception as err:  # noqa: BLE001 - a task's failure (any exception, a kill) is reported by shard
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
            failed.append(f"shard {k} (job {job.job_id}, log {job.paths.stderr}): {last}")
            logger.error("shard %d of %d failed: %s", k, len(submitted.jobs), last)
            continue
        computed += int(outcome["computed"])
        logger.info("shard %d of %d finished: %d clip(s) computed", k, len(submitted.jobs), outcome["computed"])
    if failed:
        raise EngineError(f"{len(failed)} of {len(submitted.jobs)} task(s) failed: " + "; ".join(failed)
                          + ". Finished clips are stored: re-run the same command to resume the failed shards.")
    try:
        summary = merge_runs(submitted.shard_dirs, submitted.out)
    except ValueError as err:
        raise EvaluationError(f"merging the shards failed: {err}") from err
    return RunResult(submitted.out, summary, int(summary["n_clips"]), int(summary["n_failed"]), computed)


def evaluate_slurm(config: EvaluateConfig, settings: SlurmSettings, wait: bool = True) -> RunResult | Submitted:
    """Run ``config`` as a job array: submit, then (``wait``) wait for it and merge; else return the ids.

    Raises:
        EngineError: see :func:`submit` and :func:`wait_and_merge`; ``wait=False`` with the local cluster (its
            tasks end with this process).
    """
    if not wait and settings.cluster != "slurm":
        raise EngineError("--no-wait needs a SLURM cluster: local tasks end with this process.")
    submitted = submit(config, settings)
    return wait_and_merge(submitted) if wait else submitted


__all__ = ["CLUSTERS", "INSTALL_HINT", "SlurmSettings", "Submitted", "evaluate_slurm", "import_submitit",
           "merge_command", "parse_array", "run_shard", "shard_dirs", "submit", "wait_and_merge"]
