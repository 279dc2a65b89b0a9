"""The distributed engines (#19): Ray Data actor pool and submitit job arrays give the plain run's numbers.

Tests marked ``engines`` need the optional extras (``pip install "talkbench[ray,slurm]"``) and start a local Ray
instance (loopback, 2 CPUs) or submitit's LocalExecutor; they are deselected by default: ``make test-engines``.
The unmarked tests check the CLI wiring and the pure helpers without the extras.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from talkbench.cli import app
from talkbench.engines import EngineError
from talkbench.engines.ray_engine import RayEngine, cpus_per_worker
from talkbench.engines.slurm_engine import SlurmSettings, merge_command, parse_array, shard_dirs, submit, wait_and_merge
from talkbench.evaluate import EvaluateConfig, evaluate

from test_evaluate import _stored, make_suite  # _stored reads the store without taking the run's lock

TESTS = Path(__file__).resolve().parent
METRICS = ("psnr", "ssim", "fd_colour")  # fd_colour: a set-level metric, its per-clip features travel back
CRASH_CLIP = "main/spk1/00001"


# ---------------------------------------------------------------- without the extras (default `make test`)

def test_a_missing_extra_is_an_error_naming_the_pip_command(tmp_path, monkeypatch):
    reference, generated = make_suite(tmp_path, n_speakers=1)
    runner = CliRunner()
    for module, engine, extra in (("ray", ["--engine", "ray"], "talkbench[ray]"),
                                  ("submitit", ["--engine", "slurm", "--slurm-array", "2"], "talkbench[slurm]")):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
        result = runner.invoke(app, ["evaluate", str(generated), "--reference", str(reference), "--suite", "lrs2",
                                     "--out", str(tmp_path / "run"), *engine])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and f'pip install "{extra}"' in " ".join(result.output.split())
    assert not (tmp_path / "run" / "store.sqlite").exists()


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "--engine must be one of local, ray, slurm"),
    (["--workers", "2"], "--workers only apply to another --engine"),
    (["--engine", "slurm"], "--engine slurm needs --slurm-array N"),
    (["--engine", "slurm", "--slurm-array", "2x"], "--slurm-array takes N or N%P"),
    (["--engine", "slurm", "--slurm-array", "2", "--shard", "1/2"], "drop --shard"),
])
def test_engine_flag_mistakes_are_errors(tmp_path, args, message):
    reference, generated = make_suite(tmp_path, n_speakers=1)
    result = CliRunner().invoke(app, ["evaluate", str(generated), "--reference", str(reference), "--suite", "lrs2",
                                      "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_helpers():
    assert parse_array("16") == (16, None) and parse_array("16%4") == (16, 4)
    for bad in ("0", "4%0", "x"):
        with pytest.raises(EngineError):
            parse_array(bad)
    assert cpus_per_worker(2, 2, None) == 0.75  # ENGINE_NOTES: leave Ray Data's own tasks room on small clusters
    assert cpus_per_worker(64, 8, None) == 1.0 and cpus_per_worker(2, 2, 0.5) == 0.5
    dirs = shard_dirs(Path("/r/out"), 2)
    assert dirs == [Path("/r/out/shards/1-of-2"), Path("/r/out/shards/2-of-2")]
    assert merge_command(dirs, Path("/r/out")) == "talkbench merge /r/out/shards/1-of-2 /r/out/shards/2-of-2 --out /r/out"
    with pytest.raises(EngineError):
        RayEngine(batch_clips=0)
    with pytest.raises(EngineError):
        SlurmSettings(array=2, cluster="pbs")


# ---------------------------------------------------------------- helpers of the engine tests

@dataclass(frozen=True)
class Instrument:
    """A RayEngine ``worker_init`` for tests (pickled by value into the workers): records the worker's pid in
    ``pid_dir``, slows every clip by ``delay`` s, and kills the worker process on ``crash_clip``."""

    pid_dir: str | None = None
    delay: float = 0.0
    crash_clip: str | None = None

    def __call__(self) -> None:
        import talkbench.observers.image_quality as image_quality

        if self.pid_dir:
            (Path(self.pid_dir) / str(os.getpid())).touch()
        original, delay, crash = image_quality.build, self.delay, self.crash_clip

        def build(ctx):
            observer = original(ctx)
            measure = observer.measure

            def instrumented(clip):
                if clip.clip_id == crash:
                    os._exit(1)  # a native crash / OOM kill: no exception, the process is gone
                time.sleep(delay)
                return measure(clip)

            observer.measure = instrumented
            return observer

        image_quality.build = build


def _pickle_this_module_by_value() -> None:
    """Ray workers cannot import this test module: ship :class:`Instrument` by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _config(generated: Path, reference: Path, out: Path, engine=None) -> EvaluateConfig:
    return EvaluateConfig(generated=generated, reference=reference, out=out, metrics=METRICS, suite="lrs2", model="m",
                          engine=engine)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def assert_same_run(run_dir: Path, plain_dir: Path) -> None:
    """summary.csv (except the date) and clips.csv identical to the plain run's."""
    assert (run_dir / "clips.csv").read_text() == (plain_dir / "clips.csv").read_text()
    ours, plain = _read(run_dir / "summary.csv"), _read(plain_dir / "summary.csv")
    assert [{k: v for k, v in r.items() if k != "date"} for r in ours] == \
           [{k: v for k, v in r.items() if k != "date"} for r in plain]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def plain(suite, tmp_path_factory):
    reference, generated = suite
    return evaluate(_config(generated, reference, tmp_path_factory.mktemp("plain")))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")  # loopback only
    _pickle_this_module_by_value()
    yield ray
    ray.shutdown()


