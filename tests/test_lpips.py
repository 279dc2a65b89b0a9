"""LPIPS v0.1 (AlexNet / VGG16) against the lpips 0.1.4 parity fixture (tests/fixtures/lpips), the shipped
linear-layer weights, and the observer through a run."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe import fill
from talkbench.crops.face import face96_pair, face_crops
from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.media import Clip, decode_clip
from talkbench.nets import lpips as net_lpips
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.nets.lpips import LIN_FILES, LIN_SHA256, LPIPS, file_sha256, lin_state, load_lpips, to_input
from talkbench.observers import SPECS, ClipData, ClipSkipped, ObserverContext, build
from talkbench.observers import lpips as obs
from talkbench.protocols import TALKLIP2023, build_observers, options_label

from test_evaluate import make_suite

FIX = Path(__file__).resolve().parent / "fixtures" / "lpips"
MEDIA = Path(__file__).resolve().parent / "fixtures" / "media"
KEYS = {"alex": FIX / "keys_alexnet.json", "vgg": FIX / "keys_vgg16.json"}
INPUTS = json.loads((FIX / "inputs.json").read_text())
# Measured float32 spread of the reference (expected.json): |float32 - float64| <= 4.6e-7 relative, 3.2e-9 absolute
# per stage; one pair vs the batch <= 1.9e-9 absolute. Tolerance: 10x that.
RTOL, ATOL = 5e-6, 2e-8


def features_state(net: str) -> dict[str, torch.Tensor]:
    """The recipe's values for the backbone's ``features.*`` keys.

    keys.json lists torchvision's whole state dict, ``features.*`` first: filling only that prefix draws the same
    numbers from the recipe's single stream as filling the whole file (the reference run did the latter).
    """
    keys = json.loads(KEYS[net].read_text())["keys"]
    n_features = sum(k.startswith("features.") for k, *_ in keys)
    assert all(k.startswith("features.") for k, *_ in keys[:n_features])
    return {k: torch.from_numpy(v) for k, v in fill([(k, s) for k, s, _ in keys[:n_features]], 0).items()}


def save_official_layout(net: str, path: Path) -> Path:
    """torchvision's file layout: features (stand-in values) then classifier (zero-stride stand-ins: never read)."""
    keys = json.loads(KEYS[net].read_text())["keys"]
    state = features_state(net)
    for key, shape, _ in keys:
        if key.startswith("classifier."):
            state[key] = torch.zeros(()).expand(*shape)
    assert list(state) == [k for k, *_ in keys]
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lpips")
    return {net: save_official_layout(net, folder / name) for net, name in net_lpips.BACKBONE_FILES.items()}


@pytest.fixture(scope="module")
def models(checkpoints) -> dict[str, LPIPS]:
    return {net: load_lpips(path, net) for net, path in checkpoints.items()}


@pytest.fixture(scope="module")
def fixture_arrays() -> dict[str, np.ndarray]:
    with np.load(FIX / "inputs.npz") as inputs, np.load(FIX / "expected.npz") as expected:
        return {**{k: inputs[k] for k in inputs.files}, **{k: expected[k] for k in expected.files}}


# ---------------------------------------------------------------------------------------------- shipped weights

def test_shipped_lin_weights_match_their_provenance_and_load_through_the_restricted_unpickler(monkeypatch):
    provenance = (LIN_FILES["alex"].parent / "PROVENANCE.md").read_text()
    calls = []
    real = net_lpips.load_checkpoint

    def spy(path, **kwargs):
        calls.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(net_lpips, "load_checkpoint", spy)
    for net, channels in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        assert file_sha256(LIN_FILES[net]) == LIN_SHA256[net]
        assert re.search(rf"`{LIN_FILES[net].name}`.*`{LIN_SHA256[net]}`", provenance)
        state = lin_state(net)
        assert calls[-1] == LIN_FILES[net]
        assert list(state) == [f"lin{i}.model.1.weight" for i in range(5)]
        assert [tuple(v.shape) for v in state.values()] == [(1, c, 1, 1) for c in channels]
        assert all(bool((v >= 0).all()) for v in state.values())   # lpips clamps its lin weights non-negative
    assert (LIN_FILES["alex"].parent / "LICENSE").read_text().startswith("Copyright (c) 2018, Richard Zhang")


