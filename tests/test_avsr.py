"""Auto-AVSR (WER_AVSR, CER_AVSR, VER_AVSR, LipScore) against its parity fixture (tests/fixtures/avsr)."""

from __future__ import annotations

import csv
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe import filled_state_dict
from talkbench import media
from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.metrics import visemes
from talkbench.nets.avsr import (LEGACY_RENAMES, SOS_EOS, AutoAVSR, load_auto_avsr, rename_legacy_keys,
                                 text_transform, video_input)
from talkbench.nets.avsr_decoding import DecodeSettings, _end_detect, beam_search
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.nets.onednn_linear import plain_linears
from talkbench.observers import SPECS, build
from talkbench.observers import avsr as obs
from talkbench.observers import avsr_lipscore
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext

FIX = Path(__file__).resolve().parent / "fixtures" / "avsr"
MEDIA = Path(__file__).resolve().parent / "fixtures" / "media"
DEMO = Path(__file__).resolve().parent / "fixtures" / "conformer"
EXPECTED = json.loads((FIX / "expected.json").read_text())
KEYS = json.loads((FIX / "keys.json").read_text())["keys"]
CARD_FILE = "vsr_trlrs2lrs3vox2avsp_base.pth"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in weights saved in the official layout: a plain state dict at the top level of the file."""
    path = tmp_path_factory.mktemp("avsr") / CARD_FILE
    torch.save(OrderedDict(filled_state_dict(FIX / "keys.json")), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> AutoAVSR:
    torch.set_num_threads(1)
    return obs.shared_model(str(checkpoint.resolve()), "cpu")


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    with np.load(FIX / "inputs.npz") as z:
        return z["crops"]


def npz(case: str) -> dict[str, np.ndarray]:
    with np.load(FIX / f"expected_{case}.npz") as z:
        return {k.split("/", 1)[1]: z[k] for k in z.files}


def stub_state(keys: list, renames: tuple[tuple[str, str], ...] = ()) -> OrderedDict:
    """Zero-valued broadcast tensors of the official shapes (a few bytes on disk), keys optionally renamed."""
    state = OrderedDict()
    for key, shape, dtype in keys:
        for new, old in renames:
            if key.startswith(new):
                key = old + key[len(new):]
        state[key] = torch.zeros((), dtype=getattr(torch, dtype)).expand(list(shape))
    return state


# ---------------------------------------------------------------------------------------------- network parity

@pytest.mark.parametrize("case", ["first30_beam10", "full_beam40"])
def test_input_frontend_encoder_and_ctc_match_the_reference(model: AutoAVSR, crops: np.ndarray, case: str) -> None:
    expected, ref = EXPECTED[case], npz(case)
    video = video_input(torch.from_numpy(crops[: expected["frames"]]))
    assert np.array_equal(video[0, 0, 0].numpy(), ref["input_frame0"])  # VideoTransform("test"), bit for bit
    with torch.no_grad():
        front = model.frontend(video)[0].numpy()
        enc = model.encode(video)[0]
        logp = model.ctc.log_softmax(enc).numpy()
        with plain_linears(model):
            enc_plain = model.encode(video)[0].numpy()
    spread = expected["encoder_float32_vs_float64_max_abs"]  # the reference's own float32 error
    assert np.abs(front - ref["frontend_out"]).max() <= expected["frontend_float32_vs_float64_max_abs"]
    # PyTorch's default linear path sums as the reference does: within its own float32 error (measured: 0.0)
    assert np.abs(enc_plain - ref["encoder_out"]).max() <= spread
    # oneDNN's linear layers (talkbench.nets.onednn_linear) sum in another order. Measured: their float32 error
    # against the same model in float64 is 3.4e-6 / 2.9e-6 (the reference's: 2.0e-6 / 2.2e-6), and the two
    # float32 results are 3.1e-6 / 3.6e-6 apart; both within float32 error of the float64 result, so at most
    # twice the spread apart.
    assert np.abs(enc.numpy() - ref["encoder_out"]).max() <= 2 * spread
    assert np.abs(logp[ref["ctc_logp_row_index"]] - ref["ctc_logp_rows"]).max() <= 1e-4


def check_hypotheses(model: AutoAVSR, crops: np.ndarray, case: str) -> None:
    expected = EXPECTED[case]
    memory = model.encode(video_input(torch.from_numpy(crops[: expected["frames"]])))[0]
    hyps = beam_search(model, memory, DecodeSettings(beam=expected["beam"]))
    assert len(hyps) == expected["n_ended"]
    for mine, ref in zip(hyps, expected["hyps"]):
        assert mine.yseq == ref["yseq"]
        assert abs(mine.score - ref["score"]) <= 1e-4
        assert abs(mine.decoder - ref["scores"]["decoder"]) <= 1e-4
        assert abs(mine.ctc - ref["scores"]["ctc"]) <= 1e-4
        assert text_transform().hypothesis(mine.tokens) == ref["text"]


def test_beam_search_matches_the_reference_on_30_frames_beam_10(model: AutoAVSR, crops: np.ndarray) -> None:
    check_hypotheses(model, crops, "first30_beam10")


@pytest.mark.slow
def test_beam_search_matches_the_reference_with_the_official_settings(model: AutoAVSR, crops: np.ndarray) -> None:
    """Beam 40 over the whole 73-frame clip (about 15 s on one CPU thread)."""
    assert EXPECTED["full_beam40"]["beam"] == DecodeSettings().beam == 40
    check_hypotheses(model, crops, "full_beam40")


def test_end_detection_follows_espnet() -> None:
    """ESPnet's end_detect: stop when, for each of the last 3 lengths, the best ended hypothesis of that length is
    more than 10 below the best overall."""
    ended = [(5, -1.0), (4, -20.0), (3, -30.0), (2, -40.0)]
    assert _end_detect(ended, 4)            # lengths 4, 3, 2 all far below the best (-1)
    assert not _end_detect(ended, 5)        # length 5 holds the best itself
    assert not _end_detect([(4, -5.0), (3, -30.0), (2, -40.0), (9, -1.0)], 4)   # -5 is within 10 of -1
    assert not _end_detect([], 3)


# ---------------------------------------------------------------------------------------------- loading

def test_official_file_loads_through_the_restricted_unpickler(model: AutoAVSR) -> None:
    state = model.state_dict()
    # the key names and shapes of E2E(5049, "video").state_dict() (the shared conformer layer registers its modules
    # in another order than auto_avsr's EncoderLayer; loading is by name)
    assert {k: tuple(s) for k, s, _ in KEYS} == {k: tuple(v.shape) for k, v in state.items()}
    assert state["ctc.ctc_lo.weight"].shape == (5049, 768) and state["decoder.output_layer.weight"].shape[0] == 5049


def test_legacy_layout_loads_and_matches_the_current_one(tmp_path: Path) -> None:
    """2023-2024 files (and KeySync's) keep the front end and projection inside the encoder."""
    legacy = stub_state(KEYS, tuple((new, old) for old, new in LEGACY_RENAMES))
    assert "encoder.frontend.frontend3D.0.weight" in legacy and "encoder.embed.0.weight" in legacy
    assert list(rename_legacy_keys(legacy)) == [k for k, _, _ in KEYS]  # the file's order is kept
    torch.save(legacy, tmp_path / "vsr_trlrwlrs2lrs3vox2avsp_base.pth")
    loaded = load_auto_avsr(tmp_path / "vsr_trlrwlrs2lrs3vox2avsp_base.pth")
    assert loaded.proj_encoder.weight.shape == (768, 512)


def test_wrong_files_are_refused_with_the_fix(tmp_path: Path) -> None:
    state = stub_state(KEYS)
    state["frontend.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="auto-avsr-vsr"):
        load_auto_avsr(tmp_path / "extra.pth")
    torch.save({"not": "weights"}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not an Auto-AVSR state dict"):
        load_auto_avsr(tmp_path / "junk.pth")


# ---------------------------------------------------------------------------------------------- text side

def test_vocabulary_and_reference_text() -> None:
    tt = text_transform()
    assert len(tt.token_list) == SOS_EOS + 1 and tt.token_list[0] == "<blank>" and tt.token_list[-1] == "<eos>"
    assert tt.token_list[1] == "<unk>"
    # eval.py's reference: {} removed, tokenised and detokenised; the vocabulary is upper case
    assert tt.reference("The {meeting} about the MEDIA") == "THE MEETING ABOUT THE MEDIA"
    assert tt.hypothesis(tt.tokenize("STARTS AT NINE") + [SOS_EOS]) == "STARTS AT NINE"


def test_summaries_are_corpus_level_and_mean_of_clips() -> None:
    rows = [{"wer_avsr": 50.0, "edits_avsr": 1, "ref_words_avsr": 2, "char_edits_avsr": 1, "ref_chars_avsr": 10},
            {"wer_avsr": 0.0, "edits_avsr": 0, "ref_words_avsr": 8, "char_edits_avsr": 0, "ref_chars_avsr": 30},
            {"psnr": 30.0}]
    summary = obs.summarize(rows)
    assert summary["wer_avsr"] == pytest.approx(10.0)  # 1 / 10, not the mean of 50 % and 0 %
    assert summary["cer_avsr"] == pytest.approx(2.5)
    assert math.isnan(summary["ver_avsr"]) and math.isnan(obs.summarize([])["wer_avsr"])
    assert avsr_lipscore.summarize([{"lipscore": 0.5}, {"lipscore": 1.0}, {"psnr": 1.0}]) == {"lipscore": 0.75}
    assert math.isnan(avsr_lipscore.summarize([])["lipscore"])


@pytest.mark.skipif(not visemes.available(), reason="VER needs espeak-ng (espeakng-loader)")
def test_homophenes_cost_words_but_no_visemes() -> None:
    row = obs.wer_avsr_row("the meeting about the media", "the beating about the media", -3.0)
    assert (row["edits_avsr"], row["ref_words_avsr"], row["wer_avsr"]) == (1, 5, 20.0)
    assert row["viseme_edits_avsr"] == 0 and row["ref_visemes_avsr"] > 0  # m and b look the same


def test_lipscore_is_the_mean_frame_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert avsr_lipscore.lipscore(a, a) == pytest.approx(1.0, abs=1e-7)
    assert avsr_lipscore.lipscore(a, torch.tensor([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        avsr_lipscore.lipscore(a, a[:1])


# ---------------------------------------------------------------------------------------------- observers

def short_clip(source: Path, target: Path, frames: int = 20) -> None:
    clip = media.decode_clip(source)
    samples = frames * 640
    target.parent.mkdir(parents=True, exist_ok=True)
    media.write_clip(target, clip.frames[:frames], clip.audio_int16[:samples], fps=25.0)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """LRS2 layout, two 20-frame clips: 00000 generated = its own reference, 00001 generated = the other clip."""
    root = tmp_path_factory.mktemp("avsr_suite")
    names = ["meeting", "another"]
    for i, name in enumerate(names):
        short_clip(DEMO / f"{name}.mp4", root / "ref" / "main" / "spk0" / f"{i:05d}.mp4")
        (root / "ref" / "main" / "spk0" / f"{i:05d}.txt").write_text(
            "Text:  " + (DEMO / f"{name}.txt").read_text().strip() + "\n")
    short_clip(DEMO / "meeting.mp4", root / "gen" / "main" / "spk0" / "00000.mp4")
    short_clip(DEMO / "meeting.mp4", root / "gen" / "main" / "spk0" / "00001.mp4")
    return root / "ref", root / "gen"


def test_evaluate_writes_wer_cer_and_lipscore_rows(suite: tuple[Path, Path], checkpoint: Path, model: AutoAVSR,
                                                   tmp_path: Path) -> None:
    reference, generated = suite
    metrics = ("wer_avsr", "cer_avsr", "ver_avsr", "lipscore") if visemes.available() else \
        ("wer_avsr", "cer_avsr", "lipscore")
    result = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "run", metrics=metrics,
                                     suite="lrs2", protocol="talklip2023", model="m",
                                     weights={"auto-avsr-vsr": checkpoint}, options={"avsr_beam": 3}))
    assert result.n_clips == 2 and result.n_failed == 0
    with (tmp_path / "run" / "clips.csv").open() as handle:
        rows = {r["clip_id"]: r for r in csv.DictReader(handle)}
    same, other = rows["main/spk0/00000"], rows["main/spk0/00001"]
    assert float(same["lipscore"]) == pytest.approx(1.0, abs=1e-6)  # a clip against itself
    assert float(other["lipscore"]) < 1.0 and int(other["n_frames_lipscore"]) == 20
    assert same["ref_avsr"] == "the meeting about the media starts at nine"
    assert same["hyp_avsr"] == same["hyp_avsr"].lower() and int(same["ref_words_avsr"]) == 8
    edits = sum(int(r["edits_avsr"]) for r in rows.values())
    words = sum(int(r["ref_words_avsr"]) for r in rows.values())
    assert result.summary["wer_avsr"] == pytest.approx(100.0 * edits / words)
    if visemes.available():
        assert int(same["ref_visemes_avsr"]) > 0 and not math.isnan(result.summary["ver_avsr"])


def test_observer_skips_clips_it_cannot_score(checkpoint: Path, model: AutoAVSR) -> None:
    ctx = ObserverContext(weights={"auto-avsr-vsr": checkpoint}, options={"avsr_beam": 2, "max_frames": 5})
    observer = obs.build(ctx)
    lip = avsr_lipscore.build(ctx)
    assert observer.model is lip.model is model  # one model for both observers
    clip = media.decode_clip(MEDIA / "meeting.mp4", need_audio=False)
    with pytest.raises(ClipSkipped, match="no transcript"):
        observer.measure(ClipData("c", clip, text=None))
    with pytest.raises(ClipSkipped, match="max_frames=5"):
        observer.measure(ClipData("c", clip, text="THE MEETING"))
    with pytest.raises(ClipSkipped, match="--reference"):
        lip.measure(ClipData("c", clip))
    with pytest.raises(ValueError, match="avsr_beam"):
        build(SPECS["avsr"], ObserverContext(weights={"auto-avsr-vsr": checkpoint}, options={"avsr_beam": 0}))
