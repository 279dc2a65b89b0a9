"""Public training losses: lip-reading (hybrid video through a frozen expert), contrastive, GAN."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkbench.generate import paste_faces
from talkbench.train.losses import (AVContrastiveLoss, LipReadingLoss, collate_targets, compose_hybrid_video,
                              expert_video_input, gan_discriminator_loss, gan_generator_loss, label_smoothed_nll,
                              pick_rows, sample_span_starts, span_frames)
from talkbench.nets.talklip import TalkLipDiscriminator
from test_talklip_support import read_frames, tiny_expert, tiny_tokenizer, transcript


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def expert():
    return tiny_expert()


def test_span_starts_follow_reference_rules():
    rng = random.Random(0)
    for n in (6, 9, 40, 73, 150):
        starts = sample_span_starts(n, 0.08, 5, train=True, rng=rng)
        assert starts == sorted(starts) and 1 <= starts[0] and starts[-1] <= n - 5
        assert all(b - a >= 5 for a, b in zip(starts, starts[1:]))
        assert len(starts) <= max(int(n * 0.08), 1)
    assert sample_span_starts(73, train=False) == list(range(0, 69, 8))
    assert span_frames([3, 10], 2) == [3, 4, 10, 11]
    with pytest.raises(ValueError, match="too short"):
        sample_span_starts(5, span=5)


def test_collate_targets_moves_eos_to_front():
    target, prev = collate_targets([[5, 6, 2], [7, 2]])
    assert target.tolist() == [[5, 6, 2], [7, 2, 1]]
    assert prev.tolist() == [[2, 5, 6], [2, 7, 1]]
    with pytest.raises(ValueError, match="eos"):
        collate_targets([[5, 6]])


def test_label_smoothed_nll_formula():
    g = torch.Generator().manual_seed(0)
    lprobs = F.log_softmax(torch.randn(6, 11, generator=g), -1)
    target = torch.tensor([1, 3, 4, 1, 10, 0])
    loss, nll = label_smoothed_nll(lprobs, target, 0.1, ignore_index=1)
    keep = target != 1
    want_nll = -lprobs[keep, target[keep]].sum()
    eps_i = 0.1 / 10
    want = (1 - 0.1 - eps_i) * want_nll + eps_i * (-lprobs[keep].sum())
    torch.testing.assert_close(nll, want_nll)
    torch.testing.assert_close(loss, want)


def test_expert_input_is_reference_transform():
    frames = read_frames("meeting", 4)
    video, mask = expert_video_input([torch.from_numpy(frames)], length=6)
    assert video.shape == (1, 1, 6, 88, 88) and mask.tolist() == [[False] * 4 + [True] * 2]
    f = frames.astype(np.float64)
    grey = 0.299 * f[..., 2] + 0.587 * f[..., 1] + 0.114 * f[..., 0]
    want = (grey[:, 36:124, 36:124] / 255.0 - 0.421) / 0.165
    np.testing.assert_allclose(video[0, 0, :4].numpy(), want, atol=1e-5)
    assert float(video[0, 0, 4:].abs().max()) == 0.0


def test_hybrid_video_truncates_to_paste_back():
    frames = read_frames("meeting", 6)
    boxes = np.array([[10, 12, 150, 158]] * 6)
    faces = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    hybrid = compose_hybrid_video(torch.from_numpy(frames), boxes, faces, [1, 4])
    np.testing.assert_array_equal(hybrid.numpy().astype(np.uint8), paste_faces(frames, boxes, faces, [1, 4]))
    np.testing.assert_array_equal(hybrid[0].numpy(), frames[0].astype(np.float32))


class TinyGenerator(torch.nn.Module):
    """Any generator: 6×96×96 inputs -> faces in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


