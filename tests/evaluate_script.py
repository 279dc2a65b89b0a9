"""Run `evaluate` in a child process (used by the SIGKILL/resume test).

usage: python evaluate_script.py GENERATED REFERENCE OUT DELAY_S [METRICS]
DELAY_S > 0 slows every clip down so that the parent can kill the run mid-way; METRICS is comma-separated
(default psnr,psnr_talklip_compat,ssim).
"""

import json
import sys
import time
from pathlib import Path

import talkbench.observers.image_quality as image_quality
from talkbench.evaluate import EvaluateConfig, evaluate

generated, reference, out, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
metrics = tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else ("psnr", "psnr_talklip_compat", "ssim")
original_build = image_quality.build


def slow_build(ctx):
    observer = original_build(ctx)
    measure = observer.measure

    def slow_measure(clip):
        time.sleep(delay)
        return measure(clip)

    observer.measure = slow_measure
    return observer


image_quality.build = slow_build
result = evaluate(EvaluateConfig(generated=Path(generated), reference=Path(reference), out=Path(out),
                                 metrics=metrics, suite="lrs2", model="m"))
print(json.dumps({"computed": result.computed, "n_clips": result.n_clips}))
