"""TalkLip training: settings, schedule, trainable layers, a tiny smoke run, checkpoints and resumption."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch

from talkbench.nets.talklip import TalkLipDiscriminator, build_generator, infer_generator_spec, load_talklip_generator
from talkbench.train import TalkLipTrainer, TrainClip, TrainConfig, generator_from_expert, load_config
from talkbench.train.config import REFERENCE_TOML, config_from_mapping
from talkbench.train.loop import (LoadedClip, Schedule, align_audio_train, make_batch, read_transcript,
                                  set_trainable_audio_layers)
from test_talklip_support import TALKLIP, read_frames, read_wav, tiny_expert, tiny_tokenizer, transcript

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

N_FRAMES = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reference_settings_file_matches_defaults():
    values = tomllib.loads(REFERENCE_TOML.read_text())
    default = TrainConfig()
    for section in values.values():
        for key, value in section.items():
            got = getattr(default, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    cfg = load_config()
    assert cfg.l1_weight == pytest.approx(0.92999)
    assert (cfg.lr, cfg.betas, cfg.batch_size, cfg.patience) == (1e-4, (0.5, 0.999), 8, 5)
    with pytest.raises(ValueError, match="unknown training setting"):
        config_from_mapping({"loss": {"lip_wieght": 1.0}})
    assert load_config(batch_size=2, device=None).batch_size == 2


def test_schedule_advances_after_patience():
    s = Schedule(patience=5)
    assert not s.update(1.0)
    assert not any(s.update(1.0) for _ in range(5))      # 5 evaluations without improvement: still stage 0
    assert s.update(1.0) and s.stage == 1 and s.waited == 0
    assert not s.update(0.5) and s.best == 0.5


def test_only_last_three_audio_layers_train_in_the_full_model(fixtures_dir):
    spec_json = json.loads((fixtures_dir / "talklip" / "keys_full.json").read_text())
    spec = infer_generator_spec({k: torch.empty(s, device="meta") for k, s, *_ in spec_json["keys"]})
    with torch.device("meta"):
        gen = build_generator(spec)
    assert set(gen.state_dict()) == {k for k, *_ in spec_json["keys"]}
    assert all(tuple(gen.state_dict()[k].shape) == tuple(s) for k, s, *_ in spec_json["keys"])
    names = set_trainable_audio_layers(gen, 3)
    layers = {n.split(".")[3] for n in names}
    assert layers == {"9", "10", "11"} and all(n.startswith("w2v_model.encoder.layers.") for n in names)
    assert all(p.requires_grad for p in gen.face_decoder_blocks.parameters())


def test_transcript_and_audio_alignment(tmp_path):
    (tmp_path / "a.txt").write_text("Text:  THE MEETING\nConf: 3\n")
    assert read_transcript(tmp_path / "a.txt") == "THE MEETING"
    feats = np.ones((10, 104), np.float32)
    assert align_audio_train(feats, 7).shape == (7, 104)          # train.py cuts the tail
    assert align_audio_train(feats, 12)[10:].sum() == 0.0


# ----------------------------------------------------------------------------------------------------
# tiny runs
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def loaded(tok):
    from talkbench.audio_features import avhubert_audio_features

    clips = {}
    for name in ("meeting", "another"):
        frames = read_frames(name, N_FRAMES)
        audio = align_audio_train(avhubert_audio_features(read_wav(name)), N_FRAMES)
        clips[name] = LoadedClip(name, frames, np.tile([0, 0, 160, 160], (N_FRAMES, 1)), audio,
                                 tok.encode(transcript(name)))
    return clips


def _config(tmp_path, **kw):
    base = dict(out_dir=tmp_path, batch_size=1, span_length=2, span_prob=0.08, val_span_stride=0.5,
                start_stage=2, eval_interval=2, checkpoint_interval=2, seed=3)
    base.update(kw)
    return load_config(**base)


def _trainer(config, tok, loaded, names=("meeting",)):
    torch.manual_seed(0)
    expert = tiny_expert()
    gen = generator_from_expert(expert, config.finetune_last_layers)
    clips = [TrainClip(n, TALKLIP / f"{n}.mp4", transcript(n)) for n in names]
    return TalkLipTrainer(config, gen, TalkLipDiscriminator(), expert, tok, clips, clips,
                          loader=lambda clip: loaded[clip.clip_id])


def test_smoke_stage0_then_all_losses_fall(tmp_path, tok, loaded):
    """A tiny run on a fixture clip: stage 0 leaves the audio encoder alone; in stage 2 every loss falls."""
    trainer = _trainer(_config(tmp_path, start_stage=0), tok, loaded)
    batch = make_batch([loaded["meeting"]], random.Random(0), True, trainer.config)
    assert batch.inputs.shape[0] == 2 and batch.audio.shape == (1, 104, N_FRAMES)
    enc = trainer.generator.audio_encoder.w2v_model
    last = enc.encoder.layers[-1].fc1.weight
    before_last, before_frozen = last.detach().clone(), enc.feature_extractor_audio.proj.weight.detach().clone()
    logs = trainer.train_step(batch)
    assert "lip" not in logs and "contrastive" not in logs and not trainer.generator.ft
    assert torch.equal(last, before_last) and last.requires_grad          # trainable, but no_grad in stage 0

    trainer.schedule.stage = 2
    trainer._apply_stage()
    history = [trainer.train_step(batch, torch.Generator().manual_seed(0)) for _ in range(4)]
    for key in ("l1", "perceptual", "lip", "contrastive", "disc_real", "disc_fake", "gen_total"):
        assert all(np.isfinite(h[key]) for h in history), key
    assert history[-1]["l1"] < history[0]["l1"]
    assert history[-1]["gen_total"] < history[0]["gen_total"]
    assert history[-1]["lip"] < history[0]["lip"]
    # stage >= 1 fine-tunes the last audio layers; the frozen front-end never moves; the expert is frozen
    assert not torch.equal(last, before_last)
    assert torch.equal(enc.feature_extractor_audio.proj.weight, before_frozen)
    assert not any(p.requires_grad for p in trainer.lip.expert.parameters())


def test_run_checkpoints_and_resumes_exactly(tmp_path, tok, loaded):
    names = ("meeting", "another")
    a = _trainer(_config(tmp_path, max_steps=2), tok, loaded, names)
    res_a = a.run()
    assert res_a.global_step == 2 and len(res_a.validations) == 1 and res_a.validations[0]["stage"] == 2
    files = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert files == ["checkpoint_step000000001.pth", "checkpoint_step000000002.pth",
                     "disc_checkpoint_step000000001.pth", "disc_checkpoint_step000000002.pth"]
    raw = torch.load(tmp_path / files[1], weights_only=False)
    assert {"state_dict", "optimizer", "global_step", "global_epoch"} <= set(raw) and raw["global_step"] == 2
    load_talklip_generator(tmp_path / files[1])          # the official loader reads what training wrote

    # "interrupt" after step 2: a fresh process resumes from the directory; the original run goes on in memory
    b = _trainer(_config(tmp_path, max_steps=3), tok, loaded, names)
    assert b.resume() and b.global_step == 2 and b.schedule.stage == 2
    a.config = a.config.replace(max_steps=3)
    step3_a, step3_b = a.run().history[-1], b.run().history[-1]
    assert step3_a["step"] == step3_b["step"] == 3
    for key in ("l1", "lip", "contrastive", "disc_real", "disc_fake"):
        assert step3_b[key] == pytest.approx(step3_a[key], rel=1e-5, abs=1e-6), key
    for (k, va), vb in zip(a.generator.state_dict().items(), b.generator.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [1, 2, 3, 3]


def test_label_smoothing_comes_from_the_expert_file(tmp_path):
    from talkbench.train.loop import expert_label_smoothing

    assert expert_label_smoothing(TALKLIP / "expert" / "checkpoint_stub.pt") == 0.1
    torch.save({"cfg": {"criterion": {"label_smoothing": 0.2}}, "model": {}}, tmp_path / "e.pt")
    assert expert_label_smoothing(tmp_path / "e.pt") == 0.2
    torch.save({"cfg": {"criterion": None}, "model": {}}, tmp_path / "f.pt")
    assert expert_label_smoothing(tmp_path / "f.pt") == 0.1