def _lip_setup(expert):
    torch.manual_seed(0)
    frames = torch.from_numpy(read_frames("meeting", 10))
    boxes = np.tile([0, 0, 160, 160], (10, 1))
    picked = [2, 3, 4, 5, 6]
    crops = F.interpolate(frames[picked].permute(0, 3, 1, 2).float() / 255, size=(96, 96), mode="bilinear")
    inputs = torch.cat([crops, crops], 1)
    target, prev = collate_targets([tiny_tokenizer().encode(transcript("meeting"))[:6] + [2]])
    return frames, boxes, picked, inputs, target, prev


def test_lip_loss_gradients_reach_generator_and_loss_falls(expert):
    frames, boxes, picked, inputs, target, prev = _lip_setup(expert)
    gen = TinyGenerator()
    lip = LipReadingLoss(expert, label_smoothing=0.1)
    lip.train()
    assert not expert.training and not any(p.requires_grad for p in expert.parameters())
    opt = torch.optim.Adam(gen.parameters(), lr=0.05)
    losses = []
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    for _ in range(6):
        opt.zero_grad()
        hybrid = compose_hybrid_video(frames, boxes, gen(inputs), picked)
        video, mask = expert_video_input([hybrid])
        out = lip(video, mask, target, prev)
        out.loss.backward()
        assert gen.conv.weight.grad is not None and float(gen.conv.weight.grad.abs().sum()) > 0
        losses.append(float(out.loss.detach()))
        opt.step()
    assert out.n_tokens == 7 and out.encoder_out.shape == (1, 10, 64)
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(torch.equal(before[k], v) for k, v in expert.state_dict().items())


def test_contrastive_loss_gradients_and_overfit():
    g = torch.Generator().manual_seed(0)
    audio_emb = torch.randn(2, 12, 16, generator=g, requires_grad=True)
    expert_feats = torch.randn(2, 12, 16, generator=g)
    index = torch.tensor([1, 2, 3, 4, 5, 13, 14, 15, 16, 17])
    loss_fn = AVContrastiveLoss(16, 16)
    assert loss_fn.num_negatives(10) == 5
    opt = torch.optim.Adam([audio_emb, *loss_fn.parameters()], lr=0.05)
    values = []
    for step in range(8):
        opt.zero_grad()
        video, audio = pick_rows(audio_emb, expert_feats, index)
        neg = loss_fn.sample_negatives(len(index), torch.Generator().manual_seed(step))
        loss = loss_fn(video, audio, neg)
        loss.backward()
        assert float(audio_emb.grad.abs().sum()) > 0 and loss_fn.Linearaudio.weight.grad is not None
        values.append(float(loss.detach()))
        opt.step()
    assert values[-1] < values[0] - 0.1, values


def test_contrastive_rows_pick_batch_major():
    a = torch.arange(2 * 3 * 1, dtype=torch.float).view(2, 3, 1)
    v, au = AVContrastiveLoss.rows(a, -a, torch.tensor([0, 4]))
    assert au.view(-1).tolist() == [0.0, 4.0] and v.view(-1).tolist() == [0.0, -4.0]


def test_gan_losses_are_reference_bce():
    disc = TalkLipDiscriminator().eval()
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(2, 3, 96, 96, generator=g), torch.rand(2, 3, 96, 96, generator=g)
    with torch.no_grad():
        p_real, p_fake = disc(real), disc(fake)
        loss_real, loss_fake = gan_discriminator_loss(disc, real, fake)
        assert float(loss_real) == pytest.approx(float(-torch.log(p_real).mean()), rel=1e-5)
        assert float(loss_fake) == pytest.approx(float(-torch.log(1 - p_fake).mean()), rel=1e-5)
        assert float(gan_generator_loss(disc, fake)) == pytest.approx(float(-torch.log(p_fake).mean()), rel=1e-5)
    fake.requires_grad_(True)
    _, loss_fake = gan_discriminator_loss(disc, real, fake)
    loss_fake.backward()
    assert fake.grad is None   # the discriminator term never reaches the generator
