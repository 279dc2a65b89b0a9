"""TalkLip networks: parity with the reference (stand-in weights) and official-layout loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from recipe import fill, filled_state_dict
from talkbench.nets.talklip import (AVSyncHead, CheckpointError, TalkLipDiscriminator, TalkLipGenerator,
                                    infer_generator_spec, load_talklip_discriminator, save_talklip_checkpoint,
                                    shift_negative_indices, unwrap_state_dict)

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fx():
    d = FIXTURES / "talklip"
    return {"dir": d, "npz": dict(np.load(d / "expected.npz")), "json": json.loads((d / "expected.json").read_text())}


@pytest.fixture(scope="module")
def gen_sd(fx):
    return filled_state_dict(fx["dir"] / "keys.json")


class _Rows(torch.nn.Module):
    """Stand-in audio encoder: the U-Net tests feed the reference's encoder output directly."""

    def forward(self, audio, padding_mask):
        return audio


def _unet(gen_sd) -> TalkLipGenerator:
    model = TalkLipGenerator(_Rows(), 64)
    model.load_state_dict({k: v for k, v in gen_sd.items() if not k.startswith("audio_encoder.")}, strict=True)
    return model.eval()


def test_recipe_checksums_match_fixture(fx):
    for name, key in (("keys.json", "recipe_checksum_keys_json"), ("keys_disc.json", "recipe_checksum_keys_disc_json")):
        spec = json.loads((fx["dir"] / name).read_text())
        filled = fill([(k, s) for k, s, *_ in spec["keys"]], spec["seed"])
        # the recipe's checksum: per-tensor abs-sum in the tensor's own dtype, summed as Python floats
        total = sum(float(np.abs(v).sum()) for v in filled.values())
        assert total == pytest.approx(fx["json"][key], rel=1e-7)


