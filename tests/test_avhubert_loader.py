"""Loading official AV-HuBERT fairseq files: cfg parsing, task_state, strict keys, fp16, full Base/Large layouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from recipe import filled_state_dict
from talkbench.nets.avhubert import (AVHubertConfig, AVHubertModel, AVHubertSeq2Seq, CheckpointError,
                                     load_avhubert_encoder, load_avhubert_seq2seq)
from talkbench.nets.avhubert_tokenizer import Tokenizer
from talkbench.nets.onednn_linear import OneDNNLinear, onednn_available
from talkbench.safe_unpickle import load_checkpoint
from test_avhubert_common import FIXTURE, filled_checkpoint, save_official_layout

FLOAT_TENSOR = "decoder.embed_positions._float_tensor"


def test_stub_loads_with_cfg_sizes_and_task_state_tokenizer() -> None:
    model, tokenizer = load_avhubert_seq2seq(FIXTURE / "checkpoint_stub.pt")
    cfg = model.cfg
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads) == \
        (2, 64, 128, 4)
    assert (cfg.decoder_layers, cfg.decoder_embed_dim, cfg.decoder_attention_heads, cfg.vocab_size) == (2, 64, 4, 200)
    assert cfg.layer_norm_first and cfg.decoder_normalize_before and cfg.share_decoder_input_output_embed
    assert cfg.label_embs_shape == (16, 32) and cfg.final_proj_out is None
    assert model.task_spec["max_sample_size"] == 500 and model.task_spec["image_mean"] == pytest.approx(0.421)
    assert not model.training
    assert all(not p.is_meta for p in model.parameters())
    if onednn_available():  # CPU inference: linears on oneDNN, the beam-search decoder's weights packed
        assert type(model.encoder.w2v_model.encoder.layers[0].fc1) is OneDNNLinear
        assert not model.encoder.w2v_model.encoder.layers[0].fc1.packed and model.decoder.layers[0].fc1.packed
    assert float(model.decoder.embed_tokens.weight.detach().abs().sum()) == 0.0  # the stub's zero tensors
    files = Tokenizer.from_files(FIXTURE / "spm_unigram200.model", FIXTURE / "dict.wrd.txt")
    assert tokenizer.dictionary.symbols == files.dictionary.symbols
    text = "The meeting about the media starts at nine"
    assert tokenizer.encode(text) == files.encode(text) == expected_target("meeting")


def expected_target(clip: str) -> list[int]:
    return json.loads((FIXTURE / "expected.json").read_text())[f"{clip}.target_tokens"]


def test_loaded_weights_equal_the_recipe(tmp_path: Path) -> None:
    model, _ = load_avhubert_seq2seq(filled_checkpoint(tmp_path))
    ref = filled_state_dict(FIXTURE / "keys.json")
    state = model.state_dict()
    assert set(state) == set(ref) - {FLOAT_TENSOR}
    for key in ("encoder.w2v_model.encoder.pos_conv.0.weight_g", "decoder.layers.1.fc2.weight",
                "encoder.w2v_model.feature_extractor_video.resnet.trunk.layer4.1.relu2.weight"):
        assert torch.equal(state[key], ref[key])


def _build_meta(keys_json: str, which: str) -> tuple[AVHubertSeq2Seq, dict]:
    fields = json.loads((FIXTURE / "cfg_fields.json").read_text())[which]
    spec = json.loads((FIXTURE / keys_json).read_text())
    shapes = {k: tuple(s) for k, s, *_ in spec["keys"]}
    cfg_model = dict(fields["model"])
    cfg_model["w2v_args"] = {"model": fields["model.w2v_args.model"], "task": fields["model.w2v_args.task"]}
    cfg = AVHubertConfig.from_fairseq_cfg(
        cfg_model, vocab_size=shapes["decoder.embed_tokens.weight"][0],
        label_embs_shape=shapes["encoder.w2v_model.label_embs_concat"])
    with torch.device("meta"):
        return AVHubertSeq2Seq(cfg), shapes


@pytest.mark.parametrize("keys_json,which", [("keys_base.json", "base_as_built_here"),
                                             ("keys_large.json", "large_as_built_here")])
def test_full_size_key_layouts_match_reference(keys_json: str, which: str) -> None:
    model, shapes = _build_meta(keys_json, which)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes.pop(FLOAT_TENSOR)
    assert ours == shapes
    params = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    assert params == sum(int(torch.Size(s).numel()) for k, s in shapes.items() if not k.endswith("num_batches_tracked"))


def test_large_meta_model_size_matches_the_card() -> None:
    model, _ = _build_meta("keys_large.json", "large_as_built_here")
    state_numbers = sum(v.numel() for v in model.state_dict().values())
    assert state_numbers + 1 == 477341821  # the card counts the file's entries, incl. the 1-element _float_tensor
    assert sum(p.numel() for p in model.parameters()) == 477341821 - 9621  # minus BN statistics + marker


def test_wrong_file_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = dict(load_checkpoint(FIXTURE / "checkpoint_stub.pt")["model"])
    state.pop("decoder.layers.1.fc1.weight")
    state["decoder.layers.1.extra_norm.weight"] = torch.zeros(64)
    path = save_official_layout(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_avhubert_seq2seq(path)
    message = str(info.value)
    assert "bad.pt" in message and "missing keys: decoder.layers.1.fc1.weight" in message
    assert "unexpected keys: decoder.layers.1.extra_norm.weight" in message


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    state = dict(load_checkpoint(FIXTURE / "checkpoint_stub.pt")["model"])
    state["decoder.layers.0.fc1.weight"] = torch.zeros(96, 64)
    with pytest.raises(CheckpointError, match=r"shape mismatches: decoder.layers.0.fc1.weight \(96, 64\)"):
        load_avhubert_seq2seq(save_official_layout(state, tmp_path / "shape.pt"))


def test_not_a_fairseq_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_avhubert_seq2seq(path)


def test_pretraining_cfg_is_refused_by_the_seq2seq_loader(tmp_path: Path) -> None:
    ckpt = load_checkpoint(FIXTURE / "checkpoint_stub.pt")
    cfg = dict(ckpt["cfg"])
    cfg["model"] = dict(cfg["model"]["w2v_args"]["model"])
    path = save_official_layout(dict(ckpt["model"]), tmp_path / "pre.pt", cfg=cfg)
    with pytest.raises(CheckpointError, match="not an AV-HuBERT seq2seq"):
        load_avhubert_seq2seq(path)


def test_fp16_file_loads_as_float32(tmp_path: Path) -> None:
    ref = filled_state_dict(FIXTURE / "keys.json")
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ref.items()}
    model, _ = load_avhubert_seq2seq(save_official_layout(half, tmp_path / "half.pt"))
    weight = model.decoder.layers[0].fc1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, ref["decoder.layers.0.fc1.weight"].half().float())


def test_legacy_args_namespace_and_missing_task_state(tmp_path: Path) -> None:
    ckpt = load_checkpoint(FIXTURE / "checkpoint_stub.pt")
    cfg = ckpt["cfg"]
    w2v = argparse.Namespace(**cfg["model"]["w2v_args"]["model"])
    flat = {**cfg["task"], **{k: v for k, v in cfg["model"].items() if k != "w2v_args"}}
    flat.pop("_name")
    args = argparse.Namespace(**flat, w2v_args=w2v, arch="av_hubert_seq2seq")
    path = save_official_layout(dict(ckpt["model"]), tmp_path / "legacy.pt", cfg=None, args=args, task_state=None)
    with pytest.raises(CheckpointError, match="no task_state"):
        load_avhubert_seq2seq(path)
    model, tokenizer = load_avhubert_seq2seq(path, tokenizer_files=(FIXTURE / "spm_unigram200.model",
                                                                    FIXTURE / "dict.wrd.txt"))
    assert model.cfg.encoder_layers == 2 and model.cfg.decoder_layers == 2 and len(tokenizer.dictionary) == 200
    assert model.task_spec["max_sample_size"] == 500


def test_dictionary_size_must_match_decoder(tmp_path: Path) -> None:
    small = tmp_path / "dict.txt"
    small.write_text("".join(f"w{i} 1\n" for i in range(10)))
    with pytest.raises(CheckpointError, match="dictionary has 14 symbols but the decoder 200"):
        load_avhubert_seq2seq(FIXTURE / "checkpoint_stub.pt", tokenizer_files=(FIXTURE / "spm_unigram200.model", small))


def test_encoder_only_loader_reads_seq2seq_and_pretraining_files(tmp_path: Path) -> None:
    seq2seq = filled_checkpoint(tmp_path)
    encoder = load_avhubert_encoder(seq2seq)
    assert isinstance(encoder, AVHubertModel) and encoder.cfg.decoder_layers == 0
    ref = filled_state_dict(FIXTURE / "keys.json")
    assert torch.equal(encoder.encoder.layers[1].fc1.weight, ref["encoder.w2v_model.encoder.layers.1.fc1.weight"])
    # a pre-training file: keys at the top level, final_proj present, cfg.model = av_hubert
    ckpt = load_checkpoint(FIXTURE / "checkpoint_stub.pt")
    state = {k[len("encoder.w2v_model."):]: v for k, v in ref.items() if k.startswith("encoder.w2v_model.")}
    state["final_proj.weight"] = torch.zeros(32, 64)
    state["final_proj.bias"] = torch.zeros(32)
    cfg = dict(ckpt["cfg"])
    cfg["model"] = dict(cfg["model"]["w2v_args"]["model"])
    model = load_avhubert_encoder(save_official_layout(state, tmp_path / "pretrain.pt", cfg=cfg))
    assert model.cfg.final_proj_out == 32 and hasattr(model, "final_proj")
