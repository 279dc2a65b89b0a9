"""ACC: the MVM LRW word classifier against the parity fixture (tests/fixtures/mvm)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from recipe import filled_state_dict
from talkbench.crops.lipreader_inputs import lrw_crops
from talkbench.devices import resolve_device
from talkbench.media import Clip
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.nets.mvm import MVMClassifier, load_mvm
from talkbench.observers import mvm as obs
from talkbench.observers.base import ClipData, ClipSkipped

FIX = Path(__file__).resolve().parent / "fixtures" / "mvm"
EXPECTED = json.loads((FIX / "expected.json").read_text())
PARTS = ("v_front_state_dict", "a_front_state_dict", "mem_state_dict", "tcn_state_dict")  # train.py's order


def decode_bgr(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


def as_clip(frames: np.ndarray, path: Path = FIX / "about_256.mp4") -> Clip:
    return Clip(path=path, frames=frames, fps=25.0, audio_int16=None, source_fps=25.0)


def official_layout(flat: dict[str, torch.Tensor], parts: tuple[str, ...] = PARTS) -> dict[str, dict]:
    """keys.json's "<outer>/<inner>" entries -> the nested dict Pretrained_Ckpt.ckpt holds."""
    nested: dict[str, dict] = {}
    for key, value in flat.items():
        outer, inner = key.split("/", 1)
        nested.setdefault(outer, {})[inner] = value
    return {part: nested[part] for part in parts if part in nested}


