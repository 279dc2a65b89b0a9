"""Run `evaluate` in a child process (used by the SIGKILL/resume test).

usage: python evaluate_script.py GENERATED REFERENCE OUT DELAY_S
DELAY_S > 0 slows every clip down so that the parent can kill the run mid-way.
"""

import json
import sys
import time
from pathlib import Path

import talkbench.observers.image_quality as image_quality
from talkbench.evaluate import EvaluateConfig, evaluate

generated, reference, out, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
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
                                 metrics=("psnr", "psnr_talklip_compat", "ssim"), suite="lrs2", model="m"))
print(json.dumps({"computed": result.computed, "n_clips": result.n_clips}))
