from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def devices():
    """Devices to parametrise CPU/GPU agreement tests over."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


@pytest.fixture
def memmap_movie(tmp_path):
    """A function writing a (T, d1, d2) movie as the pixels x T C-order
    memory map CNMF reads; it returns ``(Yr, images)``, ``images`` the
    Fortran-ordered frames view of ``Yr`` (what ``load_memmap`` gives)."""
    def write(movie):
        T, d1, d2 = movie.shape
        Yr = np.lib.format.open_memmap(tmp_path / "Yr.npy", "w+", np.float32, (d1 * d2, T))
        Yr[:] = movie.reshape(T, -1, order="F").T
        Yr.flush()
        del Yr
        Yr = np.load(tmp_path / "Yr.npy", mmap_mode="r")
        return Yr, np.reshape(Yr.T, (T, d1, d2), order="F")
    return write
