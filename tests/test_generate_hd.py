"""``talkbench generate`` on a real full-frame clip: the face track (detection on downscaled frames), streamed frames
(the clip is never decoded whole), ``--save-boxes``, stage progress, and the feathered paste (different from the
hard paste only near the box edge)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from talkbench import media
from talkbench import generate as gen
from talkbench.generate import FEATHER, GenerateConfig, GenerateError, feather_mask, generate_video, paste_faces
from test_talklip_support import tiny_generator_file

REAL_CUT = FIXTURES / "media" / "syncnet_example_cut.avi"      # 976×528 MPEG-4 + 44.1 kHz MP3, 80 frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from talkbench.nets.talklip import load_talklip_generator

    path = tiny_generator_file(tmp_path_factory.mktemp("talklip") / "talklip_tiny.pth")
    return load_talklip_generator(path, attention_heads=4)


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory, generator):
    """The real clip generated once (hard paste, lossless), its saved boxes and the progress calls."""
    folder = tmp_path_factory.mktemp("gen_hd")
    calls: list[tuple[str, int, int]] = []
    original = media.decode_clip
    media.decode_clip = _forbidden      # the clip must be streamed, never decoded whole
    try:
        out = generate_video(REAL_CUT, folder / "hard.mkv", config=GenerateConfig(codec="ffv1"), generator=generator,
                             save_boxes=folder / "boxes.npy", progress=lambda *c: calls.append(c))
    finally:
        media.decode_clip = original
    return folder, out, np.load(folder / "boxes.npy"), calls


def _forbidden(*args, **kwargs):
    raise AssertionError("generate_video decoded the whole clip")


def test_real_clip_is_generated_from_a_stream_with_boxes_and_progress(hard_run):
    folder, out, boxes, calls = hard_run
    clip = media.decode_clip(out)
    source = media.decode_clip(REAL_CUT)
    assert clip.frames.shape == source.frames.shape and clip.fps == 25.0
    assert boxes.shape == (len(source.frames), 4) and boxes.dtype == np.int64
    assert {stage for stage, _, _ in calls} == {"faces", "generate"}
    assert calls[-1] == ("generate", len(boxes), len(boxes))
    # outside every box the frames are the decoded source, untouched (lossless output)
    outside = np.ones(clip.frames.shape[:3], dtype=bool)
    for t, (x1, y1, x2, y2) in enumerate(boxes):
        outside[t, y1:y2, x1:x2] = False
    assert np.array_equal(clip.frames[outside], source.frames[outside])
    assert not np.array_equal(clip.frames[~outside], source.frames[~outside])


def test_saved_boxes_are_on_the_face(hard_run):
    # dlib's landmarks on the source frames fall inside the boxes generate found (on downscaled frames); landmark
    # sets narrower than 100 px are dlib's false detections on the playing cards behind the speaker
    from talkbench.faces import dlib_landmarks

    _, _, boxes, _ = hard_run
    frames = media.decode_clip(REAL_CUT).frames[::4]
    marks = dlib_landmarks(frames, upsample=0, cnn_fallback=False)
    found = [(m.mean(axis=0), b) for m, b in zip(marks, boxes[::4]) if m is not None and np.ptp(m[:, 0]) >= 100]
    assert len(found) >= 3
    inside = [b[0] <= c[0] <= b[2] and b[1] <= c[1] <= b[3] for c, b in found]
    assert np.mean(inside) >= 0.8, found


def test_feather_differs_from_hard_only_near_the_box_edge(hard_run, generator):
    folder, hard_out, boxes, _ = hard_run
    feather_out = generate_video(REAL_CUT, folder / "feather.mkv", boxes=folder / "boxes.npy", generator=generator,
                                 config=GenerateConfig(codec="ffv1", paste="feather"))
    hard = media.decode_clip(hard_out).frames
    feather = media.decode_clip(feather_out).frames
    differs = np.any(hard != feather, axis=-1)
    assert differs.any()
    for t, (x1, y1, x2, y2) in enumerate(boxes):
        ramp = int(np.ceil(FEATHER * min(x2 - x1, y2 - y1))) + 1
        inner = np.zeros(differs.shape[1:], dtype=bool)
        inner[y1 + ramp:y2 - ramp, x1 + ramp:x2 - ramp] = True
        outer = np.ones(differs.shape[1:], dtype=bool)
        outer[y1:y2, x1:x2] = False
        assert not differs[t][inner].any() and not differs[t][outer].any(), t


def test_feather_mask_and_paste_on_arrays():
    mask = feather_mask(40, 60, 0.25)                 # ramp 10 px
    assert mask.shape == (40, 60) and mask.min() == 0.0 and mask[10:30, 10:50].min() == 1.0
    assert np.all(np.diff(mask[:20, 30]) >= 0)         # rises from the edge
    frames = np.full((2, 50, 80, 3), 200, dtype=np.uint8)
    boxes = np.array([[10, 5, 70, 45], [0, 0, 80, 50]])
    faces = torch.zeros(2, 3, 96, 96)
    hard = paste_faces(frames, boxes, faces)
    soft = paste_faces(frames, boxes, faces, paste="feather", feather=0.25)
    assert np.array_equal(hard[0, 5:45, 10:70], np.zeros((40, 60, 3), np.uint8))
    assert np.array_equal(soft[0, 15:35, 20:60], hard[0, 15:35, 20:60])      # inside the ramp: the same
    assert soft[0, 5, 10, 0] == 200 and 0 < soft[0, 8, 40, 0] < 200            # edge: the frame shows through
    with pytest.raises(GenerateError, match="--paste"):
        paste_faces(frames, boxes, faces, paste="soft")
    with pytest.raises(GenerateError, match="--feather"):
        paste_faces(frames, boxes, faces, paste="feather", feather=0.9)


def test_cli_checks_the_new_options_before_loading(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from talkbench.cli import app

    monkeypatch.setattr(gen, "load_generator", _forbidden)
    monkeypatch.setattr(media, "scan_video", _forbidden)
    runner = CliRunner()
    base = ["generate", "--video", str(REAL_CUT), "--out", str(tmp_path / "o.mp4"), "--checkpoint", "talklip-mini"]
    for extra, fragment in ((["--save-boxes", str(tmp_path / "b.txt")], "--save-boxes"),
                            (["--paste", "blur"], "--paste"), (["--feather", "0"], "--feather"),
                            (["--smooth", "4"], "--smooth"), (["--detect-every", "0"], "--detect-every")):
        res = runner.invoke(app, base + extra)
        assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output, res.output
