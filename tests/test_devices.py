"""GPU readiness on any machine (issue #20 part 4): ``--device`` resolution, the parity flags pinned for CUDA, the
host→device transfer helper and the observers' use of it. The tests marked ``cuda`` run only where a GPU is;
see docs/gpu.md for what is (not) verified here."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from talkbench import devices
from talkbench.devices import ENV_CUDA_PARITY, pin_cuda_parity, resolve_device, to_device
from talkbench.observers import fid, fvd, identity
from talkbench.observers import lpips as obs_lpips

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def cuda_flags():
    """Save and restore PyTorch's process-wide TF32 / cuDNN flags around a test that changes them."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def _loose_flags() -> None:
    """The flags a fast-but-inexact configuration would have (TF32 everywhere, autotuned cuDNN)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def _flags() -> tuple[bool, bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark


def _fake_tensor(device: str) -> mock.MagicMock:
    tensor = mock.MagicMock(spec=torch.Tensor)
    tensor.device = torch.device(device)
    return tensor


# ------------------------------------------------------------------------------------------------ to_device

@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_to_device_on_the_cpu_is_the_same_tensor(device) -> None:
    tensor = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    assert to_device(tensor, device) is tensor


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_a_cpu_tensor_goes_to_cuda_pinned_and_non_blocking(device) -> None:
    tensor = _fake_tensor("cpu")
    out = to_device(tensor, device)
    tensor.pin_memory.assert_called_once_with()
    tensor.pin_memory.return_value.to.assert_called_once_with(torch.device(device), non_blocking=True)
    tensor.to.assert_not_called()
    assert out is tensor.pin_memory.return_value.to.return_value


@pytest.mark.parametrize("source, target", [("cuda", "cuda"), ("cuda:0", "cuda:1"), ("cuda", "cpu")])
def test_other_transfers_are_a_plain_to(source: str, target: str) -> None:
    # device -> device needs no pinning; device -> host must block, or the host would read before the copy ends
    tensor = _fake_tensor(source)
    out = to_device(tensor, target)
    tensor.pin_memory.assert_not_called()
    tensor.to.assert_called_once_with(torch.device(target))
    assert out is tensor.to.return_value


def test_other_device_types_are_not_pinned() -> None:
    out = to_device(torch.ones(2, 3), "meta")
    assert out.device.type == "meta" and out.shape == (2, 3)


# ------------------------------------------------------------------------------------------------ resolve_device

def test_resolve_device_refuses_cuda_without_a_gpu_and_leaves_the_flags(monkeypatch, cuda_flags) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _loose_flags()
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"--device {name}: no CUDA device is available here; use --device cpu"):
            resolve_device(name)
    assert _flags() == (True, True, True)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", ""])
def test_resolve_device_refuses_names_torch_does_not_know(name: str) -> None:
    with pytest.raises(ValueError, match="is not a device; use cpu, cuda or cuda:N"):
        resolve_device(name)


def test_resolve_device_cpu_leaves_the_flags(cuda_flags) -> None:
    _loose_flags()
    assert resolve_device("cpu") == torch.device("cpu")
    assert _flags() == (True, True, True)


def test_resolve_device_cuda_pins_full_fp32(monkeypatch, cuda_flags) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(ENV_CUDA_PARITY, raising=False)
    _loose_flags()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert _flags() == (False, False, False)


def test_the_environment_switch_keeps_the_flags(monkeypatch, cuda_flags) -> None:
    monkeypatch.setenv(ENV_CUDA_PARITY, "0")
    _loose_flags()
    assert pin_cuda_parity() is False
    assert _flags() == (True, True, True)
    monkeypatch.setenv(ENV_CUDA_PARITY, "1")
    assert pin_cuda_parity() is True
    assert _flags() == (False, False, False)


# ------------------------------------------------------------------------------------------------ observers

class _Pool3:
    """Stand-in Inception: per-channel means of the images (values depend on each frame, so order is checked)."""

    def pool3(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def _spy(monkeypatch, module) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    calls: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def spy(tensor: torch.Tensor, device):
        calls.append((tensor.dtype, tuple(tensor.shape)))
        return devices.to_device(tensor, device)

    monkeypatch.setattr(module, "to_device", spy)
    return calls


def test_fid_sends_uint8_batches_and_gathers_every_batch_in_order(monkeypatch) -> None:
    calls = _spy(monkeypatch, fid)
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    got = fid.pool3_features(_Pool3(), frames, torch.device("cpu"), batch=2)
    want = frames[:, :, :, ::-1].astype(np.float32).mean(axis=(1, 2)) / 255
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert calls == [(torch.uint8, (2, 4, 6, 3)), (torch.uint8, (2, 4, 6, 3)), (torch.uint8, (1, 4, 6, 3))]


def test_fvd_sends_uint8_batches_and_gathers_every_batch_in_order(monkeypatch) -> None:
    calls = _spy(monkeypatch, fvd)
    monkeypatch.setattr(fvd, "preprocess_clips", lambda clips: clips.float())
    windows = np.random.default_rng(1).integers(0, 256, size=(3, 16, 2, 2, 3), dtype=np.uint8)
    got = fvd.i3d_logits(lambda x: x.flatten(1)[:, :7], windows, torch.device("cpu"), batch=2)
    np.testing.assert_array_equal(got, windows.reshape(3, -1)[:, :7].astype(np.float32))
    assert calls == [(torch.uint8, (2, 16, 2, 2, 3)), (torch.uint8, (1, 16, 2, 2, 3))]


def test_lpips_sends_float_inputs_and_gathers_every_chunk_in_order(monkeypatch) -> None:
    calls = _spy(monkeypatch, obs_lpips)
    rng = np.random.default_rng(2)
    gen, ref = (rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8) for _ in range(2))
    got = obs_lpips.frame_distances(lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)), gen, ref, torch.device("cpu"),
                                    chunk=2)
    want = np.abs(gen.astype(np.float64) - ref.astype(np.float64)).mean(axis=(1, 2, 3)) / 127.5
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert [c[0] for c in calls] == [torch.float32] * 4 and [c[1][0] for c in calls] == [2, 2, 1, 1]


@pytest.mark.parametrize("device, batch", [("cpu", identity.BATCH), ("cuda", identity.CUDA_BATCH),
                                           (torch.device("cuda", 1), identity.CUDA_BATCH)])
def test_identity_batches_more_crops_on_a_gpu(monkeypatch, device, batch: int) -> None:
    seen = {}

    def embeddings(model, crops, dev, size):
        seen["batch"] = size
        return np.zeros((len(crops), 512), dtype=np.float32)

    monkeypatch.setattr(identity, "embeddings", embeddings)
    observer = identity.IdentityObserver(model=None, device=device)
    observer._embed(np.zeros((1, 112, 112, 3), dtype=np.uint8))
    assert seen["batch"] == batch and identity.CUDA_BATCH > identity.BATCH


# ------------------------------------------------------------------------------------------------ on a GPU only

@cuda
def test_to_device_on_a_gpu_gives_the_same_values(cuda_flags) -> None:
    host = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    out = to_device(host, resolve_device("cuda"))
    assert out.device.type == "cuda" and out.dtype == torch.uint8
    assert torch.equal(out.cpu(), host)


@cuda
def test_convolutions_on_the_gpu_are_full_fp32_after_resolve_device(cuda_flags) -> None:
    """With TF32 (cuDNN's default on Ampere and later) a 3×3×256 convolution is off by ~1e-3 relative; in fp32
    the difference from the CPU is summation order only."""
    _loose_flags()
    device = resolve_device("cuda")
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 256, 16, 16, generator=gen), torch.randn(64, 256, 3, 3, generator=gen)
    want = torch.nn.functional.conv2d(x.double(), w.double())
    got = torch.nn.functional.conv2d(to_device(x, device), to_device(w, device)).cpu().double()
    assert float(((got - want).abs() / want.abs().clamp_min(1.0)).max()) < 1e-5
