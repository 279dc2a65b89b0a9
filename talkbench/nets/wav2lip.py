"""The Wav2Lip generator (Prajwal et al., ACM MM 2020; Rudrabha/Wav2Lip ``models/wav2lip.py``), official key names.

* ``audio_encoder``: 13 conv blocks, a ``1×80×16`` mel window → ``512×1×1``.
* ``face_encoder_blocks`` / ``face_decoder_blocks`` / ``output_block``: the U-Net that TalkLip later kept
  unchanged (same layers, same skip concatenation [decoder, encoder]), so it is built with
  :mod:`talkbench.nets.talklip`'s blocks: 6×96×96 (masked target BGR | reference BGR) → 3×96×96 BGR in [0, 1].

The released files (``wav2lip.pth``, ``wav2lip_gan.pth``) are ``torch.save({"state_dict", "optimizer",
"global_step", "global_epoch"})`` of a ``DataParallel`` model: every key starts with ``module.``, which
:func:`load_wav2lip` removes (as ``inference.py`` does) before a strict load. Files are read with the
restricted unpickler; no foreign code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, key_mismatch
from talkbench.nets.talklip import ENC_CHANNELS, ConvBlock, UNetChannels, _face_decoder, _face_encoder
from talkbench.safe_unpickle import load_checkpoint

#: audio encoder stage widths of the released model
AUDIO_CHANNELS = (32, 64, 128, 256, 512)
#: Most values a Wav2Lip file may hold (the released generator has 36.3 M); a larger file is refused unread.
MAX_ELEMENTS = 100_000_000
_FIX = ("Pass a Wav2Lip generator file (wav2lip.pth / wav2lip_gan.pth from the Wav2Lip README, cards wav2lip and "
        "wav2lip-gan).")


def _audio_encoder(c: tuple[int, ...]) -> nn.Sequential:
    """``1×80×16`` mel window → ``c[4]×1×1`` (strides 1, (3,1), 3, (3,2), 1)."""
    return nn.Sequential(
        ConvBlock(1, c[0], 3, 1, 1),
        ConvBlock(c[0], c[0], 3, 1, 1, residual=True),
        ConvBlock(c[0], c[0], 3, 1, 1, residual=True),
        ConvBlock(c[0], c[1], 3, (3, 1), 1),
        ConvBlock(c[1], c[1], 3, 1, 1, residual=True),
        ConvBlock(c[1], c[1], 3, 1, 1, residual=True),
        ConvBlock(c[1], c[2], 3, 3, 1),
        ConvBlock(c[2], c[2], 3, 1, 1, residual=True),
        ConvBlock(c[2], c[2], 3, 1, 1, residual=True),
        ConvBlock(c[2], c[3], 3, (3, 2), 1),
        ConvBlock(c[3], c[3], 3, 1, 1, residual=True),
        ConvBlock(c[3], c[4], 3, 1, 0),
        ConvBlock(c[4], c[4], 1, 1, 0),
    )


class Wav2LipGenerator(nn.Module):
    """Wav2Lip's generator (``models/wav2lip.py`` ``Wav2Lip``).

    Args:
        width_divisor: every width divided by this (1 = the released model; 4 = a quarter-width model).
    """

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()
        if width_divisor < 1:
            raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
        channels = UNetChannels.scaled(width_divisor)
        self.width_divisor = width_divisor
        self.face_encoder_blocks = _face_encoder(channels)
        self.audio_encoder = _audio_encoder(tuple(max(2, c // width_divisor) for c in AUDIO_CHANNELS))
        self.face_decoder_blocks = _face_decoder(channels, res_layers=7)
        self.output_block = nn.Sequential(ConvBlock(channels.decoder_in(7)[6], channels.output, 3, 1, 1),
                                          nn.Conv2d(channels.output, 3, kernel_size=1, stride=1, padding=0),
                                          nn.Sigmoid())

    def forward(self, audio: Tensor, faces: Tensor) -> Tensor:
        """Generate faces (argument order of the reference: audio first).

        Args:
            audio: mel windows ``N×1×80×16`` (:func:`talkbench.wav2lip_audio.mel_windows`).
            faces: ``N×6×96×96`` in [0, 1]: channels 0-2 the target crop with rows 48-95 zeroed, 3-5 the
                reference crop (BGR).
        Returns:
            ``N×3×96×96`` BGR in [0, 1].
        """
        feats = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = self.audio_encoder(audio)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), feats.pop()), dim=1)
        return self.output_block(x)


def unwrap_state_dict(obj: Any, path: str | Path = "<checkpoint>") -> dict[str, Tensor]:
    """The state dict of a Wav2Lip file: ``obj["state_dict"]`` (or a bare state dict), ``module.`` removed.

    Raises:
        CheckpointError: no state dict of tensors in the file.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a Wav2Lip checkpoint (expected a dict with a 'state_dict' of tensors, "
                              f"as wav2lip_train.py saves it). {_FIX}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def generator_from_state_dict(state_dict: Mapping[str, Tensor], path: str | Path = "<state dict>"
                              ) -> Wav2LipGenerator:
    """Build a generator of the width the tensors say and load it strictly.

    Raises:
        CheckpointError: non-finite or too many values, missing/unexpected/mis-shaped keys.
    """
    check_state_tensors(state_dict, path, _FIX, max_elements=MAX_ELEMENTS)
    first = state_dict.get("face_encoder_blocks.0.0.conv_block.0.weight")
    width = int(first.shape[0]) if isinstance(first, Tensor) and first.dim() == 4 and first.shape[0] else 0
    divisor = ENC_CHANNELS[1] // width if width and ENC_CHANNELS[1] % width == 0 else 1
    model = Wav2LipGenerator(divisor)
    problem = key_mismatch(model.state_dict(), state_dict, shown=8)
    if problem:
        raise CheckpointError(f"{path}: not a Wav2Lip generator checkpoint ({problem}). {_FIX}")
    model.load_state_dict(state_dict, strict=True)
    return model


def load_wav2lip(path: str | Path, device: str | torch.device = "cpu") -> Wav2LipGenerator:
    """Load ``wav2lip.pth`` / ``wav2lip_gan.pth`` (or a file of the same layout) in ``eval()`` mode on ``device``.

    Raises:
        FileNotFoundError: no such file; CheckpointError: not a Wav2Lip generator;
        talkbench.safe_unpickle.UnsafeCheckpointError: the file refers to code outside the allow-list.
    """
    state_dict = unwrap_state_dict(load_checkpoint(path, map_location="cpu"), path)
    return generator_from_state_dict(state_dict, path).to(device).eval()


def save_wav2lip_checkpoint(path: str | Path, model: Wav2LipGenerator, global_step: int = 0,
                            global_epoch: int = 0) -> None:
    """Write the released files' layout: ``{"state_dict": {"module." + key: tensor}, "optimizer": None, ...}``."""
    path = Path(path)
    payload = {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "optimizer": None,
               "global_step": int(global_step), "global_epoch": int(global_epoch)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
