"""CSIM: ArcFace IResNet and insightface norm_crop against the reference's numbers; the identity observer.

Fixture ``tests/fixtures/arcface/`` (see its PROVENANCE.md): arcface_torch's ``iresnet50``/``iresnet100`` run with the
stand-in weights of ``tests/recipe.py`` and insightface's ``norm_crop`` on three decoded frames, with the 5 points
talkbench derives from dlib's 68.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe import filled_state_dict
from talkbench.crops.face_align import estimate_norm, five_points, norm_crop
from talkbench.faces import dlib_landmarks
from talkbench.media import Clip, decode_clip
from talkbench.nets.arcface import arcface_input, depth_of, embeddings, iresnet, load_arcface
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.observers import SPECS, ClipData, ClipSkipped, ObserverContext, build
from talkbench.observers import identity

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "arcface"
MEETING = ROOT / "tests" / "fixtures" / "media" / "meeting.mp4"
OTHER_FACE = ROOT / "tests" / "fixtures" / "syncnet" / "real_face_cut.mp4"
#: measured float32 spread of the reference (float32 vs float64 forward, PROVENANCE.md): <= 5.3e-7 on unit
#: embeddings, <= 3.2e-6 relative on raw embeddings; tolerances are ~20x that
UNIT_TOL = 1e-5
RAW_REL_TOL = 1e-4


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """The three fixture frames, decoded with talkbench (checked against the reference run's bytes)."""
    out = []
    for entry in json.loads((FIXTURE / "inputs.json").read_text())["frames"]:
        clip = decode_clip(ROOT / entry["clip"], need_audio=False)
        frame = clip.frames[entry["frame"]]
        assert hashlib.sha256(frame.tobytes()).hexdigest() == entry["sha256"], f"decoder changed: {entry}"
        out.append(frame)
    return out


def save_standin(tmp_path: Path, keys: str) -> Path:
    """The stand-in weights saved as arcface_torch saves backbone.pth: a plain state dict."""
    path = tmp_path / f"{keys}_backbone.pth"
    torch.save(filled_state_dict(FIXTURE / f"{keys}.json"), path)
    return path


@pytest.fixture(scope="module")
def r50_path(tmp_path_factory) -> Path:
    return save_standin(tmp_path_factory.mktemp("arcface"), "keys_r50")


def test_dlib_points_and_their_five_point_reduction(frames, expected):
    marks = dlib_landmarks(np.stack(frames[:2]))   # the two 160×160 frames (one clip)
    marks.append(dlib_landmarks(frames[2][None])[0])
    for i, lm in enumerate(marks):
        np.testing.assert_array_equal(lm, expected["landmarks68"][i])
        np.testing.assert_array_equal(five_points(lm), expected["landmarks5"][i])
        # by hand: eye centre = mean of the six contour points, nose tip 30, mouth corners 48 and 54
        assert five_points(lm)[1, 0] == pytest.approx(sum(lm[k, 0] for k in range(42, 48)) / 6)
        assert list(five_points(lm)[4]) == list(lm[54])


def test_norm_crop_matches_insightface(frames, expected):
    for i, frame in enumerate(frames):
        matrix = estimate_norm(expected["landmarks5"][i])
        np.testing.assert_allclose(matrix, expected["M"][i], atol=1e-5)   # measured 1.5e-6 (skimage 0.26's float32)
        crop = norm_crop(frame, expected["landmarks5"][i])
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        assert np.abs(crop.astype(int) - expected["crops"][i]).max() <= 1


def test_iresnet50_matches_arcface_torch(r50_path, expected):
    model = load_arcface(r50_path)
    assert sum(len(getattr(model, f"layer{k}")) for k in range(1, 5)) == 24
    with torch.no_grad():
        raw = model(arcface_input(expected["crops"])).numpy()
    reference = expected["r50_embeddings"]
    assert np.abs(raw - reference).max() <= RAW_REL_TOL * np.abs(reference).max()
    unit = embeddings(model, expected["crops"], batch=2)   # batches of 2 and 1: batch size must not matter
    np.testing.assert_allclose(unit, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=UNIT_TOL)
    np.testing.assert_allclose(unit @ unit.T, expected["r50_cosine"], atol=UNIT_TOL)


def test_iresnet100_has_the_official_keys():
    spec = json.loads((FIXTURE / "keys_r100.json").read_text())
    with torch.device("meta"):
        model = iresnet(100)
    assert [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()] == \
        spec["keys"]
    assert depth_of(dict.fromkeys(k for k, *_ in spec["keys"]), "keys_r100.json") == 100


@pytest.mark.slow
def test_iresnet100_official_layout_loads_and_matches(tmp_path, expected):
    path = save_standin(tmp_path, "keys_r100")
    model = load_arcface(path)
    assert [len(getattr(model, f"layer{k}")) for k in range(1, 5)] == [3, 13, 30, 3]
    unit = embeddings(model, expected["crops"])
    reference = expected["r100_embeddings"]
    np.testing.assert_allclose(unit, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=UNIT_TOL)
    np.testing.assert_allclose(unit @ unit.T, expected["r100_cosine"], atol=UNIT_TOL)


def broadcast_state(depth: int) -> dict[str, torch.Tensor]:
    """An IResNet state dict of the right keys and shapes whose tensors are broadcast scalars (tiny files)."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in iresnet(depth).state_dict().items()}
    return {k: torch.full((), 0.5 if dtype.is_floating_point else 0, dtype=dtype).expand(shape)
            for k, (shape, dtype) in shapes.items()}


def test_loader_refuses_other_files_naming_them(tmp_path):
    state = broadcast_state(18)
    wrapped = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, wrapped)
    assert [len(getattr(load_arcface(wrapped), f"layer{k}")) for k in range(1, 5)] == [2, 2, 2, 2]  # DDP prefix
    missing = dict(state)
    del missing["fc.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing keys: fc\.weight"):
        load_arcface(tmp_path / "missing.pth")
    odd = {k: v for k, v in state.items() if not k.startswith("layer3.1.")}   # [2, 2, 1, 2]: no published depth
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth.*\[2, 2, 1, 2\]"):
        load_arcface(tmp_path / "odd.pth")
    torch.save({"not": "a state dict"}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_arcface(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------------------------ the observer

def short(path: Path, n: int) -> Clip:
    clip = decode_clip(path, need_audio=False)
    return Clip(clip.path, clip.frames[:n], clip.fps, None, clip.source_fps)


@pytest.fixture(scope="module")
def meeting() -> Clip:
    return short(MEETING, 6)


class PixelProjection(torch.nn.Module):
    """A fast stand-in network for the observer's logic (pairing, skipping, averaging): a fixed random projection
    of the 8×8-pooled crop to 512-d. The released IResNet depths are checked against the reference above."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 14 * 14, 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def observer() -> identity.IdentityObserver:
    return identity.IdentityObserver(model=PixelProjection().eval(), device=torch.device("cpu"))


def test_built_from_the_official_layout_a_clip_scores_one_against_itself(r50_path, meeting):
    ctx = ObserverContext(weights={"arcface-r50-ms1mv3": r50_path},
                          options={"csim_backbone": "r50-ms1mv3", "csim_reference": "same"})
    built = identity.build(ctx)
    assert built.weights_sha256.keys() == {"arcface-r50-ms1mv3"} and built.reference == "same"
    two = Clip(meeting.path, meeting.frames[:2], 25.0, None, 25.0)
    row = built.measure(ClipData("self", two, two))
    assert row == {"csim": pytest.approx(1.0, abs=1e-5), "n_frames_csim": 2, "n_no_face_csim": 0}


def test_a_clip_against_itself(observer, meeting):
    observer.reference = "same"
    row = observer.measure(ClipData("self", meeting, meeting))
    assert row["csim"] == pytest.approx(1.0, abs=1e-5) and row["n_frames_csim"] == 6 and row["n_no_face_csim"] == 0
    observer.reference = "first"
    sims, _ = observer.frame_similarities(ClipData("self", meeting, meeting))
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and np.all(sims[1:] < 1.0)   # frame 0 is the reference


def test_another_face_scores_lower_against_the_reference(observer, meeting):
    observer.reference = "first"
    own = observer.measure(ClipData("own", meeting, meeting))["csim"]
    other = observer.measure(ClipData("other", short(OTHER_FACE, 1), meeting))
    assert other["n_frames_csim"] == 1 and other["csim"] < own - 0.1


def test_frames_without_a_face_are_skipped_and_counted(observer, meeting):
    frames = meeting.frames.copy()
    frames[[2, 5]] = 0
    holes = ClipData("holes", Clip(meeting.path, frames, 25.0, None, 25.0), meeting)
    whole = ClipData("whole", meeting, meeting)
    kept = [t for t in range(6) if t not in (2, 5)]
    for reference in ("first", "same"):
        observer.reference = reference
        row = observer.measure(holes)
        assert row["n_frames_csim"] == 4 and row["n_no_face_csim"] == 2
        sims, _ = observer.frame_similarities(whole)
        assert row["csim"] == pytest.approx(float(np.mean(sims[kept])), abs=1e-6)
    observer.reference = "first"


def test_no_face_is_an_error_row(observer, meeting):
    blank = Clip(meeting.path, np.zeros((2, 160, 160, 3), np.uint8), 25.0, None, 25.0)
    observer.reference = "first"
    with pytest.raises(ClipSkipped, match="no face in frame 0 of the reference"):
        observer.measure(ClipData("blank-ref", meeting, blank))
    with pytest.raises(ClipSkipped, match="no face found in any of the 2"):
        observer.measure(ClipData("blank-gen", blank, meeting))
    with pytest.raises(ClipSkipped, match="no reference clip"):
        observer.measure(ClipData("no-ref", meeting, None))


def test_summary_is_the_mean_over_clips():
    rows = [{"csim": 0.5, "n_frames_csim": 10}, {"csim": 0.8, "n_frames_csim": 1}, {"error": "identity: x"}]
    assert identity.summarize(rows)["csim"] == pytest.approx(0.65)
    assert math.isnan(identity.summarize([])["csim"])


def test_bad_options_are_refused_before_loading():
    with pytest.raises(ValueError, match="csim_reference"):
        build(SPECS["identity"], ObserverContext(options={"csim_reference": "last"}))
    with pytest.raises(ValueError, match="csim_backbone"):
        build(SPECS["identity"], ObserverContext(options={"csim_backbone": "r34"}))