def test_a_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    changed = tmp_path / "alex.pth"
    changed.write_bytes(LIN_FILES["vgg"].read_bytes())
    monkeypatch.setitem(net_lpips.LIN_FILES, "alex", changed)
    with pytest.raises(CheckpointError, match="sha256"):
        lin_state("alex")


# ---------------------------------------------------------------------------------------------- parity

def test_inputs_are_the_face_crops_talkbench_cuts():
    meeting = decode_clip(MEDIA / "meeting.mp4", need_audio=False).frames
    box = np.array(INPUTS["box_meeting"])
    with np.load(FIX / "inputs.npz") as inputs:
        generated = inputs["generated_bgr"]
    for row, frame in zip((0, 4, 8), (0, 10, 20)):   # the pairs "meeting[i] vs meeting[i+1]"
        assert np.array_equal(generated[row], face_crops(meeting[frame:frame + 1], box[None])[0])


def test_to_input_is_lpips_im2tensor():
    crops = np.zeros((1, 2, 2, 3), np.uint8)
    crops[0, 0, 0] = (255, 0, 128)                                   # B, G, R
    x = to_input(torch.from_numpy(crops))
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [np.float32(128 / 127.5 - 1), -1.0, 1.0]   # R, G, B
    with pytest.raises(ValueError, match="uint8"):
        to_input(torch.zeros(1, 2, 2, 3))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_the_reference(net, models, fixture_arrays):
    model = models[net]
    a = to_input(torch.from_numpy(fixture_arrays["generated_bgr"]))
    b = to_input(torch.from_numpy(fixture_arrays["reference_bgr"]))
    with torch.inference_mode():
        per_layer = model.per_layer(a, b).numpy()
        total = model(a, b).numpy()
    np.testing.assert_allclose(per_layer, fixture_arrays[f"{net}_per_layer"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(total, fixture_arrays[f"{net}_lpips"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(total, fixture_arrays[f"{net}_lpips_float64"], rtol=RTOL, atol=ATOL)
    # the pairs are told apart: a 3-pixel shift of the box is farther than the neighbouring frame
    assert total[1] > total[0] > 0
    assert total[-1] == 0.0                                          # a crop against itself


def test_identical_crops_give_zero(models):
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8))
    with torch.inference_mode():
        for model in models.values():
            x = to_input(crops)
            assert model(x, x).tolist() == [0.0, 0.0, 0.0]


def test_legacy_format_files_load(tmp_path, models):
    """torchvision's older checkpoints are legacy (non-zip) pickles: they load too (without memory mapping)."""
    path = tmp_path / "alexnet-legacy.pth"
    torch.save(features_state("alex"), path, _use_new_zipfile_serialization=False)
    model = load_lpips(path, "alex")
    assert all(torch.equal(v, models["alex"].state_dict()[k]) for k, v in model.state_dict().items())


def test_loader_refuses_other_files(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="not torchvision's alexnet-owt-7be5be79.pth: .*shape mismatches"):
        load_lpips(checkpoints["vgg"], "alex")
    state = torch.load(checkpoints["alex"])
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys: extra.weight"):
        load_lpips(tmp_path / "extra.pth", "alex")
    with pytest.raises(FileNotFoundError, match="--weights lpips-vgg16=PATH"):
        load_lpips(tmp_path / "missing.pth", "vgg")
    with pytest.raises(ValueError, match="alex, vgg"):
        LPIPS("squeeze")


# ---------------------------------------------------------------------------------------------- observer

def clip_of(frames: np.ndarray, name: str) -> Clip:
    return Clip(path=Path(f"{name}.mp4"), frames=frames, fps=25.0, audio_int16=None, source_fps=25.0)


def test_observer_row_is_the_mean_of_the_reference_frame_values(checkpoints, fixture_arrays):
    observer = build_observers(["lpips"], ObserverContext(weights={"lpips-alexnet": checkpoints["alex"]}))[0]
    assert observer.needs_reference and not observer.needs_text
    assert set(observer.weights_sha256) == {"lpips-alexnet", "lpips-lin-alex"}
    meeting = decode_clip(MEDIA / "meeting.mp4", need_audio=False).frames
    boxes = np.tile(np.array(INPUTS["box_meeting"]), (21, 1))
    clip = ClipData("m", clip_of(meeting[:21], "gen"), clip_of(meeting[1:22], "ref"), boxes=boxes)
    row = observer.measure(clip)
    assert set(row) == {"lpips", "lpips_n_frames"} and row["lpips_n_frames"] == 21
    crops = face96_pair(clip.cache, clip.generated.frames, clip.reference.frames, boxes)   # the cached crops
    values = obs.frame_distances(observer.model, *crops, torch.device("cpu"), chunk=5)
    assert row["lpips"] == pytest.approx(float(np.mean(values)), rel=1e-6)
    # frames 0, 10, 20 against their successors are fixture pairs 0, 4, 8
    np.testing.assert_allclose(values[[0, 10, 20]], fixture_arrays["alex_lpips"][[0, 4, 8]], rtol=RTOL, atol=ATOL)


def test_observer_skips_and_options(checkpoints):
    observer = obs.build(ObserverContext(weights={"lpips-alexnet": checkpoints["alex"]}))
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ClipSkipped, match="no reference clip"):
        observer.measure(ClipData("x", clip_of(frames, "g"), None))
    with pytest.raises(ClipSkipped, match="no frames"):
        observer.measure(ClipData("x", clip_of(frames[:0], "g"), clip_of(frames, "r")))
    assert observer.measure(ClipData("x", clip_of(frames, "g"), clip_of(frames, "r")))["lpips"] == 0.0
    with pytest.raises(ValueError, match="Option `lpips_net` must be one of alex, vgg, but got 'squeeze'"):
        build(SPECS["lpips"], ObserverContext(options={"lpips_net": "squeeze"}))  # before any weights are looked up
    assert options_label(TALKLIP2023, {"lpips_net": "vgg", "lpips_chunk": 3}) == "lpips_net=vgg"
    assert options_label(TALKLIP2023, {"lpips_net": "alex", "lpips_chunk": 3}) == ""


def test_summary_weighs_frames_not_clips():
    rows = [{"lpips": 0.1, "lpips_n_frames": 10}, {"lpips": 0.3, "lpips_n_frames": 30}, {"psnr": 30.0, "n_frames": 5}]
    assert obs.summarize(rows)["lpips"] == pytest.approx((0.1 * 10 + 0.3 * 30) / 40)
    assert math.isnan(obs.summarize([])["lpips"])


def test_a_run_on_an_lrs2_suite(checkpoints, tmp_path):
    reference, generated = make_suite(tmp_path / "suite", n_speakers=1)
    result = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "run",
                                     metrics=("lpips", "psnr"), suite="lrs2", model="m",
                                     weights={"lpips-alexnet": checkpoints["alex"]}))
    assert result.n_clips == 2 and result.n_failed == 0
    with (tmp_path / "run" / "clips.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        assert float(row["lpips"]) > 0 and int(row["lpips_n_frames"]) == int(row["n_frames"])   # same frame pairs
    typed = [{"lpips": float(r["lpips"]), "lpips_n_frames": int(r["lpips_n_frames"])} for r in rows]
    assert float(result.summary["lpips"]) == pytest.approx(obs.summarize(typed)["lpips"], rel=1e-9)
