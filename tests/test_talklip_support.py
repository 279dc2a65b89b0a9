"""Helpers shared by the TalkLip generate/losses/train tests (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import FIXTURES
from recipe import fill

TALKLIP = FIXTURES / "talklip"


def tiny_expert(seed: int = 0):
    """A tiny AV-HuBERT seq2seq lip reader (2×64 encoder, 2×64 decoder, 200 tokens) with stand-in weights."""
    from talkbench.nets.avhubert import AVHubertConfig, AVHubertSeq2Seq

    cfg = AVHubertConfig(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
                         decoder_layers=2, decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_attention_heads=4,
                         vocab_size=200, label_embs_shape=(16, 32))
    model = AVHubertSeq2Seq(cfg)
    filled = fill([(k, tuple(v.shape)) for k, v in model.state_dict().items()], seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in filled.items()})
    return model.eval()


def tiny_tokenizer():
    """The AV-HuBERT fixture's 200-piece sentencepiece model + dictionary."""
    from talkbench.nets.avhubert_tokenizer import Tokenizer

    return Tokenizer.from_files(TALKLIP / "expert" / "spm_unigram200.model", TALKLIP / "expert" / "dict.wrd.txt")


def read_frames(name: str, max_frames: int | None = None) -> np.ndarray:
    """uint8 BGR frames of a fixture clip, decoded with cv2 (what the reference reads)."""
    import cv2

    cap = cv2.VideoCapture(str(TALKLIP / f"{name}.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    frames = np.stack(frames)
    return frames[:max_frames] if max_frames else frames


def read_wav(name: str) -> np.ndarray:
    from scipy.io import wavfile

    return wavfile.read(str(TALKLIP / f"{name}.wav"))[1]


def transcript(name: str) -> str:
    return (TALKLIP / f"{name}.txt").read_text().strip()


def tiny_generator_file(path: Path) -> Path:
    """The parity fixture's tiny generator, filled with the recipe, saved in TalkLip's layout."""
    from recipe import filled_state_dict

    sd = filled_state_dict(TALKLIP / "keys.json")
    torch.save({"state_dict": sd, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


def _plain(obj):
    """Replace the unpickler's ForeignObject stand-ins by their plain state (so the file re-pickles cleanly)."""
    from talkbench.safe_unpickle import ForeignObject

    if isinstance(obj, ForeignObject):
        return _plain(obj.state)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def tiny_expert_file(path: Path) -> Path:
    """A loadable tiny AV-HuBERT seq2seq checkpoint: the AV-HuBERT fixture's stub (cfg, task_state) with its
    zero tensors replaced by the stand-in recipe (seed 0, the file's key order)."""
    from talkbench.safe_unpickle import load_checkpoint

    stub = load_checkpoint(TALKLIP / "expert" / "checkpoint_stub.pt")
    model = stub["model"]
    filled = fill([(k, tuple(v.shape)) for k, v in model.items() if v.is_floating_point()], 0)
    state = {k: (torch.from_numpy(filled[k]) if k in filled else v.clone()) for k, v in model.items()}
    ckpt = {"cfg": _plain(stub["cfg"]), "model": state, "task_state": _plain(stub["task_state"])}
    torch.save(ckpt, path)
    return path


def short_lrs2_folder(root: Path, clips=("meeting", "another"), n: int = 12, boxes: bool = True) -> list[str]:
    """An LRS2-layout folder (main/spk<k>/00001.mp4 + .txt [+ .npy boxes]) of the first n frames of fixture clips."""
    from talkbench import media

    ids = []
    for k, name in enumerate(clips):
        folder = root / "main" / f"spk{k}"
        folder.mkdir(parents=True, exist_ok=True)
        media.write_clip(folder / "00001.mp4", read_frames(name, n), read_wav(name)[:n * 640])
        (folder / "00001.txt").write_text("Text:  " + (TALKLIP / f"{name}.txt").read_text())
        if boxes:
            np.save(folder / "00001.npy", np.tile([8, 4, 152, 156], (n, 1)))
        ids.append(f"main/spk{k}/00001")
    return ids
