"""Mini SyncNet: the width option of talkbench.nets.syncnet, its file format, its training loss, audio shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkbench import lse
from talkbench.nets import mini_syncnet as S
from talkbench.nets.syncnet import SyncNet
from talkbench.train import mini_observers as T


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_official_width_is_unchanged_and_width_scales_channels():
    full = SyncNet()
    assert full.netcnnlip[0].weight.shape == (96, 3, 5, 7, 7)
    assert full.netfclip[3].weight.shape == (1024, 512)
    mini = S.build_mini_syncnet(0.125, 128)
    assert mini.netcnnlip[0].weight.shape == (12, 3, 5, 7, 7)
    assert mini.netcnnaud[18].weight.shape == (64, 32, 5, 4)
    assert mini.netfcaud[3].weight.shape == (128, 64)
    assert set(mini.state_dict()) == set(full.state_dict())  # official key names at every width
    with pytest.raises(ValueError, match="width"):
        SyncNet(width=0)


def test_folded_inference_path_matches_reference_forward_at_reduced_width():
    torch.manual_seed(0)
    model = S.build_mini_syncnet()
    _randomise_bn(model)
    model.eval()
    frames = torch.randint(0, 256, (7, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        fast = model.lip_embeddings(frames, 3)
        windows = torch.stack([frames[i:i + 5] for i in range(3)]).permute(0, 4, 1, 2, 3).float()
        ref = model.forward_lip(windows)
        mfcc = torch.randn(4, 1, 13, 20)
        assert torch.allclose(model.audio_embeddings(mfcc), model.forward_aud(mfcc), atol=1e-4, rtol=1e-4)
    assert fast.shape == (3, 128)
    assert torch.allclose(fast, ref, atol=1e-3, rtol=1e-4)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = S.build_mini_syncnet(0.0625, 32).eval()
    S.save_mini_syncnet(model, tmp_path / "s.pt", {"steps": 3})
    loaded, meta = S.load_mini_syncnet(tmp_path / "s.pt")
    assert meta == {"steps": 3} and loaded.width == 0.0625
    x = torch.randn(2, 1, 13, 20)
    assert torch.equal(model.forward_aud(x), loaded.forward_aud(x))
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    obj["width"] = 0.125
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="shape mismatches"):
        S.load_mini_syncnet(tmp_path / "bad.pt")


def test_shift_audio():
    a = np.arange(1, 6401, dtype=np.int16)
    late = T.shift_audio(a, 2)
    early = T.shift_audio(a, -2)
    assert len(late) == len(early) == len(a)
    assert (late[:1280] == 0).all() and late[1280] == 1
    assert early[0] == 1281 and (early[-1280:] == 0).all()


def test_tiny_training_run_lowers_the_offset_loss():
    from talkbench.synthetic.corpus import ClipSpec, make_clip

    clip = T.item_from_synth(make_clip(ClipSpec("train", 0, 0, 4)), keep_frames=True)
    mfcc, n = T._sync_clip_tensors(clip)
    starts = [2, 12, 22]
    videos = T._video_windows(clip.frames, starts)
    rows = [(s, 0, n) for s in starts]
    torch.manual_seed(0)
    model = S.build_mini_syncnet(0.0625, 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, logits, targets = T.sync_loss(model, videos, mfcc, rows, max_offset=15)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert logits.shape == (3, n) and torch.isinf(logits[0, 20:]).all()   # window 2 sees offsets up to +15 only
    assert losses[-1] < 0.7 * losses[0], losses
    assert lse.count_windows(len(clip.frames), len(clip.audio)) == n
