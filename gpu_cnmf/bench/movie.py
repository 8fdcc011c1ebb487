"""The benchmark's synthetic movie, made as fast as it is read.

:func:`gpu_cnmf.synthetic.make_movie` renders every frame through its full
optical model (about 0.1 s a frame at 512 x 512 on one core), too slow to
make the thousands of frames a GPU needs to be timed. The bench builds a
movie with the same ingredients at the cost of a matrix product per chunk:
Gaussian footprints ``A`` (pixels in CaImAn's Fortran order), AR(1)
calcium ``C`` from the AR coefficient of :func:`gpu_cnmf.synthetic.ar_coefficients`,
a smooth background ``b`` with a slowly varying ``f``, rigid integer
motion, and Gaussian noise (frames of it drawn once and reused in a random
order). Frames go to a raw float32 file that grows as
stages ask for more (:meth:`BenchMovie.frames`), so what the stages read
is a memory-mapped file, as in a real run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.signal import lfilter

from ..synthetic import ar_coefficients

FR = 30.0
DECAY_TIME = 0.4
GSIG = 4
MAX_SHIFT = 4
_CHUNK = 128
_NOISE_BANK = 64


@dataclass
class Truth:
    """Ground truth of the first ``T`` frames (CaImAn's names)."""
    A: sp.csc_matrix
    C: np.ndarray
    b: np.ndarray
    f: np.ndarray


class BenchMovie:
    """A (T, d1, d2) float32 movie on disk, made on demand up to ``max_frames``.

    Parameters
    ----------
    folder : str
        Where the raw movie file (``bench_movie.f32``) is written.
    dims : (int, int)
    max_frames : int
        The longest any stage may ask for; ``C`` is drawn for all of them.
    seed : int
    """

    def __init__(self, folder: str, dims=(512, 512), max_frames: int = 1000, seed: int = 0):
        self.dims = tuple(int(d) for d in dims)
        self.max_frames = int(max_frames)
        self.path = os.path.join(folder, "bench_movie.f32")
        self.frame_bytes = 4 * self.dims[0] * self.dims[1]
        self.n_made = 0
        self.seconds_per_frame = None   # measured on the first chunk
        rng = np.random.default_rng(seed)
        self._rng = rng
        d1, d2 = self.dims
        # about one neuron per 650 px^2, as in the standard 2p movie
        K = max(4, int(d1 * d2 / 650))
        self.n_neurons = K
        self.A = _footprints(rng, self.dims, K)
        g = ar_coefficients(DECAY_TIME, FR, p=1)
        spikes = (rng.random((K, self.max_frames)) < 1.0 / FR).astype(np.float32)
        # unit-norm footprints peak near 0.14: x7 makes a spike ~1 at the centre (noise 0.25)
        spikes *= 7.0 * rng.uniform(0.5, 1.5, (K, 1)).astype(np.float32)
        self.C = lfilter([1.0], [1.0, -float(np.ravel(g)[0])], spikes, axis=1).astype(np.float32)
        yy, xx = np.mgrid[:d1, :d2]
        scene = 1.0 + 0.3 * np.sin(2 * np.pi * yy / 97.0) * np.cos(2 * np.pi * xx / 131.0)
        self.b = (2.0 * scene).reshape(-1, 1, order="F").astype(np.float32)
        t = np.arange(self.max_frames)
        self.f = (1.0 + 0.05 * np.sin(2 * np.pi * t / (20 * FR)))[None].astype(np.float32)
        steps = rng.integers(-1, 2, (self.max_frames, 2))
        self.shifts = np.clip(np.cumsum(steps, axis=0), -MAX_SHIFT, MAX_SHIFT)
        self.noise = 0.25
        n_bank = int(min(_NOISE_BANK, self.max_frames))
        self._noise = rng.standard_normal((n_bank, d1, d2), dtype=np.float32) * self.noise
        open(self.path, "wb").close()

    # ------------------------------------------------------------------
    def _render(self, t0: int, t1: int) -> np.ndarray:
        d1, d2 = self.dims
        n = t1 - t0
        Y = self.A @ self.C[:, t0:t1] + self.b @ self.f[:, t0:t1]      # pixels x n
        frames = np.ascontiguousarray(Y.T.reshape(n, d2, d1).transpose(0, 2, 1))
        for i in range(n):
            dy, dx = self.shifts[t0 + i]
            if dy or dx:
                frames[i] = np.roll(frames[i], (int(dy), int(dx)), axis=(0, 1))
        # noise from a bank of frames drawn once, in a shuffled order: drawing
        # 262,144 normals a frame would cost more than the rest of the frame
        idx = self._rng.integers(0, len(self._noise), n)
        frames += self._noise[idx]
        return frames.astype(np.float32, copy=False)

    def seconds_for(self, n_frames: int) -> float:
        """Estimated seconds to make the frames missing for ``n_frames``."""
        missing = max(0, min(n_frames, self.max_frames) - self.n_made)
        return missing * (self.seconds_per_frame or 0.0)

    def frames(self, n_frames: int) -> np.ndarray:
        """The first ``n_frames`` frames as a read-only memmap (T, d1, d2)."""
        n_frames = int(min(n_frames, self.max_frames))
        if n_frames > self.n_made:
            with open(self.path, "ab") as fh:
                while self.n_made < n_frames:
                    t0 = self.n_made
                    t1 = min(n_frames, t0 + _CHUNK)
                    tic = time.perf_counter()
                    fh.write(self._render(t0, t1).tobytes())
                    spf = (time.perf_counter() - tic) / (t1 - t0)
                    self.seconds_per_frame = (spf if self.seconds_per_frame is None
                                              else max(spf, 0.5 * self.seconds_per_frame))
                    self.n_made = t1
        return np.memmap(self.path, np.float32, "r", shape=(n_frames,) + self.dims)

    def npy(self, n_frames: int, folder: str) -> str:
        """The first ``n_frames`` frames as a ``.npy`` file (for the pipeline)."""
        path = os.path.join(folder, f"bench_movie_{n_frames}.npy")
        if not os.path.exists(path):
            src = self.frames(n_frames)
            tmp = path + ".part.npy"
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, src.shape)
            for t0 in range(0, n_frames, _CHUNK):
                out[t0:t0 + _CHUNK] = src[t0:t0 + _CHUNK]
            out.flush()
            del out
            os.replace(tmp, path)
        return path

    def truth(self, n_frames: int) -> Truth:
        return Truth(A=self.A, C=self.C[:, :n_frames], b=self.b, f=self.f[:, :n_frames])


