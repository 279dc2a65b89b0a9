"""fairseq Dictionary + sentencepiece, as av_hubert encodes targets and decodes hypotheses."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkbench.safe_unpickle import load_checkpoint
from talkbench.nets.avhubert_tokenizer import Dictionary, Tokenizer, TokenizerError
from test_avhubert_common import FIXTURE, expected_json


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_task_state(load_checkpoint(FIXTURE / "checkpoint_stub.pt")["task_state"])


def test_dictionary_file_puts_specials_first_and_matches_task_state(tokenizer: Tokenizer) -> None:
    loaded = Dictionary.load(FIXTURE / "dict.wrd.txt")
    assert loaded.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (loaded.bos, loaded.pad, loaded.eos, loaded.unk) == (0, 1, 2, 3)
    assert loaded.symbols == tokenizer.dictionary.symbols
    assert len(loaded) == 200
    # dictionary index == sentencepiece id for gen_subword.py vocabularies
    assert all(tokenizer.sp.id_to_piece(i) == loaded.symbols[i] for i in range(4, 200))


@pytest.mark.parametrize("clip", ["meeting", "another"])
def test_targets_and_round_trip_match_reference(tokenizer: Tokenizer, clip: str) -> None:
    info = expected_json()
    text = info[f"{clip}.transcript"]
    assert tokenizer.pieces(text) == info[f"{clip}.spm_pieces"].split()
    assert tokenizer.encode(text) == info[f"{clip}.target_tokens"]
    assert tokenizer.decode(info[f"{clip}.target_tokens"]) == info[f"{clip}.ref_decoded"]
    assert tokenizer.normalize_reference(text) == info[f"{clip}.ref_decoded"]


def test_decode_strips_specials_and_joins_pieces(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("we talk today")
    noisy = [0] + ids[:-1] + [1, 1] + [2]
    assert tokenizer.decode(noisy) == "we talk today"
    assert tokenizer.decode(ids[:1] + [3] + ids[1:]).startswith("we<unk>")


def test_unknown_pieces_map_to_unk(tokenizer: Tokenizer) -> None:
    ids = tokenizer.dictionary.encode_line("▁the zzzz", append_eos=True)
    assert ids == [tokenizer.dictionary.index("▁the"), 3, 2]


def test_legacy_sentencepiece_state_of_raw_bytes() -> None:
    stub = load_checkpoint(FIXTURE / "checkpoint_stub.pt")["task_state"]
    sp = stub["s2s_tokenizer"].state["sp"]
    sp.state = sp.state["model_proto"]  # sentencepiece < 0.1.97 pickled the serialized model itself
    legacy = Tokenizer.from_task_state(stub)
    assert legacy.encode("nine") == Tokenizer.from_files(FIXTURE / "spm_unigram200.model",
                                                         FIXTURE / "dict.wrd.txt").encode("nine")


def test_bad_sources_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no target_dictionary"):
        Tokenizer.from_task_state({"dictionaries": []})
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.from_files(tmp_path / "missing.model", FIXTURE / "dict.wrd.txt")
    dup = tmp_path / "dict.txt"
    dup.write_text("a 1\nb 1\na 1\n")
    with pytest.raises(TokenizerError, match="duplicate symbol 'a'"):
        Dictionary.load(dup)
    bad = tmp_path / "bad.txt"
    bad.write_text("a\n")
    with pytest.raises(TokenizerError, match="bad.txt:1"):
        Dictionary.load(bad)
    overwrite = tmp_path / "ow.txt"
    overwrite.write_text("a 1\na 1 #fairseq:overwrite\nb 2\n")
    assert Dictionary.load(overwrite).symbols[4:] == ["a", "b"]
