"""talkbench.crops: typed keys, one computation per crop kind when several observers ask, one box validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from talkbench import generate, suites
from talkbench.boxes import BoxError, check_boxes
from talkbench.crops import CropKey, Kind
from talkbench.crops import face as face_mod
from talkbench.crops import lipreader_inputs, mouth
from talkbench.crops import syncnet as syncnet_crops
from talkbench.crops.face import face_crops
from talkbench.media import Clip
from talkbench.observers.avhubert import AVHubertObserver
from talkbench.observers.base import ClipData
from talkbench.observers.colour_stats import ColourStatsObserver
from talkbench.observers.conformer import ConformerObserver
from talkbench.observers.image_quality import ImageQualityObserver
from talkbench.observers.mini_lipreader import MiniLipReaderObserver
from talkbench.observers.mvm import MVMObserver
from talkbench.observers.syncnet import SyncNetObserver

CPU = torch.device("cpu")


def frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def clip(frames_bgr: np.ndarray, audio: np.ndarray | None = None) -> Clip:
    return Clip(path=Path("x.mp4"), frames=frames_bgr, fps=25.0, audio_int16=audio, source_fps=25.0)


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Wrap ``module.name`` so that each call appends to the returned list."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


# ------------------------------------------------------------------------------------------------ keys

def test_keys_are_typed_and_checked() -> None:
    assert CropKey(Kind.MOUTH88, recipe="centre88") == CropKey(Kind.MOUTH88, "generated", "centre88")
    assert CropKey(Kind.FACE96, "reference") != CropKey(Kind.FACE96, "generated")
    assert str(CropKey(Kind.MOUTH88, recipe="landmark-aligned")) == "mouth88.landmark-aligned.generated"
    with pytest.raises(ValueError, match="Unknown mouth88 crop recipe `lrs3`; choose from centre88, landmark-aligned"):
        CropKey(Kind.MOUTH88, recipe="lrs3")
    with pytest.raises(ValueError, match="Unknown mouth88 crop recipe `None`"):
        CropKey(Kind.MOUTH88)
    with pytest.raises(ValueError, match="single recipe"):
        CropKey(Kind.CONFORMER112, recipe="centre88")
    with pytest.raises(ValueError, match="`side` must be one of"):
        CropKey(Kind.FACE96, "fake")            # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a talkbench.crops.Kind"):
        CropKey("mouth_roi.centre88")          # type: ignore[arg-type]


# ------------------------------------------------------------------------------- one computation per kind

def test_face96_is_cut_once_for_psnr_ssim_and_fd_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, face_mod, "face_crops")
    data = ClipData("c", clip(frames(4, 40, 50)), clip(frames(5, 40, 50, seed=1)),
                    boxes=np.tile([5, 0, 45, 40], (4, 1)))
    ImageQualityObserver().measure(data)
    ColourStatsObserver().measure(data)
    assert len(calls) == 2                                       # one per side, for both observers
    generated = data.cache[CropKey(Kind.FACE96, "generated")]
    assert generated.shape == (4, 96, 96, 3)
    np.testing.assert_array_equal(generated, face_crops(data.generated.frames, data.boxes))


def test_mouth88_is_cut_once_for_every_lip_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, mouth, "mouth_crops")
    data = ClipData("c", clip(frames(3, 100, 100)))
    avhubert = AVHubertObserver(model=None, tokenizer=None, device=CPU).crops(data)
    mini = MiniLipReaderObserver(model=None, device=CPU).crops(data)
    assert mini is avhubert and avhubert.shape == (3, 88, 88) and len(calls) == 1
    assert set(data.cache) == {CropKey(Kind.MOUTH88, recipe="centre88")}


def test_landmark_aligned_crops_share_the_landmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    detected: list[int] = []
    monkeypatch.setattr(mouth, "dlib_landmarks", lambda f: (detected.append(1), [None] * len(f))[1])  # no dlib
    data = ClipData("c", clip(frames(3, 100, 100)))
    first = AVHubertObserver(model=None, tokenizer=None, device=CPU, crop_recipe="landmark-aligned").crops(data)
    second = MiniLipReaderObserver(model=None, device=CPU, crop_recipe="landmark-aligned").crops(data)
    assert first is second and first.shape == (3, 88, 88) and len(detected) == 1
    assert data.cache[CropKey(Kind.LANDMARKS)] == [None] * 3


class _TeacherForced:
    """A Conformer stand-in that predicts the target (plus <eos>)."""

    def teacher_force(self, video: torch.Tensor, target: list[int], frame_chunk: int = 0) -> dict[str, torch.Tensor]:
        assert video.shape[1:] == (112, 112)
        return {"argmax": torch.tensor(list(target) + [39])}


def test_conformer112_is_cut_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, lipreader_inputs, "conformer_crops")
    data = ClipData("c", clip(frames(3, 160, 160)), text="HELLO THERE")
    rows = [ConformerObserver(model=_TeacherForced(), device=CPU).measure(data) for _ in range(2)]  # type: ignore[arg-type]
    assert rows[0] == rows[1] and rows[0]["wer2"] == 0.0 and len(calls) == 1
    assert data.cache[CropKey(Kind.CONFORMER112)].shape == (3, 112, 112)


class _Classifier:
    """An MVM stand-in: the same logits for every clip."""

    def logits_with_flip(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert video.shape == (1, 1, 29, 112, 112)
        logits = torch.zeros(1, 500)
        logits[0, 0] = 1.0
        return logits, logits


def test_mvm_lrw112_is_cut_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, lipreader_inputs, "lrw_crops")
    data = ClipData("ABOUT_00001", clip(frames(3, 256, 256)))
    for _ in range(2):
        assert MVMObserver(model=_Classifier(), device=CPU).measure(data)["acc"] == 1  # type: ignore[arg-type]
    assert len(calls) == 1 and data.cache[CropKey(Kind.MVM_LRW112)].shape == (3, 112, 112)


class _Embedder:
    """A SyncNet stand-in: constant embeddings (LSE-D is then the same at every offset)."""

    def audio_embeddings(self, mfcc: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mfcc.shape[0], 8)

    def lip_embeddings(self, video: torch.Tensor, n: int, chunk: int = 4) -> torch.Tensor:
        assert video.shape[1:] == (224, 224, 3)
        return torch.ones(n, 8)


def test_syncnet224_is_resized_once_for_two_syncnet_observers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, syncnet_crops, "resize_frames")
    audio = np.random.default_rng(0).integers(-3000, 3000, 12 * 640).astype(np.int16)
    data = ClipData("c", clip(frames(12, 96, 96), audio))
    official = SyncNetObserver(model=_Embedder(), device=CPU)
    mini = SyncNetObserver(model=_Embedder(), device=CPU, name="mini-syncnet")
    assert official.measure(data) == mini.measure(data)
    assert len(calls) == 1 and data.cache[CropKey(Kind.SYNCNET224, recipe="resize")].shape == (12, 224, 224, 3)


def test_face_detections_are_run_once_per_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(syncnet_crops, "detect_faces_per_frame",
                        lambda f, detector, weights, **kw: (calls.append(detector), [np.zeros((0, 5))] * len(f))[1])
    cache: dict = {}
    video = frames(3, 64, 64)
    for _ in range(2):
        assert len(syncnet_crops.face_detections(cache, video, "dlib")) == 3
    assert calls == ["dlib"] and set(cache) == {CropKey(Kind.FACE_DETECTIONS, recipe="dlib")}


# ----------------------------------------------------------------------------------- one box validation

@pytest.mark.parametrize("bad, problem", [
    ([np.nan, 0, 20, 20], "NaN or infinite coordinates"),
    ([-1, 0, 20, 20], "negative coordinates"),
    ([10, 0, 10, 20], "empty: x2 <= x1 or y2 <= y1"),
    ([2.5, 0, 20, 20], "not whole pixel coordinates"),
])
def test_bad_boxes_give_the_same_error_from_suites_generate_and_the_face_crop(tmp_path: Path, bad: list[float],
                                                                              problem: str) -> None:
    boxes = np.tile(np.array([0.0, 0, 20, 20]), (3, 1))
    boxes[1] = bad
    path = tmp_path / "clip.npy"
    np.save(path, boxes)
    video = frames(3, 20, 20)
    messages = []
    for attempt in (lambda: suites.load_boxes(path, 3), lambda: face_crops(video, boxes, source=str(path)),
                    lambda: check_boxes(boxes, 3, None, str(path))):
        with pytest.raises(BoxError) as err:
            attempt()
        messages.append(str(err.value))
    with pytest.raises(generate.GenerateError) as err:       # generate's input error, with the same message
        generate.face_boxes(video, path)
    messages.append(str(err.value))
    assert len(set(messages)) == 1, messages
    assert messages[0].startswith(f"{path}: the face box of frame 1 is ") and f"({problem}; 1 such frame)" in messages[0]


def test_boxes_are_clipped_to_the_frame_and_trimmed_to_the_clip() -> None:
    boxes = check_boxes(np.array([[0, 0, 30, 25], [5, 5, 10, 10], [0, 0, 1, 1]]), 2, (20, 24))
    assert boxes.dtype == np.int64 and boxes.tolist() == [[0, 0, 24, 20], [5, 5, 10, 10]]
    assert check_boxes(np.array([[0.0, 0.0, 30.0, 25.0]])).tolist() == [[0, 0, 30, 25]]   # no frame: no clipping
    with pytest.raises(BoxError, match=r"frame 0 is \[30, 0, 40, 10\] \(outside the 24×20 frame; 1 such frame\)"):
        check_boxes(np.array([[30, 0, 40, 10]]), 1, (20, 24))
