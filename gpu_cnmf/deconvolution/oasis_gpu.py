"""GPU launch of the OASIS kernel (``kernels/oasis.cu``) through CuPy.

One thread per trace; traces are made the fast axis (the input is
transposed to (T, N)) so a warp reads one frame of 32 traces at once. Each
thread needs 3 int and 14 double arrays of T + 1 elements of scratch in
global memory, so traces are launched in groups sized to the memory budget.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

import torch

from ..backend import cupy_available, memory_budget, to_cupy
from ..errors import DeviceError

THREADS_PER_BLOCK = 64
KERNEL_NAMES = ("oasis_batch_f32", "oasis_batch_f64")
# Bytes of scratch per trace and frame: 3 int32 + 14 float64 arrays, plus the
# transposed input, the two float32 outputs and the transposed support mask.
N_INT_SCRATCH = 3
N_DOUBLE_SCRATCH = 14
_BYTES_PER_SAMPLE = N_INT_SCRATCH * 4 + N_DOUBLE_SCRATCH * 8 + 4 + 2 * 4 + 1


def kernel_source() -> str:
    """Text of kernels/oasis.cu, shipped as package data of gpu_cnmf.kernels."""
    return (files("gpu_cnmf.kernels") / "oasis.cu").read_text()


@lru_cache(maxsize=None)
def _module():
    import cupy as cp
    return cp.RawModule(code=kernel_source(), options=("-std=c++17",), name_expressions=None)


def compile_check(arch: str = "compute_90") -> bytes:
    """Compile the kernel source with NVRTC and return its PTX.

    Needs CuPy's NVRTC bindings but no GPU, so CI without a device still
    catches a kernel that does not compile.
    """
    from cupy_backends.cuda.libs import nvrtc
    prog = nvrtc.createProgram(kernel_source(), "oasis.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", "-std=c++17"])
    except Exception as err:
        raise RuntimeError(f"kernels/oasis.cu does not compile:\n{nvrtc.getProgramLog(prog)}") from err
    try:
        return nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)


def oasis_batch_cuda(Y: torch.Tensor, G, sn, b0, b_free, bmin, mode, smin, max_iter, support=None,
                     exact=True):
    """CUDA counterpart of ``oasis_cpu.oasis_batch``; tensors on Y's device.
    ``support`` (N, T) bool or None: spikes only where it is set; ``exact``:
    the exact AR(2) solve (else the greedy pass alone)."""
    if not cupy_available():
        raise DeviceError("deconvolution on a CUDA tensor needs CuPy: install gpu_cnmf[cuda12] "
                          "(or the extra for your CUDA major version)")
    import cupy as cp
    dev = Y.device
    N, T = Y.shape
    if Y.dtype not in (torch.float32, torch.float64):
        Y = Y.to(torch.float32)
    fn = _module().get_function(KERNEL_NAMES[Y.dtype == torch.float64])
    C = torch.empty((N, T), dtype=torch.float32, device=dev)
    S = torch.empty((N, T), dtype=torch.float32, device=dev)
    info = torch.empty((N, 5), dtype=torch.float64, device=dev)
    use_mask = support is not None
    dummy = torch.ones((1, 1), dtype=torch.uint8, device=dev)
    per_trace = _BYTES_PER_SAMPLE * (T + 1)
    group = max(THREADS_PER_BLOCK, int(memory_budget(dev) // per_trace))
    group = min(N, group)
    with torch.cuda.device(dev):
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream(dev).cuda_stream)
        with stream:
            for i0 in range(0, N, group):
                i1 = min(N, i0 + group)
                n = i1 - i0
                yt = Y[i0:i1].t().contiguous()
                ct = torch.empty((T, n), dtype=torch.float32, device=dev)
                st = torch.empty((T, n), dtype=torch.float32, device=dev)
                inf = torch.empty((n, 5), dtype=torch.float64, device=dev)
                # same (T, n) layout as the traces
                mt = (support[i0:i1].to(device=dev, dtype=torch.uint8).t().contiguous()
                      if use_mask else dummy)
                iscr = torch.empty((N_INT_SCRATCH, T + 1, n), dtype=torch.int32, device=dev)
                dscr = torch.empty((N_DOUBLE_SCRATCH, T + 1, n), dtype=torch.float64, device=dev)
                args = [to_cupy(a) for a in (yt,)]
                args += [cp.int32(n), cp.int32(T)]
                args += [to_cupy(a[i0:i1].contiguous()) for a in (G, sn, b0)]
                args += [cp.int32(bool(b_free)), to_cupy(bmin[i0:i1].contiguous()), cp.int32(mode),
                         to_cupy(smin[i0:i1].contiguous()), cp.int32(max_iter),
                         to_cupy(mt), cp.int32(use_mask), cp.int32(bool(exact))]
                args += [to_cupy(ct), to_cupy(st), to_cupy(inf), to_cupy(iscr), to_cupy(dscr)]
                blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
                fn((blocks,), (THREADS_PER_BLOCK,), tuple(args))
                C[i0:i1] = ct.t()
                S[i0:i1] = st.t()
                info[i0:i1] = inf
                del dscr, iscr
    return C, S, info
