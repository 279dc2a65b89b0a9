"""The synthetic corpus is reproducible to the byte: same seed, same files (mp4 included), run to run.

Issue #7: two ``talkbench demo`` runs scored the same 12 synthetic clips differently because the mp4
files differed. The frames and audio were identical; libx264's macroblock-tree code (AVX-512) read
uninitialised memory, so the bitstream depended on leftover heap contents. glibc's malloc "perturb"
tunable fills fresh allocations with a chosen byte: encoding under two different bytes exposes any
such read deterministically, instead of now and then.
"""

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("cv2")
pytest.importorskip("skimage")

from talkbench import media  # noqa: E402
from talkbench.synthetic import corpus  # noqa: E402


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_corpus_whatever_the_workers(tmp_path):
    one = corpus.synthesize_corpus(tmp_path / "one", n_train=1, n_test=2, seed=3, workers=1)
    two = corpus.synthesize_corpus(tmp_path / "two", n_train=1, n_test=2, seed=3, workers=2)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sum(name.endswith(".mp4") for name in a) == 3
    assert sorted(a) == sorted(b)
    differing = [name for name in a if a[name] != b[name]]
    assert differing == [], f"files differ between two runs with seed 3: {differing}"
    assert one.bytes_on_disk == two.bytes_on_disk


_WRITE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from talkbench import media
    data = np.load(sys.argv[1])
    media.write_clip(sys.argv[2], data["frames"], data["audio"], fps=25.0, codec="h264", crf=None)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="uses glibc's malloc perturb tunable")
def test_h264_bytes_do_not_depend_on_uninitialised_memory(tmp_path):
    clip = corpus.make_clip(corpus.ClipSpec("test", 0, seed=0, n_identities=corpus.render.N_IDENTITIES))
    np.savez(tmp_path / "clip.npz", frames=clip.frames, audio=clip.audio_int16)
    media.write_clip(tmp_path / "here.mp4", clip.frames, clip.audio_int16)
    outputs = {"here": (tmp_path / "here.mp4").read_bytes()}
    for byte in (85, 170):
        env = dict(os.environ, GLIBC_TUNABLES=f"glibc.malloc.perturb={byte}")
        target = tmp_path / f"perturb{byte}.mp4"
        subprocess.run([sys.executable, "-c", _WRITE_SCRIPT, str(tmp_path / "clip.npz"), str(target)],
                       env=env, check=True, timeout=120)
        outputs[f"perturb{byte}"] = target.read_bytes()
    assert len(outputs["here"]) > 1000
    assert len(set(outputs.values())) == 1, {name: len(data) for name, data in outputs.items()}
