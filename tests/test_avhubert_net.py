"""AV-HuBERT network parity against the reference fixture (stand-in weights, official file layout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkbench.nets.avhubert import (AVHubertConfig, AVHubertModel, align_audio_to_video, audio_input,
                                     encode_audio, sinusoidal_table, video_input)
from test_avhubert_common import FIXTURE, arrays, expected_json, loaded_parity_model, video_of

CLIPS = ("meeting", "another")


def close(actual, expected, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def parity():
    return loaded_parity_model()


def test_video_input_formula_matches_fixture_frame0() -> None:
    inputs = arrays("inputs.npz")
    for clip in CLIPS:
        video = video_input(inputs[f"{clip}.input_gray_uint8_crop88"])
        assert video.shape == (1, 1, inputs[f"{clip}.input_gray_uint8_crop88"].shape[0], 88, 88)
        assert video.dtype == torch.float32
        np.testing.assert_array_equal(video[0, 0, 0].numpy(), inputs[f"{clip}.input_video_frame0"])


@pytest.mark.parametrize("clip", CLIPS)
def test_encoder_intermediates_match_reference(parity, clip: str) -> None:
    model, _ = parity
    w2v = model.encoder.w2v_model
    expected = arrays("expected.npz")
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            captured[name] = output.detach()
        return hook

    handles = [
        w2v.feature_extractor_video.resnet.frontend3D.register_forward_hook(keep("frontend3D")),
        w2v.feature_extractor_video.resnet.register_forward_hook(keep("resnet_out")),
        w2v.feature_extractor_video.register_forward_hook(keep("video_proj")),
        w2v.layer_norm.register_forward_hook(keep("fused_layer_norm")),
        w2v.post_extract_proj.register_forward_hook(keep("post_extract_proj")),
        w2v.encoder.pos_conv.register_forward_hook(keep("pos_conv")),
    ] + [layer.register_forward_hook(keep(f"enc_layer{i}")) for i, layer in enumerate(w2v.encoder.layers)]
    try:
        with torch.no_grad():
            out = model.encode(video_of(clip), None)
    finally:
        for h in handles:
            h.remove()
    frontend = captured["frontend3D"][0]
    close(frontend[:, 0], expected[f"{clip}.frontend3D_frame0"])
    close(frontend.mean(dim=(2, 3)), expected[f"{clip}.frontend3D_mean_over_hw"])
    for name in ("resnet_out", "video_proj", "pos_conv", "fused_layer_norm", "post_extract_proj",
                 "enc_layer0", "enc_layer1"):
        close(captured[name][0], expected[f"{clip}.{name}"])
    close(out[0], expected[f"{clip}.encoder_out"])


def test_output_layer_returns_that_layer_without_final_norm(parity) -> None:
    model, _ = parity
    with torch.no_grad():
        first = model.encoder.w2v_model.extract_features(None, video_of("meeting"), None, output_layer=1)
        full = model.encoder.w2v_model.extract_features(None, video_of("meeting"), None)
    close(first[0], arrays("expected.npz")["meeting.enc_layer0"])
    assert not torch.allclose(first, full)


def test_batched_padded_encoder_matches_reference(parity) -> None:
    model, _ = parity
    another, meeting = video_of("another"), video_of("meeting")
    frames = another.shape[2]
    video = torch.zeros(2, 1, frames, 88, 88)
    video[0] = another[0]
    video[1, :, : meeting.shape[2]] = meeting[0]
    padding = torch.zeros(2, frames, dtype=torch.bool)
    padding[1, meeting.shape[2]:] = True
    with torch.no_grad():
        out = model.encode(video, padding)
    expected = arrays("expected.npz")
    close(out[0], expected["batched.another.encoder_out"])
    close(out[1, : meeting.shape[2]], expected["batched.meeting.encoder_out"])


@pytest.mark.parametrize("clip", CLIPS)
def test_teacher_forced_logits_match_reference(parity, clip: str) -> None:
    model, tokenizer = parity
    info, expected = expected_json(), arrays("expected.npz")
    prev = torch.tensor([info[f"{clip}.prev_output_tokens"]])
    assert tokenizer.encode(info[f"{clip}.transcript"]) == info[f"{clip}.target_tokens"]
    with torch.no_grad():
        logits = model.forward_teacher(video_of(clip), None, prev)
        first3 = model.forward_teacher(video_of(clip), None, prev[:, :3])
    close(logits[0], expected[f"{clip}.tf_logits_full"])
    close(torch.log_softmax(logits, -1)[0], expected[f"{clip}.tf_logprobs_full"])
    close(first3[0], expected[f"{clip}.tf_logits_first3"])


@pytest.mark.parametrize("name", ["meeting", "meeting_trunc40000"])
def test_audio_only_path_matches_reference(parity, name: str) -> None:
    from talkbench.media import read_wav_int16

    model, _ = parity
    w2v = model.encoder.w2v_model
    inputs, expected = arrays("inputs.npz"), arrays("expected.npz")
    samples = read_wav_int16(FIXTURE / "meeting.wav")
    if name.endswith("trunc40000"):
        samples = samples[:40000]
    features = audio_input(samples)
    close(features[0], inputs[f"audio.{name}.input_audio_BFT"], atol=1e-5)
    captured = {}
    handles = [w2v.feature_extractor_audio.register_forward_hook(lambda m, i, o: captured.setdefault("proj", o)),
               w2v.layer_norm.register_forward_hook(lambda m, i, o: captured.setdefault("fused", o))]
    try:
        out = encode_audio(w2v, samples)
    finally:
        for h in handles:
            h.remove()
    close(captured["proj"][0], expected[f"audio.{name}.audio_proj"])
    close(captured["fused"][0], expected[f"audio.{name}.fused_layer_norm"])
    close(out[0], expected[f"audio.{name}.encoder_out"])


def test_align_audio_to_video_rules() -> None:
    feats = np.arange(10, dtype=np.float32).reshape(10, 1)
    np.testing.assert_array_equal(align_audio_to_video(feats, 7, "avhubert")[:, 0], np.arange(7))
    np.testing.assert_array_equal(align_audio_to_video(feats, 7, "talklip")[:, 0], np.arange(1, 8))
    padded = align_audio_to_video(feats, 12, "talklip")
    assert padded.shape == (12, 1) and not padded[10:].any()
    with pytest.raises(ValueError):
        align_audio_to_video(feats, 7, "middle")


def test_sinusoidal_table_layout() -> None:
    table = sinusoidal_table(2050, 64, padding_idx=1)
    assert not table[1].any()
    half = 32
    freq = np.exp(np.arange(half) * -(np.log(10000) / (half - 1)))
    np.testing.assert_allclose(table[2, :half].numpy(), np.sin(2 * freq), atol=1e-6)
    np.testing.assert_allclose(table[2, half:].numpy(), np.cos(2 * freq), atol=1e-6)


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="divisible"):
        AVHubertConfig(encoder_embed_dim=100, encoder_attention_heads=12)
    with pytest.raises(ValueError, match="sub_encoder_layers"):
        AVHubertConfig(sub_encoder_layers=2)


def test_audio_only_model_without_video_frontend_rejects_video() -> None:
    cfg = AVHubertConfig.for_talklip(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                                     encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, video_frontend=False)
    model = AVHubertModel(cfg).eval()
    assert not any(k.startswith("feature_extractor_video") for k in model.state_dict())
    with torch.no_grad():
        out = model.extract_features(torch.randn(2, 104, 9), None)
    assert out.shape == (2, 9, 32)
    with pytest.raises(ValueError, match="video front-end"):
        model.extract_features(None, torch.zeros(1, 1, 3, 88, 88))


def test_padding_does_not_change_real_frames() -> None:
    torch.manual_seed(0)
    cfg = AVHubertConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                         conv_pos=8, conv_pos_groups=4, video_frontend=False, decoder_layers=0)
    model = AVHubertModel(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    audio = torch.randn(1, 104, 6)
    padded = torch.cat([audio, torch.randn(1, 104, 4)], dim=2)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 6:] = True
    with torch.no_grad():
        alone = model.extract_features(audio, None)
        batch = model.extract_features(padded, None, mask)
    close(batch[0, :6], alone[0].numpy(), atol=1e-5)


def test_video_front_end_in_time_chunks_equals_one_pass() -> None:
    # long clips run the ResNet front end in chunks (memory); the stem's ±2-frame Conv3d is fed from the neighbours
    from talkbench.nets.avhubert import ResEncoder

    torch.manual_seed(0)
    encoder = ResEncoder().eval()
    for module in encoder.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    video = torch.randn(1, 1, 21, 88, 88)
    with torch.no_grad():
        whole = encoder(video)
        encoder.chunk_frames = 4
        chunked = encoder(video)
    assert chunked.shape == whole.shape == (1, 512, 21)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    encoder.chunk_frames = 4
    with torch.no_grad():  # a wrong halo (no neighbours) would differ at the chunk borders
        cut = torch.cat([encoder._forward(video[:, :, s:s + 4]) for s in range(0, 21, 4)], dim=2)
    assert (cut - whole).abs().max() > 1e-3
