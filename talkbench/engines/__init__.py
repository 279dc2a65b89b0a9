"""Engines: where the clips of an ``evaluate`` run are measured. The driver (:func:`talkbench.evaluate.evaluate`)
stays the only writer of the run's store; an engine only turns clips into measurements.

An engine is anything with :meth:`Engine.measure`: given the run's :class:`~talkbench.measure.ObserverSetup`
and the clips still to compute, it yields each clip's :class:`~talkbench.measure.Measurement` as soon as it
is finished (in any order), after reporting, once, the provenance of the observers it built (card sha256
prefixes, the JPEG route). :class:`LocalEngine` measures in this process, one clip after the other.

Beyond one machine (optional extras, imported only when used; see docs/engines.md):

- :class:`talkbench.engines.ray_engine.RayEngine` (``pip install "talkbench[ray]"``): an :class:`Engine` that
  maps the clips over a Ray Data actor pool; each actor builds the observers once.
- :func:`talkbench.engines.slurm_engine.evaluate_slurm` (``pip install "talkbench[slurm]"``): not an
  :class:`Engine` but a whole-run orchestration above :func:`talkbench.evaluate.evaluate`: a submitit job
  array whose task K evaluates ``--shard K/N`` into its own run directory, then :func:`talkbench.merge.merge_runs`.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

from talkbench.measure import Measurement, ObserverSetup, measure_clip, provenance
from talkbench.suites import ClipPair

#: Called once with the observers' provenance (card -> sha256 prefix), before the first measurement.
OnBuilt = Callable[[dict[str, str]], None]


class EngineError(RuntimeError):
    """An engine cannot run: its optional extra is missing, its cluster cannot be reached or was lost, or its
    jobs failed. Stored clips are kept; re-running the same command resumes."""


class Engine(Protocol):
    """Measures clips somewhere (this process, a Ray cluster, ...)."""

    name: str

    def measure(self, setup: ObserverSetup, pairs: Sequence[ClipPair], on_built: OnBuilt
                ) -> Iterator[tuple[ClipPair, Measurement]]:
        """Yield ``(pair, measurement)`` for every pair, each as soon as it is done; call ``on_built`` first."""
        ...


class LocalEngine:
    """Builds the observers once in this process and measures the clips one after the other."""

    name = "local"

    def measure(self, setup: ObserverSetup, pairs: Sequence[ClipPair], on_built: OnBuilt
                ) -> Iterator[tuple[ClipPair, Measurement]]:
        observers = setup.build()
        on_built(provenance(observers))
        for pair in pairs:
            yield pair, measure_clip(pair, observers)


__all__ = ["Engine", "EngineError", "LocalEngine", "OnBuilt"]
