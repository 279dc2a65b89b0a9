"""TalkLip-mini: scaled generator, local audio encoder, the mini expert's loss, the ablation driver and report."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkbench.nets.avhubert import WeightNormConv1d
from talkbench.nets.mini_lipreader import LipReaderConfig, MiniLipReader, encode_text, save_lipreader
from talkbench.nets.talklip import (DEC_CHANNELS, ENC_CHANNELS, LocalAudioEncoder, TalkLipDiscriminator,
                                    TalkLipGenerator, UNetChannels, infer_generator_spec, load_talklip_discriminator,
                                    load_talklip_generator, save_talklip_checkpoint)
from talkbench.train import ablation
from talkbench.train.losses import collate_targets, expert_video_input
from talkbench.train.mini_expert import CharTokenizer, MiniLipReadingLoss, ctc_targets, is_mini_lipreader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------ networks

def test_scaled_channels_divide_every_width_but_the_input():
    c = UNetChannels.scaled(4)
    assert c.encoder == (6,) + tuple(w // 4 for w in ENC_CHANNELS[1:])
    assert c.decoder == tuple(w // 4 for w in DEC_CHANNELS)
    assert UNetChannels.scaled(1) == UNetChannels()
    with pytest.raises(ValueError):
        UNetChannels.scaled(0)


@pytest.mark.parametrize("divisor", [4, 8])
def test_small_generator_and_discriminator_round_trip_through_the_official_loader(tmp_path, divisor):
    torch.manual_seed(0)
    gen = TalkLipGenerator(LocalAudioEncoder(32), 32, channels=UNetChannels.scaled(divisor), sync_dim=24).eval()
    spec = infer_generator_spec(gen.state_dict())
    assert spec.audio_kind == "local" and spec.channels == UNetChannels.scaled(divisor) and spec.sync_dim == 24
    save_talklip_checkpoint(tmp_path / "g.pth", gen)
    loaded = load_talklip_generator(tmp_path / "g.pth")
    faces, audio = torch.rand(3, 6, 96, 96), torch.randn(1, 104, 5)
    with torch.no_grad():
        expected = gen(faces, audio, torch.tensor([0, 2, 4]))[0]
        got = loaded(faces, audio, torch.tensor([0, 2, 4]))[0]
    assert torch.allclose(expected, got, atol=1e-6)
    disc = TalkLipDiscriminator(divisor)
    save_talklip_checkpoint(tmp_path / "d.pth", disc)
    assert load_talklip_discriminator(tmp_path / "d.pth").width_divisor == divisor


def test_local_audio_encoder_sees_seven_frames_only():
    torch.manual_seed(0)
    enc = LocalAudioEncoder(16).eval()
    audio = torch.randn(1, 104, 30)
    changed = audio.clone()
    changed[:, :, 20] += 5.0
    with torch.no_grad():
        diff = (enc(audio) - enc(changed)).abs().sum(-1)[0]
    assert torch.all(diff[17:24] > 0)                       # frames 17..23 see frame 20
    assert torch.all(diff[:17] == 0) and torch.all(diff[24:] == 0)


def test_positional_conv_is_initialised_and_leaves_the_global_random_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    conv = WeightNormConv1d(32, 7, 4)
    assert torch.equal(torch.rand(4), expected)
    assert torch.isfinite(conv.weight_v).all() and conv.weight_v.abs().sum() > 0
    assert torch.allclose(conv.weight(), conv.weight_v, atol=1e-6)     # g = ‖v‖: weight = v at the start


# ------------------------------------------------------------------------------------------ the mini expert

def test_char_tokenizer_round_trip_and_ctc_targets():
    tok = CharTokenizer()
    ids = tok.encode("Bin Blue at")
    assert ids[-1] == tok.eos and tok.decode(ids) == "bin blue at"
    target, _ = collate_targets([ids, tok.encode("a")])
    flat, lengths = ctc_targets(target)
    assert lengths.tolist() == [len("bin blue at"), 1]
    assert flat.tolist() == encode_text("bin blue at") + encode_text("a")


def _small_reader() -> MiniLipReader:
    torch.manual_seed(0)
    return MiniLipReader(LipReaderConfig(stem=4, mid=8, top=8, dim=32, layers=1, ffn=32, heads=2)).eval()


def test_mini_loss_is_the_ctc_loss_of_the_reader_and_reaches_the_pixels():
    reader = _small_reader()
    loss_fn = MiniLipReadingLoss(reader).train()
    assert not reader.training and not any(p.requires_grad for p in reader.parameters())
    pixels = (torch.rand(10, 100, 100, 3) * 255).requires_grad_(True)
    video, mask = expert_video_input([pixels], length=12)
    target, prev = collate_targets([CharTokenizer().encode("set red")])
    out = loss_fn(video, mask, target, prev)
    # the same number from the reader's own entry point (grey crops 0..255) and torch's CTC
    grey = (0.299 * pixels[..., 2] + 0.587 * pixels[..., 1] + 0.114 * pixels[..., 0])[:, 6:94, 6:94]
    log_probs = reader(grey[None].detach(), torch.tensor([10]))["ctc"].log_softmax(-1)
    expected = F.ctc_loss(log_probs.transpose(0, 1), torch.tensor(encode_text("set red")), torch.tensor([10]),
                          torch.tensor([7]), reduction="sum")
    assert math.isclose(float(out.loss.detach()), float(expected), rel_tol=1e-4)
    assert out.n_tokens == 7 and 0 <= out.n_correct <= 7 and out.encoder_out.shape == (1, 12, 32)
    out.loss.backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_mini_lipreader_files_are_recognised(tmp_path):
    save_lipreader(_small_reader(), tmp_path / "reader.pt")
    assert is_mini_lipreader(str(tmp_path / "reader.pt"))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    assert not is_mini_lipreader(str(tmp_path / "other.pt"))


# ------------------------------------------------------------------------------------------ training + driver

@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    from talkbench.synthetic.corpus import synthesize_corpus

    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, n_train=4, n_test=1, seed=11, workers=1)
    return out


def test_each_configuration_trains_generates_and_is_scored(tiny_corpus, tmp_path):
    for name in ablation.CONFIG_NAMES:
        summary = ablation.run_one(tiny_corpus, tmp_path, name, seed=0, steps=2)
        assert summary["n_clips"] == 1 and summary["n_failed"] == 0
        assert 0 <= float(summary["wer1"]) and 0 < float(summary["ssim"]) < 1
    log = (tmp_path / "lip" / "seed0" / "train" / "train_log.jsonl").read_text()
    assert '"lip"' in log and '"contrastive"' not in log                    # lip on, contrastive off
    assert '"lip"' not in (tmp_path / "no-lip" / "seed0" / "train" / "train_log.jsonl").read_text()
    local = load_talklip_generator(tmp_path / "lip+contrastive-local" / "seed0" / "train" / "checkpoint_step000000002.pth")
    assert isinstance(local.audio_encoder, LocalAudioEncoder)
    # a rerun reuses the finished training and the stored scores
    before = (tmp_path / "lip" / "seed0" / "eval" / "summary.csv").read_text()
    ablation.run_one(tiny_corpus, tmp_path, "lip", seed=0, steps=2)
    assert (tmp_path / "lip" / "seed0" / "eval" / "summary.csv").read_text().split("\n")[1].split(",")[:20] == \
        before.split("\n")[1].split(",")[:20]
    exported = ablation.export_generator(ablation.best_run(tmp_path, "lip"), tmp_path / "mini.pth")
    assert exported.stat().st_size < (tmp_path / "lip" / "seed0" / "train" / "checkpoint_step000000002.pth").stat().st_size


def _fake_run(out: Path, config: str, seed: int, wer: float, ssim: float) -> None:
    folder = out / config / f"seed{seed}"
    (folder / "eval").mkdir(parents=True)
    (folder / "train").mkdir()
    (folder / "train" / "latest.json").write_text('{"global_step": 300}')
    with (folder / "eval" / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["model", "n_clips", "n_failed", "wer1", "ssim"])
        writer.writeheader()
        writer.writerow({"model": config, "n_clips": 100, "n_failed": 0, "wer1": wer, "ssim": ssim})


def test_report_gives_mean_and_sample_std_over_seeds(tmp_path):
    for seed, wer in enumerate([50.0, 60.0, 70.0]):
        _fake_run(tmp_path, "lip", seed, wer, 0.8)
    _fake_run(tmp_path, "no-lip", 0, 90.0, 0.7)
    table = ablation.report(tmp_path, tmp_path / "out" / "ablation")
    lip = next(r for r in table if r["config"] == "lip")
    assert lip["n_seeds"] == 3 and lip["wer1_mean"] == pytest.approx(60.0) and lip["wer1_std"] == pytest.approx(10.0)
    no_lip = next(r for r in table if r["config"] == "no-lip")
    assert no_lip["wer1_std"] is None
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "60.00 ± 10.00" in md and "| no-lip | 1 | 90.00 |" in md
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    runs = list(csv.DictReader((tmp_path / "out" / "ablation_runs.csv").open()))
    assert len(runs) == 4 and {r["steps"] for r in runs} == {"300"}
    assert ablation.best_run(tmp_path, "lip").parent.parent.name == "seed0"
    assert ablation.best_run(tmp_path).parent.parent.parent.name == "lip"     # lowest mean WER


def test_report_without_runs_and_unknown_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no finished ablation run"):
        ablation.report(tmp_path, tmp_path / "x")
    with pytest.raises(ValueError, match="known: no-lip"):
        ablation.config_by_name("lip-only")


def test_train_presets_resolve_by_name(tmp_path):
    from talkbench.train import load_config

    mini = load_config("mini")
    assert (mini.expert, mini.generator_width, mini.audio_encoder, mini.start_stage) == ("mini-lipreader-a", 4,
                                                                                        "transformer", 2)
    assert load_config("reference") == load_config()
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.toml")


def _fake_eval(out: Path, config: str, seed: int, wer_shift: int, rng: np.random.Generator) -> None:
    """An ablation eval store: 40 test clips with WER1/CER1 counts and LSE values (lip: fewer edits)."""
    from talkbench.store import ResultStore
    from talkbench.train.ablation import run_dir

    with ResultStore(run_dir(out, config, seed) / "eval", {"metrics": ["wer1", "cer1", "lse_c", "lse_d"],
                                                            "protocol": "mini"}) as store:
        for i in range(40):
            edits = int(max(0, rng.integers(2, 6) - wer_shift))
            store.put(f"main/spk{i % 5}/{i:05d}", {"edits1": edits, "ref_words1": 6, "char_edits1": 3 * edits,
                                                   "ref_chars1": 30, "wer1": 100 * edits / 6, "cer1": 10.0 * edits,
                                                   "lse_c": float(rng.normal(2 + wer_shift, 0.3)),
                                                   "lse_d": float(rng.normal(7 - wer_shift, 0.3))})


def test_paired_report_against_no_lip_per_seed_and_pooled(tmp_path):
    from talkbench.summary import IntervalSettings
    from talkbench.train.ablation import paired_against_baseline, paired_markdown

    rng = np.random.default_rng(0)
    for seed in (0, 1):
        _fake_eval(tmp_path, "no-lip", seed, 0, rng)
        _fake_eval(tmp_path, "lip", seed, 2, rng)
    rows = paired_against_baseline(tmp_path, IntervalSettings(resamples=2000))
    wer = {r["seed"]: r for r in rows if r["config"] == "lip" and r["metric"] == "wer1"}
    assert set(wer) == {0, 1, "pooled"} and wer["pooled"]["n_clips"] == 80
    assert wer["pooled"]["difference"] < 0 and wer["pooled"]["p_value"] < 0.01 and wer["pooled"]["hi"] < 0
    assert wer["pooled"]["baseline"] == pytest.approx(np.mean([wer[0]["baseline"], wer[1]["baseline"]]), abs=3)
    lse = next(r for r in rows if r["seed"] == "pooled" and r["metric"] == "lse_c")
    assert lse["difference"] > 0 and lse["p_value"] < 0.01
    text = paired_markdown(rows)
    assert "| lip | wer1 |" in text and "lip+contrastive" not in text  # configurations that did not run: no rows