def _driver_main(generated: str, reference: str, out: str) -> None:
    """The driver killed by :func:`test_killing_the_driver_and_its_cluster_then_resume_computes_only_the_rest`."""
    _pickle_this_module_by_value()
    engine = RayEngine(workers=2, batch_clips=1, num_cpus=2, worker_init=Instrument(delay=1.0))
    evaluate(_config(Path(generated), Path(reference), Path(out), engine))


# ---------------------------------------------------------------- Ray (`make test-engines`)

@pytest.mark.engines
@pytest.mark.timeout(300)
def test_killing_the_driver_and_its_cluster_then_resume_computes_only_the_rest(suite, plain, tmp_path):
    """SIGKILL to the driver's whole process group (driver, its local Ray instance, the workers) mid-run."""
    pytest.importorskip("ray")
    reference, generated = suite
    out = tmp_path / "killed"
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_engines; " \
           f"test_engines._driver_main({str(generated)!r}, {str(reference)!r}, {str(out)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS.parent, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while _stored(out) < 2 and time.time() < deadline and child.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        _kill_session(child.pid)
    at_kill = _stored(out)
    assert 2 <= at_kill < 6, "the run must be killed mid-way"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        resumed = evaluate(_config(generated, reference, out, RayEngine(workers=2, batch_clips=2)))
    finally:
        ray.shutdown()
    assert resumed.computed == 6 - at_kill
    assert_same_run(out, plain.run_dir)


def _kill_session(sid: int) -> None:
    """Ray processes of the killed driver's session that outlived the process-group kill (they may set their own
    group): killed by pid, only those of that session."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        pid, _, session = line.strip().partition(" ")
        if session.strip() == str(sid):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@pytest.mark.engines
@pytest.mark.timeout(300)
def test_ray_two_workers_give_the_plain_run_and_resume_recomputes_nothing(ray_cluster, suite, plain, tmp_path):
    reference, generated = suite
    out = tmp_path / "ray"
    result = CliRunner().invoke(app, ["evaluate", str(generated), "--reference", str(reference), "--suite", "lrs2",
                                      "--metrics", ",".join(METRICS), "--name", "m", "--out", str(out),
                                      "--engine", "ray", "--workers", "2", "--batch-clips", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert_same_run(out, plain.run_dir)
    again = evaluate(_config(generated, reference, out, RayEngine(workers=2)))
    assert again.computed == 0
    assert_same_run(out, plain.run_dir)


@pytest.mark.engines
@pytest.mark.timeout(300)
def test_a_worker_killed_mid_run_is_restarted_and_the_run_completes(ray_cluster, suite, plain, tmp_path):
    reference, generated = suite
    pids = tmp_path / "pids"
    pids.mkdir()
    killed: list[int] = []

    def kill_a_worker(done: int, total: int) -> None:
        if done == 2 and not killed:
            pid = int(sorted(pids.iterdir(), key=lambda p: p.stat().st_mtime)[0].name)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    engine = RayEngine(workers=2, batch_clips=1, worker_init=Instrument(pid_dir=str(pids), delay=0.7))
    result = evaluate(_config(generated, reference, tmp_path / "run", engine), progress=kill_a_worker)
    assert killed, "a worker must have been killed mid-run"
    assert result.computed == 6 and result.n_failed == 0
    assert len(list(pids.iterdir())) >= 3  # the killed actor was restarted (its observers built again)
    assert_same_run(tmp_path / "run", plain.run_dir)


@pytest.mark.engines
@pytest.mark.timeout(300)
def test_a_clip_that_kills_its_worker_twice_is_an_error_row(ray_cluster, suite, plain, tmp_path):
    reference, generated = suite
    engine = RayEngine(workers=2, batch_clips=2, worker_init=Instrument(crash_clip=CRASH_CLIP))
    result = evaluate(_config(generated, reference, tmp_path / "run", engine))
    assert result.computed == 6 and result.n_clips == 6 and result.n_failed == 1
    rows = {r["clip_id"]: r for r in _read(tmp_path / "run" / "clips.csv")}
    assert rows[CRASH_CLIP]["error"].startswith("engine: worker died twice on this clip (")
    plain_rows = {r["clip_id"]: r for r in _read(plain.run_dir / "clips.csv")}
    assert {c: r for c, r in rows.items() if c != CRASH_CLIP} == {c: r for c, r in plain_rows.items() if c != CRASH_CLIP}


@pytest.mark.engines
@pytest.mark.timeout(300)
def test_observers_that_cannot_be_built_raise_in_the_driver_and_store_nothing(ray_cluster, suite, tmp_path):
    reference, generated = suite
    config = EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "run", metrics=("lse_c",),
                            suite="lrs2", model="m", weights={"syncnet-v2": tmp_path / "missing.model"},
                            engine=RayEngine(workers=1))
    local = EvaluateConfig(**{**config.__dict__, "out": tmp_path / "local", "engine": None})
    with pytest.raises(Exception) as local_error:
        evaluate(local)
    with pytest.raises(type(local_error.value)) as ray_error:
        evaluate(config)
    assert str(ray_error.value) == str(local_error.value)
    assert _stored(tmp_path / "run") == 0


# ---------------------------------------------------------------- submitit (`make test-engines`)

@pytest.mark.engines
@pytest.mark.timeout(300)
def test_slurm_array_on_the_local_executor_gives_the_plain_run(suite, plain, tmp_path):
    pytest.importorskip("submitit")
    reference, generated = suite
    out = tmp_path / "slurm"
    args = ["evaluate", str(generated), "--reference", str(reference), "--suite", "lrs2", "--metrics",
            ",".join(METRICS), "--name", "m", "--out", str(out), "--engine", "slurm", "--slurm-array", "2",
            "--slurm-cluster", "local", "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 clip(s) computed" in " ".join(result.output.split())
    assert_same_run(out, plain.run_dir)
    again = CliRunner().invoke(app, args)  # resume: every shard is complete, the merge is redone
    assert again.exit_code == 0 and "0 clip(s) computed" in " ".join(again.output.split()), again.output
    assert_same_run(out, plain.run_dir)


@pytest.mark.engines
@pytest.mark.timeout(300)
def test_submitted_array_merges_with_the_printed_command(suite, plain, tmp_path):
    """What ``--no-wait`` prints: the merge command, run by hand once the tasks are done."""
    pytest.importorskip("submitit")
    reference, generated = suite
    submitted = submit(_config(generated, reference, tmp_path / "out"), SlurmSettings(array=3, cluster="local"))
    assert len(submitted.job_ids) == 3
    for job in submitted.jobs:
        job.result()
    command = submitted.merge_command.split()
    assert command[:2] == ["talkbench", "merge"]
    partial = CliRunner().invoke(app, command[1:2] + command[2:4] + command[5:])  # shard 3 left out
    assert partial.exit_code == 2 and "missing shard(s) 3 of 3" in " ".join(partial.output.split())
    merged = CliRunner().invoke(app, command[1:] + ["--format", "json"])
    assert merged.exit_code == 0, merged.output
    assert_same_run(tmp_path / "out", plain.run_dir)


@pytest.mark.engines
@pytest.mark.timeout(300)
def test_a_failed_task_is_reported_by_shard_and_nothing_is_merged(suite, tmp_path):
    pytest.importorskip("submitit")
    reference, generated = suite
    config = _config(generated, reference, tmp_path / "out")
    broken = submit(EvaluateConfig(**{**config.__dict__, "protocol": "no-such-protocol"}),
                    SlurmSettings(array=2, cluster="local"))
    with pytest.raises(EngineError, match=r"2 of 2 task\(s\) failed: shard 1 .*re-run the same command"):
        wait_and_merge(broken)