def test_unet_matches_reference(fx, gen_sd):
    ex = fx["npz"]
    model = _unet(gen_sd)
    crops = torch.from_numpy(ex["crops96_bgr_u8"]).float().div(255).permute(0, 3, 1, 2)
    ref = torch.from_numpy(ex["ref_crop96_bgr_u8"]).float().div(255).permute(2, 0, 1)
    target = crops.clone()
    target[:, :, 48:] = 0
    inp = torch.cat([target, ref.expand_as(crops)], 1)
    rows = torch.from_numpy(ex["audio_enc_out"])[torch.from_numpy(ex["idAudio"])]
    feats = {}
    hooks = [model.face_encoder_blocks[6].register_forward_hook(lambda m, i, o: feats.__setitem__("enc", o)),
             model.face_decoder_blocks[0].register_forward_hook(lambda m, i, o: feats.__setitem__("dec0", o))]
    with torch.no_grad():
        pred = model.decode_faces(inp, rows)
        audio_map = model.audio_map(rows)
    for h in hooks:
        h.remove()
    np.testing.assert_allclose(audio_map.numpy(), ex["audio_map_out"], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(feats["enc"].numpy(), ex["face_enc_bottleneck"], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(feats["dec0"].numpy(), ex["face_dec0"], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(pred[:3].numpy(), ex["pred"], atol=ATOL, rtol=ATOL)
    assert float(pred.mean()) == pytest.approx(fx["json"]["pred_mean"], abs=1e-5)
    assert float(pred.abs().sum()) == pytest.approx(fx["json"]["pred_abs_sum"], rel=1e-5)
    # inf_demo variant: reference = the same frame, unmasked
    same = torch.cat([target[:1], crops[:1]], 1)
    with torch.no_grad():
        demo = model.decode_faces(same, rows[:1])
    np.testing.assert_allclose(demo.numpy(), ex["pred_demo_ref_same_frame0"], atol=ATOL, rtol=ATOL)


def test_unet_batch_independent(gen_sd):
    model = _unet(gen_sd)
    g = torch.Generator().manual_seed(0)
    faces, rows = torch.rand(3, 6, 96, 96, generator=g), torch.randn(3, 64, generator=g)
    with torch.no_grad():
        whole = model.decode_faces(faces, rows)
        single = torch.cat([model.decode_faces(faces[i:i + 1], rows[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-5)


def test_discriminator_matches_reference(fx, tmp_path):
    ex = fx["npz"]
    sd = filled_state_dict(fx["dir"] / "keys_disc.json")
    path = tmp_path / "disc.pth"
    torch.save({"state_dict": sd, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    disc = load_talklip_discriminator(path)
    fake = torch.from_numpy(ex["pred"])
    with torch.no_grad():
        blocks = disc.block_outputs(fake)
        np.testing.assert_allclose(blocks[3][:1].numpy(), ex["disc_fake_block3_f0"], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(blocks[6].numpy(), ex["disc_fake_block6"][:3], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(disc.logits(fake).numpy().ravel(), ex["disc_fake_logit"].ravel()[:3], atol=1e-5)
        np.testing.assert_allclose(disc(fake).numpy(), ex["disc_fake"][:3], atol=ATOL)
        gt = torch.from_numpy(ex["crops96_bgr_u8"]).float().div(255).permute(0, 3, 1, 2)
        np.testing.assert_allclose(disc(gt).numpy(), ex["disc_real"], atol=ATOL)


def test_sync_head_matches_reference(fx, gen_sd):
    ex = fx["npz"]
    head = AVSyncHead(64)
    head.load_state_dict({"Linearaudio.weight": gen_sd["sync_net.Linearaudio.weight"],
                          "Linearaudio.bias": gen_sd["sync_net.Linearaudio.bias"]})
    video, audio = torch.from_numpy(ex["sync_video_in"]), torch.from_numpy(ex["sync_audio_in"])
    neg = torch.from_numpy(ex["sync_neg_idxs"])
    assert torch.equal(shift_negative_indices(torch.from_numpy(ex["sync_neg_idxs_raw"])), neg)
    with torch.no_grad():
        np.testing.assert_allclose(head.logits(video, audio, neg).numpy(), ex["sync_logits"], atol=ATOL, rtol=ATOL)
        assert float(head(video, audio, neg)) == pytest.approx(fx["json"]["sync"]["loss"], abs=ATOL)
        # the reference draws its negatives with torch.multinomial right after torch.manual_seed(1234)
        torch.manual_seed(fx["json"]["sync"]["torch_manual_seed"])
        assert torch.equal(head.sample_negatives(16), neg)


def test_negative_sampling_excludes_self():
    head = AVSyncHead(8)
    neg = head.sample_negatives(30, torch.Generator().manual_seed(3))
    assert neg.shape == (30, 15)
    assert not (neg == torch.arange(30).view(-1, 1)).any()
    assert all(len(set(row.tolist())) == 15 for row in neg)


def test_spec_inferred_from_tiny_and_full_keys(fx):
    for name, width, layers, ffn, heads in (("keys.json", 64, 2, 128, 4), ("keys_full.json", 768, 12, 3072, 12)):
        spec_json = json.loads((fx["dir"] / name).read_text())
        sd = {k: torch.empty(s, device="meta") for k, s, *_ in spec_json["keys"]}
        spec = infer_generator_spec(sd)
        assert spec.audio_dim == width and spec.res_layers == 7
        enc = spec.encoder
        assert (enc["encoder_embed_dim"], enc["encoder_layers"], enc["encoder_ffn_embed_dim"]) == (width, layers, ffn)
        assert enc["encoder_attention_heads"] == heads
        assert enc["conv_pos"] == 128 and enc["conv_pos_groups"] == 16
        assert enc["label_embs_shape"] == (2004, 256) and enc["video_frontend"]


def test_unwrap_rejects_other_files():
    with pytest.raises(CheckpointError, match="not a TalkLip checkpoint"):
        unwrap_state_dict({"model": {"x": torch.zeros(1)}}, "x.pt")
    sd = {"module.a": torch.zeros(1)}
    assert list(unwrap_state_dict({"state_dict": sd})) == ["a"]


def test_discriminator_loader_lists_bad_keys(tmp_path):
    sd = TalkLipDiscriminator().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["binary_pred.0.bias"]
    path = tmp_path / "d.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: binary_pred.0.bias.*unexpected keys: extra.weight"):
        load_talklip_discriminator(path)


def test_save_checkpoint_official_layout(tmp_path):
    disc = TalkLipDiscriminator()
    opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    path = tmp_path / "disc_checkpoint_step000000001.pth"
    save_talklip_checkpoint(path, disc, opt, global_step=1, global_epoch=0)
    raw = torch.load(path, weights_only=False)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert raw["global_step"] == 1 and raw["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert not list(tmp_path.glob("*.tmp"))
    load_talklip_discriminator(path)


def test_fused_inference_copy_matches_reference(fx, gen_sd, tmp_path):
    from talkbench.nets.talklip import fuse_for_inference, load_talklip_generator

    path = tmp_path / "g.pth"
    torch.save({"state_dict": gen_sd, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    model = load_talklip_generator(path, attention_heads=4)
    fused = fuse_for_inference(model)
    def unet_bn(m):
        return [k for k in m.state_dict() if k.startswith("face_") and "running_mean" in k]

    assert unet_bn(model) and not unet_bn(fused)
    ex = fx["npz"]
    crops = torch.from_numpy(ex["crops96_bgr_u8"][:3]).float().div(255).permute(0, 3, 1, 2)
    ref = torch.from_numpy(ex["ref_crop96_bgr_u8"]).float().div(255).permute(2, 0, 1)
    target = crops.clone()
    target[:, :, 48:] = 0
    audio = torch.from_numpy(ex["audio_feats_ln"].T.copy())[None]
    with torch.no_grad():
        pred, emb = fused(torch.cat([target, ref.expand_as(crops)], 1), audio, torch.from_numpy(ex["idAudio"][:3]))
    np.testing.assert_allclose(emb[0].numpy(), ex["audio_enc_out"], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(pred.numpy(), ex["pred"], atol=ATOL, rtol=ATOL)


@pytest.mark.slow
def test_full_size_generator_file_loads_and_runs(fx, tmp_path):
    """A full-size (AV-HuBERT Base, 137.6 M numbers) stand-in file in the official layout, through the loader."""
    from talkbench.nets.talklip import load_talklip_generator

    path = tmp_path / "talklip_full.pth"
    torch.save({"state_dict": filled_state_dict(fx["dir"] / "keys_full.json"), "optimizer": None, "global_step": 0,
                "global_epoch": 0}, path)
    model = load_talklip_generator(path)
    assert sum(v.numel() for v in model.state_dict().values()) == 137631092
    assert model.audio_encoder.w2v_model.cfg.encoder_attention_heads == 12
    with torch.no_grad():
        faces, emb = model(torch.rand(2, 6, 96, 96), torch.randn(1, 104, 10), torch.tensor([0, 5]))
    assert faces.shape == (2, 3, 96, 96) and emb.shape == (1, 10, 768)
