"""WER2: TalkLip's teacher-forced Conformer against the parity fixture (tests/fixtures/conformer)."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from recipe import filled_state_dict
from talkbench.crops.lipreader_inputs import conformer_crops
from talkbench.devices import resolve_device
from talkbench.media import Clip
from talkbench.metrics import visemes
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.nets.conformer import ConformerLipReader, load_conformer, pad_features, required_input_length
from talkbench.nets.espnet_layers import RelPositionalEncoding, RelPositionMultiHeadedAttention, relative_positions
from talkbench.observers import conformer as obs
from talkbench.observers.base import ClipData, ClipSkipped

FIX = Path(__file__).resolve().parent / "fixtures" / "conformer"
EXPECTED = json.loads((FIX / "expected.json").read_text())
CASES = {c["id"]: c for c in EXPECTED["per_clip"]}


def decode_bgr(path: Path) -> np.ndarray:
    """All video frames of a file as BGR uint8 T×H×W×3 (what cv2.VideoCapture gives for these clips)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def npz() -> dict[str, np.ndarray]:
    with np.load(FIX / "expected_subset.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    return {name: conformer_crops(decode_bgr(FIX / f"{name}.mp4")) for name in ("meeting", "another")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in weights saved in the official layout: a plain state dict at the top level."""
    state = filled_state_dict(FIX / "keys.json")
    path = tmp_path_factory.mktemp("conformer") / "conformer_lrs2.pth"
    torch.save(OrderedDict(state), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> ConformerLipReader:
    return load_conformer(checkpoint, "cpu")


# ---------------------------------------------------------------------------------------------- pure parts

def test_crops_are_bit_exact(crops: dict[str, np.ndarray]) -> None:
    hashes = json.loads((FIX / "crops_sha256.json").read_text())
    for name, expected in hashes.items():
        assert list(crops[name].shape) == expected["shape"]
        assert hashlib.sha256(np.ascontiguousarray(crops[name]).tobytes()).hexdigest() == expected["sha256"]


def test_product_decoder_gives_the_same_crops() -> None:
    """talkbench.media.decode_clip (the evaluation path) -> the reference's crops, bit for bit."""
    from talkbench.media import decode_clip

    hashes = json.loads((FIX / "crops_sha256.json").read_text())
    crops = conformer_crops(decode_clip(FIX / "meeting.mp4", need_audio=False).frames)
    assert hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest() == hashes["meeting"]["sha256"]


def test_normalisation_matches(crops: dict[str, np.ndarray], npz: dict[str, np.ndarray]) -> None:
    for name in ("meeting", "another"):
        np.testing.assert_allclose(obs.normalise(crops[name])[0].numpy(), npz[f"{name}/input_norm_frame0"],
                                   atol=1e-6, rtol=0)


def test_transcripts_to_targets() -> None:
    for name in ("meeting", "another"):
        text = (FIX / f"{name}.txt").read_text().splitlines()[0]
        assert obs.transcript_indices(text) == CASES[name]["target"]
        assert obs.transcript_indices("Text:  " + text) == CASES[name]["target"]  # LRS2 `Text:` line
        assert obs.transcript_indices(text.lower()) == CASES[name]["target"]
    with pytest.raises(ValueError, match="outside the Conformer's vocabulary"):
        obs.transcript_indices("HELLO, WORLD")
    with pytest.raises(ValueError, match="empty"):
        obs.transcript_indices("Text:   ")


@pytest.mark.parametrize("case", list(CASES))
def test_padding_rule(case: str) -> None:
    c = CASES[case]
    assert required_input_length(c["target"]) == c["req_input_length_from_target"]
    assert max(required_input_length(c["target"]), c["n_frames"]) == c["len_req"]
    feats = torch.ones(1, c["n_frames"], 3)
    padded = pad_features(feats, c["len_req"])[0]
    assert padded.shape[0] == c["len_req"]
    assert padded[: c["pad_left"]].abs().sum() == 0 and padded[c["len_req"] - c["pad_right"]:].abs().sum() == 0
    assert bool((padded[c["pad_left"]: c["len_req"] - c["pad_right"]] == 1).all())


def test_required_length_counts_repeats() -> None:
    assert required_input_length([3, 2, 2, 2, 3]) == 7
    with pytest.raises(ValueError):
        required_input_length([])


@pytest.mark.parametrize("case", EXPECTED["metric_cases"], ids=[m["name"] for m in EXPECTED["metric_cases"]])
def test_metric_cases(case: dict) -> None:
    scores = []
    for hat, pad in zip(case["ys_hat"], case["ys_pad"]):
        target = [t for t in pad if t != -1]
        scores.append(obs.score_utterance(hat, target))
    # A padded batch is corpus-level inside the batch, as the reference's compute_both.
    assert sum(s.char_edits for s in scores) / sum(s.ref_chars for s in scores) == pytest.approx(case["cer"], abs=0)
    assert sum(s.word_edits for s in scores) / sum(s.ref_words for s in scores) == pytest.approx(case["wer"], abs=0)


def test_relative_positions_and_shift(npz: dict[str, np.ndarray]) -> None:
    # Bit-identical on the machine the fixture was first checked on; on a Xeon with AVX-512 (torch 2.13 CPU,
    # any ATEN_CPU_CAPABILITY) torch.sin/cos differ from the fixture in 940 of 37,120 entries, by at most
    # 3.64e-6, all at large angles (|r·div| up to 72 rad). The network parity below is unaffected.
    np.testing.assert_allclose(relative_positions(73, 256).numpy(), npz["meeting/rel_pos_emb"], rtol=0, atol=1e-5)
    _, pos = RelPositionalEncoding(256)(torch.zeros(1, 73, 256))
    assert pos.shape == (1, 145, 256)
    # The strided selection equals a plain loop over (query i, key j) -> column T-1-i+j.
    bd = torch.randn(2, 3, 5, 9)
    picked = RelPositionMultiHeadedAttention.select_relative(bd)
    loop = torch.stack([torch.stack([bd[:, :, i, 4 - i + j] for j in range(5)], dim=-1) for i in range(5)], dim=-2)
    assert torch.equal(picked, loop)


# ---------------------------------------------------------------------------------------------- network parity

@pytest.mark.parametrize("case", list(CASES))
def test_parity(case: str, model: ConformerLipReader, crops: dict[str, np.ndarray],
                npz: dict[str, np.ndarray]) -> None:
    c = CASES[case]
    frames = crops["meeting"][:30] if case == "meeting_first30" else crops[case]
    out = model.teacher_force(obs.normalise(frames), c["target"])
    np.testing.assert_allclose(out["features"].numpy(), npz[f"{case}/resnet_out"], atol=1e-4, rtol=1e-4)
    assert out["padded"].shape[0] == c["len_req"]
    np.testing.assert_allclose(out["encoder_out"].numpy(), npz[f"{case}/encoder_out"], atol=5e-4, rtol=1e-3)
    np.testing.assert_allclose(out["logits"].numpy(), npz[f"{case}/decoder_logits"], atol=1e-4, rtol=1e-4)
    argmax, margin = out["argmax"].numpy(), npz[f"{case}/top2_logit_margin"]
    decided = margin > 1e-3
    np.testing.assert_array_equal(argmax[decided], npz[f"{case}/argmax"][decided])
    score = obs.score_utterance(argmax.tolist(), c["target"])
    assert (score.char_edits, score.word_edits, score.ref_words) == (c["char_edits"], c["word_edits"], c["n_words"])
    assert score.wer == c["wer"] and score.cer == c["cer"]
    assert obs.indices_text(score.hypothesis) == c["pred_text"]


def test_observer_rows_and_summary(model: ConformerLipReader) -> None:
    observer = obs.ConformerObserver(model=model, device=torch.device("cpu"))
    rows = []
    for name in ("meeting", "another"):
        frames = decode_bgr(FIX / f"{name}.mp4")
        clip = Clip(path=FIX / f"{name}.mp4", frames=frames, fps=25.0, audio_int16=None, source_fps=25.0)
        text = "Text:  " + (FIX / f"{name}.txt").read_text().splitlines()[0]
        row = observer.measure(ClipData(clip_id=name, generated=clip, text=text))
        assert row["hyp2"] == CASES[name]["pred_text"]
        assert (row["wer2"], row["edits2"], row["ref_words2"]) == (100 * CASES[name]["wer"], CASES[name]["word_edits"],
                                                                    CASES[name]["n_words"])
        if visemes.available():  # ver2: the teacher-forced hypothesis against the transcript, in visemes
            assert (row["viseme_edits2"], row["ref_visemes2"]) == visemes.viseme_edits(row["hyp2"], text[7:])
            assert 0 < row["ref_visemes2"] and row["viseme_edits2"] <= max(row["ref_visemes2"],
                                                                          len(visemes.visemes(row["hyp2"])))
        rows.append(row)
    summary = obs.summarize(rows)  # percent
    if visemes.available():
        assert summary["ver2"] == pytest.approx(100 * sum(r["viseme_edits2"] for r in rows)
                                                / sum(r["ref_visemes2"] for r in rows))
    assert summary["wer2"] == 100 * EXPECTED["wer2_mean_of_per_utterance_wer"]
    assert summary["wer2_corpus"] == 100 * EXPECTED["corpus_wer"]
    assert summary["cer2"] == pytest.approx(100 * EXPECTED["cer_mean_of_per_utterance_cer"], abs=1e-12)
    assert summary["cer2_corpus"] == pytest.approx(100 * EXPECTED["corpus_cer"], abs=1e-12)
    with pytest.raises(ClipSkipped, match="vocabulary"):
        observer.measure(ClipData(clip_id="x", generated=clip, text="NAÏVE"))
    with pytest.raises(ClipSkipped, match="no transcript"):
        observer.measure(ClipData(clip_id="x", generated=clip, text=None))


def test_build_from_weights_override(checkpoint: Path) -> None:
    from talkbench.observers import ObserverContext
    from talkbench.protocols import build_observers

    (observer,) = build_observers(["wer2"], ObserverContext(device="cpu", weights={"conformer-lrs2": checkpoint}))
    assert isinstance(observer, obs.ConformerObserver) and observer.metrics == ("wer2",)
    assert len(observer.weights_sha256["conformer-lrs2"]) == 12
    with pytest.raises(ValueError, match="no CUDA device") if not torch.cuda.is_available() else nullcontext():
        obs.resolve_device("cuda")


def test_summary_weights_utterances_equally() -> None:
    rows = [{"wer2": 100.0, "edits2": 1, "ref_words2": 1, "cer2": 50.0, "char_edits2": 1, "ref_chars2": 2},
            {"wer2": 0.0, "edits2": 0, "ref_words2": 9, "cer2": 0.0, "char_edits2": 0, "ref_chars2": 30}]
    summary = obs.summarize(rows)
    assert summary["wer2"] == 50.0 and summary["wer2_corpus"] == pytest.approx(10.0, abs=1e-12)
    assert summary["cer2"] == 25.0
    assert np.isnan(obs.summarize([])["wer2"])


# ---------------------------------------------------------------------------------------------- loading

def test_strict_load_names_missing_and_unexpected_keys(tmp_path: Path, model: ConformerLipReader) -> None:
    state = OrderedDict(model.state_dict())
    del state["ctc.ctc_lo.bias"]
    state["decoder.extra_layer.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        load_conformer(bad)
    message = str(err.value)
    assert str(bad) in message and "missing keys: ctc.ctc_lo.bias" in message
    assert "unexpected keys: decoder.extra_layer.weight" in message and "--weights conformer-lrs2=" in message


def test_strict_load_rejects_wrong_shapes(tmp_path: Path, model: ConformerLipReader) -> None:
    state = OrderedDict(model.state_dict())
    state["decoder.output_layer.weight"] = torch.zeros(41, 256)
    bad = tmp_path / "shape.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"shape mismatches: decoder\.output_layer\.weight \(41, 256\)"):
        load_conformer(bad)


def test_load_rejects_non_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "list.pth"
    torch.save([1, 2, 3], bad)
    with pytest.raises(CheckpointError, match="not a Conformer lip-reader state dict"):
        load_conformer(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(checkpoint: Path, crops: dict[str, np.ndarray], npz: dict[str, np.ndarray]) -> None:
    gpu = load_conformer(checkpoint, resolve_device("cuda"))  # also pins TF32 off, as every run does
    out = gpu.teacher_force(obs.normalise(crops["meeting"]).cuda(), CASES["meeting"]["target"])
    np.testing.assert_allclose(out["logits"].cpu().numpy(), npz["meeting/decoder_logits"], atol=1e-3, rtol=1e-3)
