"""talkbench transcribe: a tiny randomly initialised Whisper checkpoint in Whisper's own file format exercises the
whole path offline — transcribe a folder -> transcripts.csv + provenance -> evaluate (protocol mini) reads them ->
the summary says `asr:whisper-tiny.en` and the leaderboard keeps those rows apart from human-transcript rows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from scipy.io import wavfile
from typer.testing import CliRunner

whisper = pytest.importorskip("whisper")

from talkbench import media, suites, weights  # noqa: E402
from talkbench import transcribe as tr  # noqa: E402
from talkbench.cli import app  # noqa: E402
from talkbench.evaluate import EvaluateConfig, evaluate  # noqa: E402
from talkbench.leaderboard import build_leaderboard, deduplicate, group_rows, read_summary_rows  # noqa: E402
from talkbench.nets.checkpoint_keys import CheckpointError  # noqa: E402
from talkbench.synthetic.corpus import synthesize_corpus  # noqa: E402

# Whisper's 30-s window is fixed (n_audio_ctx 1500 = 3000 mel frames / 2); everything else is as small as it goes.
# n_vocab 51864: the English-only tokenizer (gpt2.tiktoken, shipped in the openai-whisper package).
TINY_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=8, n_audio_head=2, n_audio_layer=1, n_vocab=51864,
                 n_text_ctx=16, n_text_state=8, n_text_head=2, n_text_layer=1)


WORD = "hello"


def save_tiny_whisper(path: Path, seed: int = 0) -> Path:
    """A random Whisper in the layout of the released files: {'dims': dict, 'model_state_dict': fp16 tensors}.

    One change makes its output predictable: the decoder's final layer norm gives the same vector at every step
    (weight 0, bias = the embedding of " hello", scaled up), so the logits (tied to the token embedding) always
    pick " hello" among the text tokens, whatever the audio.
    """
    torch.manual_seed(seed)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**TINY_DIMS))
    (token,) = whisper.tokenizer.get_tokenizer(multilingual=False).encode(" " + WORD)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0.0, 0.1)  # Whisper leaves it uninitialised (torch.empty)
        model.decoder.token_embedding.weight[token] *= 5.0
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.copy_(model.decoder.token_embedding.weight[token])
    torch.save({"dims": dict(TINY_DIMS), "model_state_dict": {k: v.half() for k, v in model.state_dict().items()}},
               path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("asr_corpus")
    synthesize_corpus(out, n_train=0, n_test=2, seed=777)
    return out / "test"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny.en.pt")


def clips_only(corpus: Path, dest: Path) -> Path:
    """A folder suite of the corpus clips: the videos (and face boxes), no transcripts."""
    for video in sorted((corpus / "main").rglob("*.mp4")):
        target = dest / video.relative_to(corpus / "main")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, target)
        shutil.copyfile(video.with_suffix(".npy"), target.with_suffix(".npy"))
    return dest


def read_table(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row["text"] for row in csv.DictReader(f)}


def test_loader_builds_whisper_from_its_own_file_format_and_refuses_others(tiny, tmp_path):
    model = tr.load_whisper(tiny)
    assert isinstance(model, whisper.model.Whisper) and not model.is_multilingual
    reference = torch.load(tiny, weights_only=True)["model_state_dict"]  # test-made file: plain torch.load is fine
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference[name].float(), rtol=0, atol=0)
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(CheckpointError, match="dims"):
        tr.load_whisper(bad)
    state = dict(reference)
    state.pop("decoder.ln.weight")
    torch.save({"dims": dict(TINY_DIMS), "model_state_dict": state}, bad)
    with pytest.raises(CheckpointError, match="missing keys: decoder.ln.weight"):
        tr.load_whisper(bad)
    with pytest.raises(ValueError, match="--model must be one of"):
        tr.card_name("huge.en")
    assert tr.card_name("tiny.en") == "whisper-tiny.en" and "small.en" in tr.whisper_models()


def test_transcribe_evaluate_and_leaderboard_keep_asr_transcripts_apart(corpus, tiny, tmp_path):
    asr = clips_only(corpus, tmp_path / "asr")
    runner = CliRunner()
    result = runner.invoke(app, ["transcribe", str(asr), "--model", "tiny.en", "--weights",
                                 f"whisper-tiny.en={tiny}"])
    assert result.exit_code == 0, result.output
    table = read_table(asr / suites.TRANSCRIPTS_CSV)
    clips = sorted(p.relative_to(asr).as_posix() for p in asr.rglob("*.mp4"))
    assert sorted(table) == clips
    assert all(text and set(text.split()) == {WORD} for text in table.values())  # Whisper's " Hello hello", normalised
    provenance = json.loads((asr / suites.TRANSCRIPTS_PROVENANCE).read_text())
    assert provenance["model"] == "whisper-tiny.en" and provenance["source"] == "asr"
    assert provenance["sha256"] == weights.file_sha256(tiny)
    assert provenance["asr_package"] == f"openai-whisper {whisper.__version__}"
    assert provenance["decoding"]["temperature"] == 0.0 and provenance["decoding"]["language"] == "en"
    # deterministic: a second transcription writes the same table
    again = tr.transcribe_folder(asr, out=tmp_path / "again.csv", model="tiny.en", weights={"whisper-tiny.en": tiny})
    assert read_table(again.csv_path) == table

    # the same clips with their human transcripts
    human = clips_only(corpus, tmp_path / "human")
    with open(human / suites.TRANSCRIPTS_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text"])
        for rel in clips:
            writer.writerow([rel, suites.read_lrs2_text((corpus / "main" / rel).with_suffix(".txt"))])

    runs = {}
    for name, folder in (("asr", asr), ("human", human)):
        runs[name] = evaluate(EvaluateConfig(generated=folder, out=tmp_path / f"run_{name}", metrics=("wer1", "ver"),
                                             suite="auto", protocol="mini", model="ground-truth"))
        assert runs[name].n_failed == 0 and runs[name].n_clips == len(clips)
    assert runs["asr"].summary["transcripts"] == "asr:whisper-tiny.en"
    assert runs["human"].summary["transcripts"] == "human"
    assert runs["human"].summary["wer1"] < runs["asr"].summary["wer1"]  # a random Whisper's words are not said

    rows = deduplicate(read_summary_rows([runs["asr"].run_dir, runs["human"].run_dir]))
    assert len(rows) == 2  # same model, suite and protocol: both kept
    groups = group_rows(rows)
    assert len(groups) == 2 and all(len(g) == 1 for g in groups.values())
    assert any("transcripts=asr:whisper-tiny.en" in options for _, _, options in groups)
    board = build_leaderboard([runs["asr"].run_dir, runs["human"].run_dir], tmp_path / "board" / "leaderboard.csv")
    assert {r["transcripts"] for r in board} == {"human", "asr:whisper-tiny.en"}
    assert (tmp_path / "board" / "leaderboard.md").read_text().count("### ") == 2


def test_driving_audio_folder_edited_tables_and_failures(corpus, tiny, tmp_path):
    folder = clips_only(corpus, tmp_path / "gen")
    audio = tmp_path / "driving"
    clips = sorted(folder.rglob("*.mp4"))
    for video in clips[:1]:  # driving audio for the first clip only
        target = audio / video.relative_to(folder).with_suffix(".wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(target, media.SAMPLE_RATE, media.read_wav_int16(video))
    result = CliRunner().invoke(app, ["transcribe", str(folder), "--audio-dir", str(audio), "--model", "tiny.en",
                                      "--weights", f"whisper-tiny.en={tiny}"])
    assert result.exit_code == 1, result.output  # one clip had no driving audio
    provenance = json.loads((folder / suites.TRANSCRIPTS_PROVENANCE).read_text())
    assert provenance["audio"] == str(audio.resolve())
    missing = clips[1].relative_to(folder).as_posix()
    assert list(provenance["failed"]) == [missing] and "no driving audio" in provenance["failed"][missing]
    assert read_table(folder / suites.TRANSCRIPTS_CSV)[missing] == ""

    table = folder / suites.TRANSCRIPTS_CSV
    assert suites.transcripts_label(suites.transcripts_provenance(table)) == "asr:whisper-tiny.en"
    table.write_text(table.read_text().replace(",\n", ",hand written\n"))
    assert suites.transcripts_label(suites.transcripts_provenance(table)) == "asr:whisper-tiny.en+edited"
    (folder / suites.TRANSCRIPTS_PROVENANCE).write_text("{}")
    with pytest.raises(ValueError, match="transcripts.json: not a talkbench transcripts provenance"):
        suites.transcripts_provenance(table)
    assert suites.transcripts_label(None) == "human"
