"""SyncNet network, checkpoint loading and parity with the Wav2Lip / syncnet_python reference.

Fixture: tests/fixtures/syncnet (copied from shared/parity/syncnet; see PROVENANCE.md). Stand-in
weights: tests/recipe.py, seed 0, saved in the official layout (a plain name -> tensor dict).
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from talkbench import jpeg_compat, lse
from talkbench.audio_features import syncnet_mfcc
from talkbench.crops.syncnet import resize_frames
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.nets.syncnet import SyncNet, load_syncnet

FIX = Path(__file__).resolve().parent / "fixtures" / "syncnet"
CLIPS = ("meeting", "another")
MODES = ("jpg", "videocapture")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIX / "expected.json").read_text())


@pytest.fixture(scope="module")
def arrays():
    with np.load(FIX / "expected_slim.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model(syncnet_checkpoint: Path) -> SyncNet:
    return load_syncnet(syncnet_checkpoint, "cpu")


def _decode_bgr(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="bgr24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def frames() -> dict:
    """Per clip and mode: the decoded frames the reference scored (before its resize)."""
    out = {}
    for clip in CLIPS:
        out[clip, "videocapture"] = _decode_bgr(FIX / f"{clip}.mp4")
        out[clip, "jpg"] = jpeg_compat.reference_frames(path=FIX / f"{clip}.mp4")
    return out


# ----------------------------------------------------------------------------------------------- loading

def test_state_dict_keys_and_shapes_are_official() -> None:
    spec = json.loads((FIX / "keys.json").read_text())
    sd = SyncNet().state_dict()
    assert [k for k, *_ in spec["keys"]] == list(sd)
    for key, shape, _ in spec["keys"]:
        assert list(sd[key].shape) == shape, key


def test_loader_accepts_file_without_num_batches_tracked(tmp_path: Path, syncnet_checkpoint: Path) -> None:
    state = torch.load(syncnet_checkpoint)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(old) == len(state) - 14
    torch.save(old, tmp_path / "old.model")
    m = load_syncnet(tmp_path / "old.model")
    torch.testing.assert_close(m.state_dict()["netcnnlip.0.weight"], state["netcnnlip.0.weight"])
    assert not m.training


def test_loader_reports_missing_and_unexpected_keys(tmp_path: Path, syncnet_checkpoint: Path) -> None:
    state = torch.load(syncnet_checkpoint)
    bad = dict(state)
    del bad["netfcaud.3.weight"]
    bad["netfcaud.9.weight"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.model")
    with pytest.raises(CheckpointError, match=r"missing keys: netfcaud\.3\.weight; unexpected keys: netfcaud\.9\.weight"
                       ) as info:
        load_syncnet(tmp_path / "bad.model")
    assert str(tmp_path / "bad.model") in str(info.value) and "--weights syncnet-v2=" in str(info.value)
    bad = dict(state, **{"netfcaud.3.weight": torch.zeros(2, 2)})
    torch.save(bad, tmp_path / "shape.model")
    with pytest.raises(CheckpointError, match=r"shape mismatches: netfcaud\.3\.weight \(2, 2\)"):
        load_syncnet(tmp_path / "shape.model")
    with pytest.raises(FileNotFoundError, match="syncnet-v2"):
        load_syncnet(tmp_path / "absent.model")


# ----------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("clip", CLIPS)
def test_mfcc_equals_fixture(clip: str, arrays: dict) -> None:
    mfcc = syncnet_mfcc(arrays[f"{clip}/audio_int16"]).astype(np.float32)
    want = arrays[f"{clip}/mfcc"]
    assert mfcc.shape == want.shape
    np.testing.assert_allclose(mfcc, want, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("clip", CLIPS)
def test_videocapture_frames_equal_reference_decode(clip: str, frames: dict, arrays: dict, expected: dict) -> None:
    got = frames[clip, "videocapture"]
    assert got.shape == (expected["per_clip"][clip]["videocapture"]["n_frames"], 160, 160, 3)
    means = got.reshape(len(got), -1, 3).astype(np.float64).mean(1)
    np.testing.assert_allclose(means, arrays[f"{clip}/videocapture/frames_decoded_channel_mean"], atol=1e-4)


@pytest.mark.parametrize("clip", CLIPS)
def test_jpeg_roundtrip_changes_the_frames(clip: str, frames: dict, arrays: dict) -> None:
    """The reference scores ffmpeg-written JPEGs: without the round trip the frames are clearly different."""
    direct = frames[clip, "videocapture"].reshape(len(frames[clip, "videocapture"]), -1, 3).astype(np.float64)
    assert np.abs(direct.mean(1) - arrays[f"{clip}/jpg/frames_decoded_channel_mean"]).max() > 0.1


@pytest.mark.parametrize("clip", CLIPS)
def test_audio_front_and_embeddings(clip: str, model: SyncNet, arrays: dict) -> None:
    mfcc = syncnet_mfcc(arrays[f"{clip}/audio_int16"])
    win = lse.mfcc_windows(mfcc, 5)
    with torch.inference_mode():
        front = model.netcnnaud(win).flatten(1)
        emb = model.forward_aud(win)
        fast = model.audio_embeddings(win)
    np.testing.assert_allclose(fast.numpy(), emb.numpy(), atol=1e-3, rtol=1e-5)
    # measured 1.8e-4 / 8.7e-5 (fixture README: the reference's float32-vs-float64 spread is 9.6e-4 / 3.1e-4)
    np.testing.assert_allclose(front.numpy(), arrays[f"{clip}/aud_front_first5"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(emb.numpy(), arrays[f"{clip}/audio_emb_first5"], atol=5e-4, rtol=0)


@pytest.mark.parametrize("clip", CLIPS)
def test_lip_front_and_embeddings_clip_path_equals_reference_path(clip: str, model: SyncNet, frames: dict,
                                                                  arrays: dict) -> None:
    f224 = torch.from_numpy(resize_frames(frames[clip, "videocapture"][:9]))      # (T, 224, 224, 3)
    with torch.inference_mode():
        front = model.lip_front_clip(f224, 5, chunk=2)
        emb = model.netfclip(front)
        video = f224.permute(3, 0, 1, 2)                                               # (3, T, 224, 224)
        windows = torch.stack([video[:, i:i + 5] for i in range(5)]).float()
        ref_emb = model.forward_lip(windows)            # the reference's per-window Conv3d path
    # measured 8.1e-4 / 3.3e-4; the reference's own Conv3d path re-run here differs from its fixture by 2.7e-4
    np.testing.assert_allclose(front.numpy(), arrays[f"{clip}/videocapture/lip_front_first5"], atol=2e-3, rtol=0)
    np.testing.assert_allclose(emb.numpy(), arrays[f"{clip}/videocapture/video_emb_first5"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(emb.numpy(), ref_emb.numpy(), atol=2e-3, rtol=1e-5)


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("mode", MODES)
def test_clip_scores_match_reference(clip: str, mode: str, model: SyncNet, frames: dict, arrays: dict,
                                     expected: dict) -> None:
    want = expected["per_clip"][clip][mode]
    audio = arrays[f"{clip}/audio_int16"]
    n = lse.count_windows(len(frames[clip, mode]), len(audio))
    assert n == want["n_windows"]
    video_emb, audio_emb = lse.embed_clip(model, resize_frames(frames[clip, mode]), audio, n)
    dists = lse.shifted_distances(video_emb, audio_emb)
    result = lse.scores_from_distances(dists)
    assert result.av_offset == want["offset"]
    # Without the reference ffmpeg (not Linux x86-64), frame 35 of meeting's JPEGs differs (test_jpeg_compat)
    approximate = (clip, mode) == ("meeting", "jpg") and jpeg_compat.active_route() != "reference"
    # measured: LSE 0 or 1.2e-4 (one float32 ulp at 1059), mean_dists <= 2.4e-4, dists <= 9.8e-4; the issue's
    # 1e-4 is below float32 resolution at these magnitudes, so 2 ulps is the tightest meaningful bound
    tol = 2e-2 if approximate else 2.5e-4
    assert result.lse_d == pytest.approx(want["LSE_D"], abs=tol)
    assert result.lse_c == pytest.approx(want["LSE_C"], abs=tol)
    np.testing.assert_allclose(result.mean_dists, want["mean_dists"], atol=max(tol, 5e-4))
    if not approximate:
        np.testing.assert_allclose(dists.numpy(), arrays[f"{clip}/{mode}/dists"], atol=2.5e-3)


def test_chunk_size_does_not_change_embeddings(model: SyncNet, frames: dict) -> None:
    f224 = torch.from_numpy(resize_frames(frames["another", "videocapture"][:12]))
    with torch.inference_mode():
        a = model.lip_embeddings(f224, 8, chunk=8)
        b = model.lip_embeddings(f224, 8, chunk=3)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-5)


def test_folded_plans_follow_weight_changes(syncnet_checkpoint: Path) -> None:
    """The cached BatchNorm-folded plans are rebuilt after in-place weight updates and load_state_dict."""
    net = load_syncnet(syncnet_checkpoint, "cpu")
    win = torch.randn(3, 1, 13, 20) * 10
    with torch.inference_mode():
        before = net.audio_embeddings(win)
    with torch.no_grad():
        net.netcnnaud[1].running_mean.add_(1.0)                # in place: same storage, new version
    with torch.inference_mode():
        after, reference = net.audio_embeddings(win), net.forward_aud(win)
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, reference, atol=1e-3, rtol=1e-5)
    net.load_state_dict(torch.load(syncnet_checkpoint))
    with torch.inference_mode():
        torch.testing.assert_close(net.audio_embeddings(win), before, atol=0, rtol=0)