@pytest.fixture(scope="module")
def flat_state() -> dict[str, torch.Tensor]:
    return filled_state_dict(FIX / "keys.json")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, flat_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("mvm") / "Pretrained_Ckpt.ckpt"
    torch.save(official_layout(flat_state), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> MVMClassifier:
    return load_mvm(checkpoint, "cpu")


@pytest.fixture(scope="module")
def npz() -> dict[str, np.ndarray]:
    with np.load(FIX / "expected_subset.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return decode_bgr(FIX / "about_256.mp4")


# ---------------------------------------------------------------------------------------------- pure parts

def test_word_list() -> None:
    words = obs.lrw_words()
    assert len(words) == 500 and list(words) == sorted(words) and words[0] == "ABOUT"
    assert obs.class_index("ABOUT") == 0 and obs.class_index("YOUNG") == 499


def test_preprocessing_matches_the_lrw_loader(frames: np.ndarray, npz: dict[str, np.ndarray]) -> None:
    assert frames.shape == (23, 256, 256, 3)
    video = obs.input_tensor(lrw_crops(frames))
    assert video.shape == (1, 1, 29, 112, 112)
    np.testing.assert_allclose(video[0, 0].numpy(), npz["input_video"], atol=1e-6, rtol=0)
    assert bool((video[0, 0, 23:] == 0).all())  # zero-filled after normalisation (mid-grey)


def test_product_decoder_gives_the_same_input(npz: dict[str, np.ndarray]) -> None:
    """talkbench.media.decode_clip (the evaluation path) -> the LRW loader's tensor."""
    from talkbench.media import decode_clip

    video = obs.input_tensor(lrw_crops(decode_clip(FIX / "about_256.mp4", need_audio=False).frames))
    np.testing.assert_allclose(video[0, 0].numpy(), npz["input_video"], atol=1e-6, rtol=0)


def test_small_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="crop box"):
        lrw_crops(np.zeros((3, 160, 160, 3), np.uint8))


def test_long_clip_policies() -> None:
    assert obs.select_frames(23, "skip") == slice(0, 23)
    assert obs.select_frames(35, "center") == slice(3, 32)
    assert obs.select_frames(35, "first") == slice(0, 29)
    with pytest.raises(ValueError, match="35 frames"):
        obs.select_frames(35, "skip")


def test_labels() -> None:
    clip = as_clip(np.zeros((1, 256, 256, 3), np.uint8))
    assert obs.label_of(ClipData("a/b", clip, text="Text: about\nConf: 1\n")) == "ABOUT"
    assert obs.label_of(ClipData("ABOUT/test/ABOUT_00001", clip, text=None)) == "ABOUT"
    with pytest.raises(ValueError, match="'HELLOWORLD' is not one of the 500"):
        obs.class_index("HELLOWORLD")


def test_summary_is_percent() -> None:
    rows = [{"acc": 1, "acc_top5": 1}, {"acc": 0, "acc_top5": 1}, {"acc": 0, "acc_top5": 0}, {"acc": 0, "acc_top5": 1}]
    assert obs.summarize(rows) == {"acc": 25.0, "acc_top5": 75.0}
    assert np.isnan(obs.summarize([])["acc"])


# ---------------------------------------------------------------------------------------------- network parity

def test_parity(model: MVMClassifier, npz: dict[str, np.ndarray]) -> None:
    video = torch.from_numpy(npz["input_video"])[None, None]
    with torch.no_grad():
        feats = model.v_front(video)
        fused = model.mem(feats)
        pooled = model.tcn.tcn.mb_ms_tcn(fused.transpose(1, 2)).mean(2)
        noflip, flip = model.logits_with_flip(video)
    tol = {"atol": 1e-4, "rtol": 1e-4}
    np.testing.assert_allclose(feats[0].numpy(), npz["noflip_v_feat"], **tol)
    np.testing.assert_allclose(fused[0].numpy(), npz["noflip_mem_out"], **tol)
    np.testing.assert_allclose(pooled[0].numpy(), npz["noflip_tcn_pooled"], **tol)
    np.testing.assert_allclose(noflip[0].numpy(), npz["noflip_logits"], **tol)
    np.testing.assert_allclose(flip[0].numpy(), npz["flip_logits"], **tol)
    np.testing.assert_allclose((noflip + flip)[0].numpy(), npz["logits_sum_testaug"], **tol)
    assert int(noflip.argmax()) == EXPECTED["pred_class_no_test_aug"]
    assert int((noflip + flip).argmax()) == EXPECTED["pred_class_test_aug"]
    assert int(flip.argmax()) == EXPECTED["pred_class_flip_only"]
    assert torch.topk((noflip + flip)[0], 5).indices.tolist() == [i for i, _ in EXPECTED["top5_test_aug_sum"]]


def test_observer_row(model: MVMClassifier, frames: np.ndarray) -> None:
    observer = obs.MVMObserver(model=model, device=torch.device("cpu"))
    predicted = obs.lrw_words()[EXPECTED["pred_class_test_aug"]]
    in_top5 = [obs.lrw_words()[i] for i, _ in EXPECTED["top5_test_aug_sum"]]
    row = observer.measure(ClipData("about_256", as_clip(frames), text="about"))
    assert row == {"acc": 0, "acc_top5": int("ABOUT" in in_top5), "pred_word": predicted, "label": "ABOUT"}
    with pytest.raises(ClipSkipped, match="'HELLOWORLD'"):  # a label outside the 500 is an error row
        observer.measure(ClipData("x", as_clip(frames), text="helloworld"))
    # Without the test-time flip the plain logits decide; a label equal to the prediction scores a hit.
    plain = obs.MVMObserver(model=model, device=torch.device("cpu"), test_aug=False)
    word = obs.lrw_words()[EXPECTED["pred_class_no_test_aug"]]
    row = plain.measure(ClipData("x", as_clip(frames), text=word.lower()))
    assert row == {"acc": 1, "acc_top5": 1, "pred_word": word, "label": word}


def test_build_from_weights_override(checkpoint: Path) -> None:
    from talkbench.observers import SPECS, ObserverContext, build
    from talkbench.protocols import build_observers

    ctx = ObserverContext(device="cpu", weights={"mvm-lrw": checkpoint},
                          options={"mvm_long_clips": "center", "mvm_test_aug": "false"})
    (observer,) = build_observers(["acc", "acc_top5"], ctx)
    assert isinstance(observer, obs.MVMObserver) and observer.metrics == ("acc", "acc_top5")
    assert observer.long_clips == "center" and observer.test_aug is False
    with pytest.raises(ValueError, match="mvm_long_clips"):
        build(SPECS["mvm"], ObserverContext(weights={"mvm-lrw": checkpoint}, options={"mvm_long_clips": "truncate"}))


def test_long_clips(model: MVMClassifier, frames: np.ndarray) -> None:
    long_frames = np.concatenate([frames, frames[::-1]])[:35]  # 35 frames
    with pytest.raises(ClipSkipped, match="35 frames"):
        obs.MVMObserver(model=model, device=torch.device("cpu")).measure(
            ClipData("x", as_clip(long_frames), text="ABOUT"))
    centred = obs.MVMObserver(model=model, device=torch.device("cpu"), test_aug=False, long_clips="center")
    got = centred.logits(ClipData("x", as_clip(long_frames), text="ABOUT"))
    want = centred.logits(ClipData("y", as_clip(long_frames[3:32]), text="ABOUT"))
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------- loading

def test_audio_front_is_optional(tmp_path: Path, flat_state: dict[str, torch.Tensor], model: MVMClassifier) -> None:
    path = tmp_path / "no_audio.ckpt"
    torch.save(official_layout(flat_state, ("v_front_state_dict", "mem_state_dict", "tcn_state_dict")), path)
    loaded, reference = load_mvm(path).state_dict(), model.state_dict()
    assert list(loaded) == list(reference) and all(torch.equal(loaded[k], reference[k]) for k in loaded)


def test_strict_load_errors(tmp_path: Path, flat_state: dict[str, torch.Tensor]) -> None:
    nested = official_layout(flat_state)
    broken = dict(nested, tcn_state_dict={k: v for k, v in nested["tcn_state_dict"].items()
                                          if k != "tcn.tcn_output.bias"})
    path = tmp_path / "missing.ckpt"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"tcn_state_dict.*missing keys: tcn\.tcn_output\.bias.*mvm-lrw="):
        load_mvm(path)
    # The audio front end is not used, but a present one is still checked strictly.
    broken = dict(nested, a_front_state_dict=dict(nested["a_front_state_dict"], extra=torch.zeros(1)))
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match="a_front_state_dict.*unexpected keys: extra"):
        load_mvm(path)
    torch.save({k: v for k, v in nested.items() if k != "mem_state_dict"}, path)
    with pytest.raises(CheckpointError, match="missing mem_state_dict"):
        load_mvm(path)
    broken = dict(nested, mem_state_dict=dict(nested["mem_state_dict"], key=torch.zeros(448, 128)))
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"mem_state_dict.*shape mismatches: key \(448, 128\)"):
        load_mvm(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(checkpoint: Path, npz: dict[str, np.ndarray]) -> None:
    gpu = load_mvm(checkpoint, resolve_device("cuda"))  # also pins TF32 off, as every run does
    video = torch.from_numpy(npz["input_video"])[None, None].cuda()
    noflip, flip = gpu.logits_with_flip(video)
    np.testing.assert_allclose(noflip[0].cpu().numpy(), npz["noflip_logits"], atol=1e-3, rtol=1e-3)
