"""Engines beyond one machine: where the clips of an ``evaluate`` run are measured when this process is not enough.

The :class:`~talkbench.measure.Engine` protocol and the in-process :class:`~talkbench.measure.LocalEngine` live in
:mod:`talkbench.measure`, below :mod:`talkbench.evaluate`; this package sits above ``evaluate`` and ``merge``
(the SLURM engine drives whole runs) and nothing below it imports it. The driver
(:func:`talkbench.evaluate.evaluate`) stays the only writer of the run's store; an engine only turns clips into
measurements.

Optional extras, imported only when used (see docs/engines.md):

- :class:`talkbench.engines.ray_engine.RayEngine` (``pip install "talkbench[ray]"``): an
  :class:`~talkbench.measure.Engine` that maps the clips over a Ray Data actor pool; each actor builds the
  observers once.
- :func:`talkbench.engines.slurm_engine.evaluate_slurm` (``pip install "talkbench[slurm]"``): not an
  :class:`~talkbench.measure.Engine` but a whole-run orchestration above :func:`talkbench.evaluate.evaluate`: a
  submitit job array whose task K evaluates ``--shard K/N`` into its own run directory, then
  :func:`talkbench.merge.merge_runs`.
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """An engine cannot run: its optional extra is missing, its cluster cannot be reached or was lost, or its
    jobs failed. Stored clips are kept; re-running the same command resumes."""


__all__ = ["EngineError"]
