"""S3FD face detector (VGG-16 SSD) with the official weights in both published key layouts.

* syncnet_python's ``detectors/s3fd`` (file ``sfd_face.pth``): keys ``vgg.N.*``, ``L2Norm3_3.weight``,
  ``extras.N.*``, ``loc.N.*``, ``conf.N.*`` — the canonical names of :class:`S3FDNet`.
* face_alignment's ``detection/sfd`` (file ``s3fd-619a316812.pth``, also Wav2Lip's copy): keys
  ``conv1_1.*`` ... ``fc7.*``, ``conv6_1.*`` ..., ``conv3_3_norm.weight``, ``conv3_3_norm_mbox_conf.*`` ...;
  renamed by :data:`FACE_ALIGNMENT_RENAMES`.

The two ports do not run the same computation, so the layout also selects the variant:

=================  ======================================  =====================================
                   ``syncnet_python``                      ``face_alignment``
=================  ======================================  =====================================
input              RGB, minus (123, 117, 104)               BGR, minus (104, 117, 123)
pool after conv3_3 ceil_mode=True                           floor
fc6                3×3, padding 6, dilation 6               3×3, padding 3, no dilation
=================  ======================================  =====================================

Box decoding (SSD priors: sizes 16..512 at strides 4..128, variances 0.1/0.2) is the same in both;
:meth:`S3FDNet.detect` applies syncnet_python's thresholds (candidates > 0.05, NMS 0.3, keep
> ``conf_threshold``, final NMS 0.1).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from talkbench.nets.checkpoint_keys import check_state_tensors, require_matching_keys
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("syncnet_python", "face_alignment")
_MIN_SIZES = (16, 32, 64, 128, 256, 512)
_STEPS = (4, 8, 16, 32, 64, 128)
_VARIANCES = (0.1, 0.2)

#: face_alignment name -> syncnet_python name (module prefix; ``.weight`` / ``.bias`` suffix kept)
FACE_ALIGNMENT_RENAMES: dict[str, str] = {
    # VGG-16 trunk: indices into syncnet_python's `vgg` ModuleList (ReLU/pool entries hold no keys)
    "conv1_1": "vgg.0", "conv1_2": "vgg.2",
    "conv2_1": "vgg.5", "conv2_2": "vgg.7",
    "conv3_1": "vgg.10", "conv3_2": "vgg.12", "conv3_3": "vgg.14",
    "conv4_1": "vgg.17", "conv4_2": "vgg.19", "conv4_3": "vgg.21",
    "conv5_1": "vgg.24", "conv5_2": "vgg.26", "conv5_3": "vgg.28",
    "fc6": "vgg.31", "fc7": "vgg.33",
    # extra SSD layers
    "conv6_1": "extras.0", "conv6_2": "extras.1", "conv7_1": "extras.2", "conv7_2": "extras.3",
    # L2 normalisation scales
    "conv3_3_norm": "L2Norm3_3", "conv4_3_norm": "L2Norm4_3", "conv5_3_norm": "L2Norm5_3",
    # heads, source level 0..5
    "conv3_3_norm_mbox_conf": "conf.0", "conv3_3_norm_mbox_loc": "loc.0",
    "conv4_3_norm_mbox_conf": "conf.1", "conv4_3_norm_mbox_loc": "loc.1",
    "conv5_3_norm_mbox_conf": "conf.2", "conv5_3_norm_mbox_loc": "loc.2",
    "fc7_mbox_conf": "conf.3", "fc7_mbox_loc": "loc.3",
    "conv6_2_mbox_conf": "conf.4", "conv6_2_mbox_loc": "loc.4",
    "conv7_2_mbox_conf": "conf.5", "conv7_2_mbox_loc": "loc.5",
}


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (key: ``weight``)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def _vgg(variant: str) -> nn.ModuleList:
    def conv(cin: int, cout: int, **kw) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, kw.pop("k", 3), 1, padding=kw.pop("p", 1), **kw), nn.ReLU(inplace=True)]

    fc6 = dict(p=6, dilation=6) if variant == "syncnet_python" else dict(p=3)
    return nn.ModuleList([
        *conv(3, 64), *conv(64, 64), nn.MaxPool2d(2, 2),                                   # 0-4
        *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2, 2),                               # 5-9
        *conv(128, 256), *conv(256, 256), *conv(256, 256),                                 # 10-15 (conv3_3 = 14)
        nn.MaxPool2d(2, 2, ceil_mode=variant == "syncnet_python"),                         # 16
        *conv(256, 512), *conv(512, 512), *conv(512, 512), nn.MaxPool2d(2, 2),             # 17-23 (conv4_3 = 21)
        *conv(512, 512), *conv(512, 512), *conv(512, 512), nn.MaxPool2d(2, 2),             # 24-30 (conv5_3 = 28)
        *conv(512, 1024, **fc6), *conv(1024, 1024, k=1, p=0),                              # 31-34 (fc6, fc7)
    ])


class S3FDNet(nn.Module):
    """S3FD network; :meth:`forward` gives raw per-prior scores and boxes, :meth:`detect` the faces."""

    def __init__(self, variant: str = "syncnet_python") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Argument `variant` must be one of {VARIANTS}, but got {variant!r}.")
        self.variant = variant
        self.vgg = _vgg(variant)
        self.L2Norm3_3 = L2Norm(256, 10)
        self.L2Norm4_3 = L2Norm(512, 8)
        self.L2Norm5_3 = L2Norm(512, 5)
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1, 1), nn.Conv2d(256, 512, 3, 2, padding=1),
                                     nn.Conv2d(512, 128, 1, 1), nn.Conv2d(128, 256, 3, 2, padding=1)])
        sources = (256, 512, 512, 1024, 512, 256)
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, 1, padding=1) for c in sources])
        # level 0 predicts 3 background scores + 1 face score ("max-out background")
        self.conf = nn.ModuleList([nn.Conv2d(c, 4 if i == 0 else 2, 3, 1, padding=1) for i, c in enumerate(sources)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs for a preprocessed batch.

        Args:
            x: (N, 3, H, W) mean-subtracted image (see :meth:`preprocess`).
        Returns:
            (scores (N, P) face probability, loc (N, P, 4) regression, priors (P, 4) cx, cy, w, h in [0, 1]).
        """
        size = x.shape[2:]
        sources = []
        for k in range(16):
            x = self.vgg[k](x)
        sources.append(self.L2Norm3_3(x))
        for k in range(16, 23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm4_3(x))
        for k in range(23, 30):
            x = self.vgg[k](x)
        sources.append(self.L2Norm5_3(x))
        for k in range(30, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        locs, confs, shapes = [], [], []
        for i, src in enumerate(sources):
            conf = self.conf[i](src)
            if i == 0:
                conf = torch.cat([conf[:, :3].max(dim=1, keepdim=True).values, conf[:, 3:]], dim=1)
            locs.append(self.loc[i](src).permute(0, 2, 3, 1).reshape(src.shape[0], -1, 4))
            confs.append(conf.permute(0, 2, 3, 1).reshape(src.shape[0], -1, 2))
            shapes.append(src.shape[2:])
        scores = torch.softmax(torch.cat(confs, 1), dim=-1)[..., 1]
        return scores, torch.cat(locs, 1), _priors(size, shapes, x.device)

    def preprocess(self, image_rgb: np.ndarray, scale: float) -> torch.Tensor:
        """RGB uint8 ``H×W×3`` -> (1, 3, h, w) float input, resized by ``scale`` with INTER_LINEAR."""
        img = cv2.resize(image_rgb, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        img = img.astype(np.float32)
        if self.variant == "syncnet_python":
            img -= np.array([123.0, 117.0, 104.0], dtype=np.float32)          # RGB order
        else:
            img = img[:, :, ::-1] - np.array([104.0, 117.0, 123.0], dtype=np.float32)  # BGR order
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)

    @torch.inference_mode()
    def detect(self, image_rgb: np.ndarray, conf_threshold: float = 0.8, scales: Sequence[float] = (1.0,),
               candidate_threshold: float = 0.05, nms_threshold: float = 0.3, top_k: int = 750,
               final_nms: float = 0.1) -> np.ndarray:
        """Faces in one RGB image, as syncnet_python's ``S3FD.detect_faces``.

        Returns:
            float64 ``K×5``: x1, y1, x2, y2 (input-image pixels), score.
        """
        h, w = image_rgb.shape[:2]
        device = next(self.parameters()).device
        found = []
        for s in scales:
            scores, loc, priors = self(self.preprocess(image_rgb, s).to(device))
            scores, boxes = scores[0], _decode(loc[0], priors)
            keep = scores > candidate_threshold
            sc, bx = scores[keep].double().cpu().numpy(), boxes[keep].double().cpu().numpy()
            order = nms(bx, sc, nms_threshold, max_candidates=5000)[:top_k]
            sc, bx = sc[order], bx[order]
            good = sc > conf_threshold
            found.append(np.concatenate([bx[good] * np.array([w, h, w, h]), sc[good, None]], axis=1))
        dets = np.concatenate(found, 0) if found else np.zeros((0, 5))
        return dets[nms(dets[:, :4], dets[:, 4], final_nms)] if len(dets) else np.zeros((0, 5))


def _priors(size, shapes, device) -> torch.Tensor:
    imh, imw = int(size[0]), int(size[1])
    out = []
    for (fh, fw), step, min_size in zip(shapes, _STEPS, _MIN_SIZES):
        ii, jj = torch.meshgrid(torch.arange(int(fh), dtype=torch.float64), torch.arange(int(fw), dtype=torch.float64),
                                indexing="ij")
        cx = (jj + 0.5) / (imw / step)
        cy = (ii + 0.5) / (imh / step)
        out.append(torch.stack([cx, cy, torch.full_like(cx, min_size / imw), torch.full_like(cy, min_size / imh)],
                               -1).reshape(-1, 4))
    return torch.cat(out).float().to(device)


def _decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD box decoding -> (P, 4) x1, y1, x2, y2 in [0, 1] image units."""
    centre = priors[:, :2] + loc[:, :2] * _VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * _VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], 1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_candidates: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression (areas without +1), highest score first.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    if max_candidates is not None:
        order = order[:max_candidates]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------- checkpoint loading

def detect_layout(keys: Sequence[str]) -> str:
    """``"syncnet_python"`` or ``"face_alignment"`` from a state dict's key names."""
    if any(k.startswith("vgg.") for k in keys):
        return "syncnet_python"
    if any(k.startswith("conv1_1.") for k in keys):
        return "face_alignment"
    raise ValueError(f"Not an S3FD checkpoint: expected keys `vgg.0.weight` (sfd_face.pth) or `conv1_1.weight` "
                     f"(s3fd-619a316812.pth), got {list(keys)[:5]}...")


def remap_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Official state dict (either layout) -> (:class:`S3FDNet` state dict, variant)."""
    layout = detect_layout(list(state))
    if layout == "syncnet_python":
        return dict(state), layout
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in FACE_ALIGNMENT_RENAMES:
            raise ValueError(f"Unexpected key `{key}` in a face_alignment-layout S3FD checkpoint.")
        out[f"{FACE_ALIGNMENT_RENAMES[prefix]}.{leaf}"] = value
    return out, layout


def load_s3fd(path: str | Path, device: str | torch.device = "cpu", variant: str | None = None) -> S3FDNet:
    """Load ``sfd_face.pth`` or ``s3fd-619a316812.pth`` (strict key check) into an eval-mode :class:`S3FDNet`.

    Args:
        variant: force the computation variant; default: the one that goes with the file's key layout.
    Raises:
        ValueError: the file is not an S3FD state dict (missing/unexpected keys listed), or has NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"S3FD checkpoint {path} does not exist; pass --weights s3fd=PATH or use the dlib detector.")
    state = load_checkpoint(path, map_location="cpu", mmap=False)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected an S3FD state dict, got {type(state).__name__}.")
    mapped, layout = remap_state_dict(state)
    model = S3FDNet(variant or layout)
    expected = model.state_dict()
    require_matching_keys(expected, mapped, path, f"an S3FD checkpoint ({layout} layout)",
                          "Pass sfd_face.pth (syncnet_python) or s3fd-619a316812.pth (face_alignment) with "
                          "--weights s3fd=PATH, or use the dlib detector.")
    check_state_tensors(mapped, path, "Download the S3FD file again, or use the dlib detector.")
    model.load_state_dict(mapped, strict=True)
    return model.eval().to(device)


__all__ = ["FACE_ALIGNMENT_RENAMES", "S3FDNet", "VARIANTS", "detect_layout", "load_s3fd", "nms", "remap_state_dict"]
