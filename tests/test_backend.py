import numpy as np
import pytest
import torch

from gpu_cnmf import backend
from gpu_cnmf.errors import DeviceError


def test_cpu_device():
    assert backend.get_device(False) == torch.device("cpu")
    assert backend.get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_use_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="use_cuda=True but no CUDA GPU"):
        backend.get_device(True)
    with pytest.raises(DeviceError):
        backend.get_device("cuda:0")


def test_bad_use_cuda_value():
    with pytest.raises(DeviceError, match="use_cuda"):
        backend.get_device(3.5)
    with pytest.raises(DeviceError, match="not a device name"):
        backend.get_device("gpu please")


def test_frames_per_chunk_respects_budget():
    # 512x512 float32 frames, 4 working copies each: 4 MiB per frame.
    n = backend.frames_per_chunk((512, 512), budget=40 * 1024**2, copies=4)
    assert n == 10
    assert backend.frames_per_chunk((512, 512), budget=1) == 1
    assert backend.frames_per_chunk((8, 8), budget=10**9, max_frames=7) == 7


def test_memory_budget_env_override(monkeypatch):
    monkeypatch.setenv("GPU_CNMF_MEMORY_BUDGET", "12345")
    assert backend.memory_budget("cpu") == 12345
    monkeypatch.delenv("GPU_CNMF_MEMORY_BUDGET")
    assert 0 < backend.memory_budget("cpu") <= backend.free_memory("cpu")


def test_to_tensor_roundtrip_exact_for_movies():
    rng = np.random.default_rng(0)
    for dtype in (np.uint16, np.int16, np.float32):
        a = rng.integers(0, 60000 if dtype == np.uint16 else 3000, (3, 5, 7)).astype(dtype)
        t = backend.to_tensor(a, "cpu")
        assert t.dtype == torch.float32
        np.testing.assert_array_equal(backend.to_numpy(t), a.astype(np.float32))
    # read-only memmap-like input is accepted
    ro = np.arange(12, dtype=np.float32).reshape(3, 4)
    ro.flags.writeable = False
    np.testing.assert_array_equal(backend.to_numpy(backend.to_tensor(ro, "cpu")), ro)


def test_pinned_empty_on_cpu_is_plain():
    buf = backend.pinned_empty((4, 4), torch.float32, "cpu")
    assert buf.shape == (4, 4) and not buf.is_pinned()


@pytest.mark.gpu
def test_dlpack_exchange_shares_memory():
    cp = pytest.importorskip("cupy")
    t = torch.arange(10, dtype=torch.float32, device="cuda")
    c = backend.to_cupy(t)
    c[0] = 42
    assert float(t[0]) == 42.0
    back = backend.from_cupy(c)
    assert back.data_ptr() == t.data_ptr()
    assert isinstance(c, cp.ndarray)


@pytest.mark.gpu
def test_pinned_buffer_and_budget_on_gpu():
    dev = backend.get_device(True)
    assert backend.pinned_empty((2, 2), torch.float32, dev).is_pinned()
    assert backend.free_memory(dev) > 0