def _footprints(rng, dims, K) -> sp.csc_matrix:
    """K Gaussian footprints (gSig ~ GSIG px), columns of a (pixels, K) matrix
    with pixels in Fortran order, each normalised to unit norm."""
    d1, d2 = dims
    r = 3 * GSIG
    rows, cols, vals = [], [], []
    cy = rng.uniform(r, d1 - r, K)
    cx = rng.uniform(r, d2 - r, K)
    sig = GSIG * rng.uniform(0.8, 1.2, (K, 2))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    for k in range(K):
        y = np.round(cy[k]).astype(int) + oy
        x = np.round(cx[k]).astype(int) + ox
        v = np.exp(-0.5 * (((y - cy[k]) / sig[k, 0]) ** 2 + ((x - cx[k]) / sig[k, 1]) ** 2))
        keep = (v > 0.05) & (y >= 0) & (y < d1) & (x >= 0) & (x < d2)
        v = v[keep]
        rows.append(y[keep] + d1 * x[keep])     # Fortran order: i + d1 * j
        cols.append(np.full(v.size, k))
        vals.append(v / np.linalg.norm(v))
    A = sp.csc_matrix((np.concatenate(vals).astype(np.float32),
                       (np.concatenate(rows), np.concatenate(cols))), shape=(d1 * d2, K))
    return A
