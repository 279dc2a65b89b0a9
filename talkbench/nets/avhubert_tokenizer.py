"""The AV-HuBERT lip reader's text side: a fairseq ``Dictionary`` and a SentencePiece model, without fairseq.

av_hubert encodes a transcript as ``spm.EncodeAsPieces(text.lower())`` joined by spaces, then maps the
pieces through the Dictionary (unknown piece → ``<unk>``) and appends ``</s>``. It decodes token ids with
``Dictionary.string`` (dropping ``</s>``, ``<pad>`` and ``<s>``, pieces joined by spaces) followed by
fairseq's ``SentencepieceBPE.decode`` (remove spaces, ``▁`` → space, strip).

Both halves come either from a checkpoint's ``task_state`` (``target_dictionary`` = a pickled fairseq
Dictionary, ``s2s_tokenizer`` = a pickled SentencepieceBPE holding a SentencePieceProcessor whose state
is the serialized model) or from files: the sentencepiece ``.model`` and a fairseq ``dict.txt``.

AV-HuBERT only: loaded with the seq2seq model by :func:`talkbench.nets.avhubert.load_avhubert_seq2seq`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import sentencepiece as spm

from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

SPACE = "\u2581"
_WHITESPACE = re.compile(r"\s+")


class TokenizerError(ValueError):
    """The dictionary or sentencepiece model cannot be read; the message names the source and the fix."""


@dataclass
class Dictionary:
    """A fairseq ``Dictionary``: symbol list + index lookup, with the four special symbols first.

    Attributes:
        symbols: symbol of each index.
        bos, pad, eos, unk: indices of ``<s>``, ``<pad>``, ``</s>``, ``<unk>``.
    """

    symbols: list[str]
    bos: int = 0
    pad: int = 1
    eos: int = 2
    unk: int = 3
    indices: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.indices:
            # a repeated symbol keeps its first index, as fairseq's add_symbol does
            for i, s in enumerate(self.symbols):
                self.indices.setdefault(s, i)

    def __len__(self) -> int:
        return len(self.symbols)

    def __getitem__(self, index: int) -> str:
        return self.symbols[index] if 0 <= index < len(self.symbols) else self.symbols[self.unk]

    def index(self, symbol: str) -> int:
        return self.indices.get(symbol, self.unk)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], source: str = "task_state") -> "Dictionary":
        """From a pickled fairseq Dictionary's state (``symbols``, ``indices``, ``bos_index``, ...)."""
        try:
            symbols = [str(s) for s in state["symbols"]]
        except (KeyError, TypeError) as err:
            raise TokenizerError(f"{source}: not a fairseq Dictionary state (no `symbols`).") from err
        return cls(symbols=symbols, bos=int(state.get("bos_index", 0)), pad=int(state.get("pad_index", 1)),
                   eos=int(state.get("eos_index", 2)), unk=int(state.get("unk_index", 3)),
                   indices={str(k): int(v) for k, v in dict(state.get("indices") or {}).items()})

    @classmethod
    def load(cls, path: str | Path) -> "Dictionary":
        """From a fairseq ``dict.txt`` (``<symbol> <count>`` per line; specials ``<s> <pad> </s> <unk>`` come first)."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: dictionary file not found; pass the dict.txt that came with the checkpoint.")
        symbols = ["<s>", "<pad>", "</s>", "<unk>"]
        indices = {s: i for i, s in enumerate(symbols)}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.rstrip()
            if not line:
                continue
            try:
                word, count = line.rsplit(" ", 1)
                overwrite = count == "#fairseq:overwrite"
                if overwrite:
                    word, count = word.rsplit(" ", 1)
                int(count)
            except ValueError as err:
                raise TokenizerError(f"{path}:{number}: expected '<symbol> <count>', got {line!r}.") from err
            if word in indices and not overwrite:
                raise TokenizerError(f"{path}:{number}: duplicate symbol {word!r} (fairseq refuses it too).")
            if word in indices:
                continue
            indices[word] = len(symbols)
            symbols.append(word)
        return cls(symbols=symbols, indices=indices)

    def encode_line(self, line: str, append_eos: bool = True) -> list[int]:
        """Whitespace-split symbols → indices (unknown → ``<unk>``), plus ``</s>``."""
        words = _WHITESPACE.sub(" ", line).strip().split()
        ids = [self.index(w) for w in words]
        return ids + [self.eos] if append_eos else ids

    def string(self, ids: Iterable[int], extra_ignore: Iterable[int] = ()) -> str:
        """fairseq ``Dictionary.string``: symbols joined by spaces, without ``</s>``, ``<s>`` and ``extra_ignore``."""
        ignore = set(extra_ignore) | {self.eos, self.bos}
        return " ".join(self[int(i)] for i in ids if int(i) not in ignore)


class Tokenizer:
    """Sentencepiece + fairseq Dictionary, as av_hubert's ``LabelEncoderS2SToken`` uses them.

    Attributes:
        dictionary: the target :class:`Dictionary`.
        sp: the ``sentencepiece.SentencePieceProcessor``.
    """

    def __init__(self, dictionary: Dictionary, model_proto: bytes) -> None:
        self.dictionary = dictionary
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise TokenizerError(f"cannot read the sentencepiece model ({err}).") from err

    # -- constructors ----------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, spm_model: str | Path, dict_txt: str | Path) -> "Tokenizer":
        """From a sentencepiece ``.model`` file and a fairseq ``dict.txt``."""
        spm_model = Path(spm_model)
        if not spm_model.is_file():
            raise TokenizerError(f"{spm_model}: sentencepiece model not found; pass the .model file the lip reader "
                                 "was trained with.")
        return cls(Dictionary.load(dict_txt), spm_model.read_bytes())

    @classmethod
    def from_task_state(cls, task_state: Mapping[str, Any], source: str = "task_state") -> "Tokenizer":
        """From a checkpoint's ``task_state`` (as unpickled by :mod:`talkbench.safe_unpickle`).

        Raises:
            TokenizerError: ``target_dictionary`` or ``s2s_tokenizer`` is missing or unreadable.
        """
        if not isinstance(task_state, Mapping):
            raise TokenizerError(f"{source}: task_state is not a dict.")
        dictionary = task_state.get("target_dictionary")
        bpe = task_state.get("s2s_tokenizer")
        if dictionary is None or bpe is None:
            raise TokenizerError(f"{source}: task_state has no target_dictionary / s2s_tokenizer; pass the "
                                 "sentencepiece model and dict.txt instead.")
        dict_state = getattr(dictionary, "state", dictionary)
        bpe_state = getattr(bpe, "state", bpe)
        if not isinstance(bpe_state, Mapping) or "sp" not in bpe_state:
            raise TokenizerError(f"{source}: s2s_tokenizer is not a fairseq SentencepieceBPE (no `sp`).")
        return cls(Dictionary.from_state(dict_state, source), _model_proto(bpe_state["sp"], source))

    @classmethod
    def from_task_state_file(cls, path: str | Path) -> "Tokenizer":
        """From a standalone pickled task_state (e.g. TalkLip's ``task_state.pt``), read with the restricted unpickler."""
        return cls.from_task_state(load_checkpoint(path), str(path))

    # -- text <-> ids ----------------------------------------------------------------------------------
    def pieces(self, text: str) -> list[str]:
        """Sentencepiece pieces of ``text.lower()``."""
        return list(self.sp.encode_as_pieces(text.lower()))

    def encode(self, text: str) -> list[int]:
        """Target ids of a transcript (lowercased, pieces, dictionary ids, ``</s>`` appended)."""
        return self.dictionary.encode_line(" ".join(self.pieces(text)), append_eos=True)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, as infer_s2s decodes a hypothesis or a target (``</s>``, ``<pad>``, ``<s>`` dropped)."""
        joined = self.dictionary.string(ids, extra_ignore=(self.dictionary.pad,))
        return joined.replace(" ", "").replace(SPACE, " ").strip()

    def normalize_reference(self, text: str) -> str:
        """The reference as infer_s2s scores it: lowercased, round-tripped through the tokenizer."""
        return self.decode(self.encode(text))


def _model_proto(sp: Any, source: str) -> bytes:
    """Serialized sentencepiece model from a pickled SentencePieceProcessor stand-in.

    sentencepiece ≥ 0.1.97 pickles a dict with ``model_proto``; older versions pickle the bytes themselves.
    """
    state = getattr(sp, "state", sp)
    if isinstance(state, Mapping):
        state = state.get("model_proto")
    if isinstance(state, str):
        state = state.encode("latin1")
    if not isinstance(state, (bytes, bytearray)) or not state:
        raise TokenizerError(f"{source}: the pickled SentencePieceProcessor holds no serialized model.")
    return bytes(state)
