"""Memory budgets (backend), the out-of-memory retry, and peak memory of a run."""
import numpy as np
import pytest
import torch

from gpu_cnmf import backend
from gpu_cnmf.errors import DeviceError, MemoryBudgetError, ParameterError
from gpu_cnmf.params import CNMFParams


@pytest.fixture(autouse=True)
def _no_limits(monkeypatch):
    monkeypatch.delenv("GPU_CNMF_MEMORY_BUDGET", raising=False)
    yield
    backend.set_memory_limit(None)
    backend.inject_oom("*", 0)


@pytest.mark.parametrize("text, nbytes", [("4GB", 4 * 10**9), ("4 GiB", 4 * 2**30),
                                          ("512MiB", 512 * 2**20), ("1.5kb", 1500),
                                          (12345, 12345), ("2e9", 2 * 10**9)])
def test_parse_bytes(text, nbytes):
    assert backend.parse_bytes(text) == nbytes


@pytest.mark.parametrize("bad", ["4 lots", "", -1, 0, True, [4]])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ParameterError, match="memory_limit"):
        backend.parse_bytes(bad)


def test_memory_limit_parameter_is_validated():
    p = CNMFParams(params_dict={"memory_limit": "2GiB"})
    assert p.patch["memory_limit"] == "2GiB"
    with pytest.raises(ParameterError, match="patch.memory_limit"):
        CNMFParams(params_dict={"memory_limit": "two gigs"})


def test_user_limit_wins_and_leaves_room_for_the_interpreter(monkeypatch):
    monkeypatch.setenv("GPU_CNMF_MEMORY_BUDGET", "12345")
    assert backend.host_budget() == 12345 == backend.device_budget("cpu")
    backend.set_memory_limit("2GiB")
    held = backend.anon_memory()
    assert held > 0
    budget = backend.host_budget()
    assert 2 * 2**30 - held - 2**27 < budget < 2 * 2**30 - held
    assert backend.device_budget("cpu") == budget
    backend.set_memory_limit(None)
    assert backend.host_budget() == 12345


def test_memory_limits_context_restores():
    backend.set_memory_limit("3GB")
    with backend.memory_limits("1GB"):
        assert backend.get_memory_limit() == 10**9
    assert backend.get_memory_limit() == 3 * 10**9


def test_budget_too_small_names_budget_and_minimum():
    backend.set_memory_limit("300MB")
    need = 2 * 2**30
    with pytest.raises(MemoryBudgetError, match=r"motion correction.*memory_limit.*at least"):
        backend.require_budget(need, stage="motion correction")
    with pytest.raises(MemoryBudgetError, match="cannot hold even one chunk"):
        backend.frames_per_chunk((512, 512), copies=4, budget=1000, stage="summary")


def test_oom_retry_halves_then_succeeds():
    calls = []

    def work(chunk):
        calls.append(chunk)
        if chunk > 10:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return chunk * 2
    assert backend.oom_retry(work, 64, stage="x") == (16, 8)
    assert calls == [64, 32, 16, 8]


def test_oom_retry_injected_then_fails_naming_stage_and_bytes():
    backend.inject_oom("evaluation", 2)
    seen = []
    out = backend.oom_retry(lambda c: seen.append(c) or c, 100, stage="evaluation")
    assert out == (25, 25) and seen == [25]
    backend.inject_oom("evaluation", 99)
    with pytest.raises(DeviceError, match=r"evaluation.*smallest chunk \(10\).*needed about 10"):
        backend.oom_retry(lambda c: c, 80, stage="evaluation", floor=10, nbytes=2**20)


def test_oom_retry_is_torch_oom_and_other_errors_pass_through():
    backend.inject_oom("*", 1)
    assert backend.oom_retry(lambda c: c, 4, stage="any") == (2, 2)
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)
    with pytest.raises(ValueError):
        backend.oom_retry(lambda c: (_ for _ in ()).throw(ValueError("bad")), 4, stage="y")


def test_env_injection_reaches_child_processes(monkeypatch):
    monkeypatch.setenv("GPU_CNMF_INJECT_OOM", "motion:1")
    assert backend.oom_retry(lambda c: c, 8, stage="motion") == (4, 4)
    assert backend.oom_retry(lambda c: c, 8, stage="motion") == (8, 8)
