"""gpu_cnmf.io: exact round trips per format, CaImAn memmaps, errors, and
streaming within the memory budget."""
import os
import pickle
import tracemalloc

import h5py
import numpy as np
import pytest
import tifffile

from gpu_cnmf.errors import MovieError, ParameterError
from gpu_cnmf.io import (ArraySource, ConcatSource, MemmapWriter, MovieSource, load_memmap,
                         load_movie, mmap_name, open_movie, parse_mmap_name, save_memmap)

T, D1, D2 = 37, 12, 10


@pytest.fixture
def movie():
    """uint16 movie whose every pixel differs, so any misplaced value shows."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 60000, (T, D1, D2)).astype(np.uint16)


@pytest.fixture
def fmovie():
    rng = np.random.default_rng(2)
    return rng.standard_normal((T, D1, D2)).astype(np.float32)


RANGES = [(0, T), (5, 17), (T - 3, T), (0, 1), (20, 21)]


def check_ranges(source, expected):
    assert source.shape == expected.shape
    assert source.dims == expected.shape[1:]
    assert source.n_frames == len(source) == expected.shape[0]
    assert source.dtype == expected.dtype
    for a, b in RANGES:
        got = source.read(a, b)
        assert got.dtype == expected.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected[a:b])
    chunks = list(source.iter_chunks(8))
    assert [t0 for t0, _ in chunks] == list(range(0, expected.shape[0], 8))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), expected)


# --- TIFF -----------------------------------------------------------------

def _write_frames(path, movie):
    # one write call per frame: tifffile makes one "shaped" series per page
    with tifffile.TiffWriter(path) as tw:
        for frame in movie:
            tw.write(frame, contiguous=False)


def _write_contiguous_frames(path, movie):
    with tifffile.TiffWriter(path) as tw:
        for frame in movie:
            tw.write(frame, contiguous=True)


def _append_blocks(path, movie):
    for a in range(0, len(movie), 10):
        tifffile.imwrite(path, movie[a:a + 10], append=True)


TIFF_WRITERS = {
    "contiguous": lambda p, m: tifffile.imwrite(p, m),
    "zlib": lambda p, m: tifffile.imwrite(p, m, compression="zlib"),
    "predictor": lambda p, m: tifffile.imwrite(p, m, compression="zlib", predictor=True),
    "imagej": lambda p, m: tifffile.imwrite(p, m, imagej=True),
    "bigtiff": lambda p, m: tifffile.imwrite(p, m, bigtiff=True),
    "big_endian": lambda p, m: tifffile.imwrite(p, m, byteorder=">"),
    "tiled": lambda p, m: tifffile.imwrite(p, m, tile=(16, 16)),
    "frame_by_frame": _write_frames,
    "contiguous_frame_by_frame": _write_contiguous_frames,
    "appended_blocks": _append_blocks,
}


@pytest.mark.parametrize("kind", sorted(TIFF_WRITERS))
def test_tiff_round_trip(tmp_path, movie, kind):
    path = tmp_path / "m.tif"
    TIFF_WRITERS[kind](path, movie)
    with open_movie(path) as src:
        check_ranges(src, movie)
    np.testing.assert_array_equal(load_movie(str(path), outtype=None), movie)


def test_tiff_float_and_volume(tmp_path, fmovie):
    tifffile.imwrite(tmp_path / "f.tif", fmovie)
    with open_movie(tmp_path / "f.tif") as src:
        check_ranges(src, fmovie)
    vol = np.random.default_rng(3).integers(0, 255, (9, 4, D1, D2)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", vol, imagej=True, metadata={"axes": "TZYX"})
    with open_movie(tmp_path / "v.tif") as src:
        assert src.dims == (4, D1, D2)
        np.testing.assert_array_equal(src.read(2, 7), vol[2:7])


def test_tiff_reads_only_needed_pages(tmp_path, movie):
    """A compressed TIFF decodes only the pages of the asked frames."""
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, movie, compression="zlib")
    with open_movie(path) as src:
        assert src._mode == "pages"
        calls = []
        orig = src._handle().asarray

        def spy(*args, **kwargs):
            calls.append(list(kwargs["key"]))
            return orig(*args, **kwargs)

        src._tif.asarray = spy
        src.read(10, 13)
        assert calls == [[10, 11, 12]]


def test_tiff_list_concatenated(tmp_path, movie):
    paths = []
    for i, (a, b) in enumerate([(0, 10), (10, 11), (11, 30), (30, T)]):
        p = tmp_path / f"part{i}.tif"
        tifffile.imwrite(p, movie[a:b], compression="zlib" if i == 2 else None)
        paths.append(str(p))
    with open_movie(paths) as src:
        assert isinstance(src, ConcatSource)
        check_ranges(src, movie)
        np.testing.assert_array_equal(src.read(8, 32), movie[8:32])  # spans every file
    np.testing.assert_array_equal(load_movie(paths, outtype=None), movie)


def test_single_page_files_keep_few_files_open(tmp_path, movie):
    paths = []
    for t, frame in enumerate(movie):
        paths.append(tmp_path / f"frame_{t:03d}.tif")
        tifffile.imwrite(paths[-1], frame, compression="zlib")
    with open_movie(paths) as src:
        assert src.shape == movie.shape
        for t0, chunk in src.iter_chunks(4):
            np.testing.assert_array_equal(chunk, movie[t0:t0 + 4])
            assert sum(p._tif is not None for p in src.parts) <= 4


def test_concat_promotes_dtypes(tmp_path, movie):
    tifffile.imwrite(tmp_path / "a.tif", movie[:10].astype(np.uint8))
    np.save(tmp_path / "b.npy", movie[10:].astype(np.float32))
    with open_movie([tmp_path / "a.tif", tmp_path / "b.npy"]) as src:
        assert src.dtype == np.float32
        np.testing.assert_array_equal(src.read(5, 15)[:5], movie[5:10].astype(np.uint8))
        np.testing.assert_array_equal(src.read(5, 15)[5:], movie[10:15])


# --- HDF5, npy, zarr, arrays ---------------------------------------------------

def test_hdf5_round_trip(tmp_path, movie, fmovie):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("mov", data=movie, chunks=(4, D1, D2), compression="gzip")
        f.create_dataset("acquisition/data", data=fmovie)
    with open_movie(path) as src:
        check_ranges(src, movie)
    with open_movie(str(path), var_name_hdf5="acquisition/data") as src:
        check_ranges(src, fmovie)
        clone = pickle.loads(pickle.dumps(src))  # handles reopen after pickling
        np.testing.assert_array_equal(clone.read(3, 6), fmovie[3:6])
        clone.close()


@pytest.mark.parametrize("fortran", [False, True])
def test_npy_round_trip(tmp_path, movie, fortran):
    data = np.asfortranarray(movie) if fortran else movie
    np.save(tmp_path / "m.npy", data)
    with open_movie(tmp_path / "m.npy") as src:
        check_ranges(src, movie)


def test_npy_volume(tmp_path):
    vol = np.random.default_rng(4).standard_normal((6, 5, 4, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    with open_movie(tmp_path / "v.npy") as src:
        assert src.dims == (5, 4, 3)
        np.testing.assert_array_equal(src.read(1, 4), vol[1:4])


def test_zarr_round_trip(tmp_path, movie, fmovie):
    zarr = pytest.importorskip("zarr")
    z = zarr.open(str(tmp_path / "m.zarr"), mode="w", shape=movie.shape, dtype=movie.dtype,
                  chunks=(5, D1, D2))
    z[:] = movie
    with open_movie(tmp_path / "m.zarr") as src:
        check_ranges(src, movie)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("images", shape=fmovie.shape, dtype=fmovie.dtype, chunks=(7, D1, D2))
    g["images"][:] = fmovie
    with open_movie(tmp_path / "g.zarr", var_name_hdf5="images") as src:
        check_ranges(src, fmovie)
    with pytest.raises(MovieError, match="images"):
        open_movie(tmp_path / "g.zarr")


def test_array_source(movie):
    src = open_movie(movie)
    assert isinstance(src, ArraySource)
    check_ranges(src, movie)
    chunk = src.read(0, 3)
    chunk[:] = 0  # reads are copies: the caller may modify them
    np.testing.assert_array_equal(src.read(0, 3), movie[:3])
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(open_movie(torch.from_numpy(movie.astype(np.float32)))
                                  .read(2, 4), movie[2:4])


def test_indexing_and_subindices(movie):
    src = open_movie(movie)
    np.testing.assert_array_equal(src[3], movie[3])
    np.testing.assert_array_equal(src[-1], movie[-1])
    np.testing.assert_array_equal(src[2:30:5], movie[2:30:5])
    np.testing.assert_array_equal(src[[7, 3, 4, 5, 3]], movie[[7, 3, 4, 5, 3]])
    np.testing.assert_array_equal(src[4:9, 2:5, ::2], movie[4:9, 2:5, ::2])
    np.testing.assert_array_equal(src.take(np.arange(T) % 2 == 0), movie[::2])
    out = load_movie(movie, subindices=slice(4, 20))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, movie[4:20].astype(np.float32))
    np.testing.assert_array_equal(load_movie(movie, subindices=range(0, T, 3), outtype=None),
                                  movie[::3])
    np.testing.assert_array_equal(load_movie(movie, subindices=[5, -1, 0], outtype=None),
                                  movie[[5, -1, 0]])
    with pytest.raises(ParameterError):
        src.read(10, T + 1)
    with pytest.raises(ParameterError):
        src.read(-1, 3)
    with pytest.raises(ParameterError):
        src.take([T])


# --- CaImAn memmaps ---------------------------------------------------------------

def test_mmap_naming(tmp_path):
    name = mmap_name(tmp_path / "my_run_1", (512, 256), 3000, "C")
    assert os.path.basename(name) == "my_run_1_d1_512_d2_256_d3_1_order_C_frames_3000_.mmap"
    info = parse_mmap_name(name)
    assert info == {"base": str(tmp_path / "my_run_1"), "d1": 512, "d2": 256, "d3": 1,
                    "order": "C", "T": 3000, "dims": (512, 256)}
    info = parse_mmap_name(mmap_name("vol", (30, 20, 7), 5, "F"))
    assert info["dims"] == (30, 20, 7) and info["order"] == "F" and info["T"] == 5
    # CaImAn's other spelling, without the underscore before .mmap
    assert parse_mmap_name("x_d1_4_d2_3_d3_1_order_F_frames_9.mmap")["T"] == 9
    for bad in ["movie.mmap", "x_d1_4_d2_3_d3_1_order_Q_frames_9_.mmap",
                "x_d1_4_d2_3_order_C_frames_9_.mmap"]:
        with pytest.raises(MovieError, match="CaImAn"):
            parse_mmap_name(bad)
    with pytest.raises(ParameterError, match="order"):
        mmap_name("x", (4, 3), 9, "K")


@pytest.mark.parametrize("order", ["C", "F"])
def test_save_memmap_fortran_pixel_order(tmp_path, fmovie, order):
    path = save_memmap(fmovie, tmp_path / "Yr", order=order, chunk_frames=6)
    assert os.path.basename(path) == f"Yr_d1_{D1}_d2_{D2}_d3_1_order_{order}_frames_{T}_.mmap"
    Yr, dims, n = load_memmap(path)
    assert dims == (D1, D2) and n == T and Yr.shape == (D1 * D2, T) and Yr.dtype == np.float32
    i, j, t = np.meshgrid(np.arange(D1), np.arange(D2), np.arange(T), indexing="ij")
    np.testing.assert_array_equal(Yr[i + j * D1, t], fmovie[t, i, j])
    # the bytes on disk are CaImAn's layout: (d, T) in the named order
    raw = np.fromfile(path, np.float32)
    if order == "C":
        np.testing.assert_array_equal(raw.reshape(D1 * D2, T), fmovie.reshape(T, -1, order="F").T)
    else:
        np.testing.assert_array_equal(raw.reshape(T, D1 * D2), fmovie.reshape(T, -1, order="F"))
    with open_movie(path) as src:
        check_ranges(src, fmovie)


@pytest.mark.parametrize("order", ["C", "F"])
def test_memmap_writer_volume_out_of_order(tmp_path, order):
    vol = np.random.default_rng(5).standard_normal((11, 5, 4, 3)).astype(np.float32)
    with MemmapWriter(tmp_path / "vol", (5, 4, 3), 11, order) as w:
        for t0 in (6, 0, 3, 9):  # chunks in any order
            w.write(t0, vol[t0:t0 + 3])
    Yr, dims, n = load_memmap(w.path)
    assert dims == (5, 4, 3) and n == 11
    i, j, k, t = np.meshgrid(*map(np.arange, (5, 4, 3, 11)), indexing="ij")
    np.testing.assert_array_equal(Yr[i + j * 5 + k * 20, t], vol[t, i, j, k])
    np.testing.assert_array_equal(load_movie(w.path), vol)


def test_reads_caiman_written_file(tmp_path, fmovie):
    """A file laid out as CaImAn writes it (np.memmap of Yr) reads back as frames."""
    for order in "CF":
        path = mmap_name(tmp_path / "caiman", (D1, D2), T, order)
        Yr = np.memmap(path, mode="w+", dtype=np.float32, shape=(D1 * D2, T), order=order)
        Yr[:] = fmovie.reshape(T, -1, order="F").T
        del Yr
        np.testing.assert_array_equal(load_movie(path), fmovie)


def test_save_memmap_from_files_and_options(tmp_path, movie):
    tifffile.imwrite(tmp_path / "m.tif", movie)
    path = save_memmap(str(tmp_path / "m.tif"), "bare", chunk_frames=5, add_to_movie=1.5,
                       border_to_0=2)
    assert os.path.dirname(path) == str(tmp_path)  # bare names go next to the input
    expected = movie.astype(np.float32) + 1.5
    expected[:, :2] = expected[:, -2:] = expected[:, :, :2] = expected[:, :, -2:] = 0
    np.testing.assert_array_equal(load_movie(path), expected)
    with open_movie(tmp_path / "m.tif") as src:  # from an open source, default chunks
        path = save_memmap(src, tmp_path / "src", order="F")
    np.testing.assert_array_equal(load_movie(path), movie.astype(np.float32))


def test_memmap_writer_checks(tmp_path, fmovie):
    with MemmapWriter(tmp_path / "w", (D1, D2), 3) as w:
        w.write(0, fmovie[0])  # a single frame is accepted
        with pytest.raises(ParameterError, match="frames"):
            w.write(1, fmovie[:2, :5])
        with pytest.raises(ParameterError, match="start"):
            w.write(2, fmovie[:2])
        torch = pytest.importorskip("torch")
        w.write(1, torch.from_numpy(fmovie[1:3]))  # tensors are accepted
    np.testing.assert_array_equal(load_movie(w.path), fmovie[:3])
    with pytest.raises(ParameterError, match="dims"):
        MemmapWriter(tmp_path / "w", (D1,), 3)


# --- nothing half-written ---------------------------------------------------------

def _leftovers(folder):
    return sorted(p for p in os.listdir(folder) if ".mmap" in p)


def test_writer_exception_leaves_nothing(tmp_path, fmovie):
    with pytest.raises(RuntimeError, match="boom"):
        with MemmapWriter(tmp_path / "w", (D1, D2), T) as w:
            w.write(0, fmovie[:10])
            assert _leftovers(tmp_path)  # the temporary file exists while writing
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_incomplete_writer_leaves_nothing(tmp_path, fmovie):
    w = MemmapWriter(tmp_path / "w", (D1, D2), T)
    w.write(0, fmovie[:10])
    with pytest.raises(MovieError, match="10 of 37 frames"):
        w.close()
    assert _leftovers(tmp_path) == []
    w = MemmapWriter(tmp_path / "w", (D1, D2), T)
    del w  # dropped without close
    assert _leftovers(tmp_path) == []


class _FailingSource(MovieSource):
    def __init__(self, movie, fail_at):
        self.movie, self.fail_at = movie, fail_at
        self._setup(movie.shape, movie.dtype, "failing")

    def _read(self, start, stop):
        if stop > self.fail_at:
            raise OSError("disk gone")
        return self.movie[start:stop].copy()


def test_save_memmap_error_midway_leaves_nothing(tmp_path, fmovie):
    with pytest.raises(MovieError, match="disk gone"):
        save_memmap(_FailingSource(fmovie, 20), tmp_path / "out", chunk_frames=8)
    assert _leftovers(tmp_path) == []
    # a finished file of the same name is not touched by a failed rewrite
    good = save_memmap(fmovie, tmp_path / "out")
    with pytest.raises(MovieError):
        save_memmap(_FailingSource(fmovie * 2, 20), tmp_path / "out", chunk_frames=8)
    assert _leftovers(tmp_path) == [os.path.basename(good)]
    np.testing.assert_array_equal(load_movie(good), fmovie)


# --- errors -------------------------------------------------------------------------

def test_missing_and_unknown(tmp_path):
    with pytest.raises(MovieError, match="not found") as err:
        open_movie(tmp_path / "nope.tif")
    assert "nope.tif" in str(err.value)
    (tmp_path / "m.xyz").write_bytes(b"RIFF")
    with pytest.raises(MovieError, match="unsupported.*xyz"):
        open_movie(tmp_path / "m.xyz")
    with pytest.raises(MovieError, match="empty"):
        open_movie([])
    with pytest.raises(MovieError, match="cannot open"):
        open_movie({"a": 1})


@pytest.mark.parametrize("name", ["bad.tif", "bad.h5", "bad.npy"])
def test_unreadable_file(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(MovieError, match="cannot read") as err:
        open_movie(tmp_path / name)
    assert name in str(err.value)


@pytest.mark.parametrize("kind", ["contiguous", "zlib", "frame_by_frame"])
def test_truncated_tiff(tmp_path, movie, kind):
    path = tmp_path / "t.tif"
    TIFF_WRITERS[kind](path, movie)
    data = path.read_bytes()
    for frac in (0.3, 0.6, 0.9):
        path.write_bytes(data[:int(len(data) * frac)])
        with pytest.raises(MovieError, match="t.tif"):
            open_movie(path)


def test_truncated_mmap_and_npy(tmp_path, fmovie):
    path = save_memmap(fmovie, tmp_path / "Yr")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 4)
    with pytest.raises(MovieError, match="truncated") as err:
        open_movie(path)
    assert os.path.basename(path) in str(err.value)
    np.save(tmp_path / "m.npy", fmovie)
    with open(tmp_path / "m.npy", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(MovieError, match="m.npy.*truncated"):
        open_movie(tmp_path / "m.npy")


@pytest.mark.parametrize("shape", [(50,), (10, 10), (2, 3, 4, 5, 6)])
def test_wrong_dimensions(tmp_path, shape):
    data = np.zeros(shape, np.float32)
    with pytest.raises(MovieError, match=f"got {len(shape)}"):
        open_movie(data)
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(MovieError, match="x.npy"):
        open_movie(tmp_path / "x.npy")


def test_empty_movie(tmp_path):
    with pytest.raises(MovieError, match="empty"):
        open_movie(np.zeros((0, 8, 8), np.float32))
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("mov", shape=(0, 8, 8), dtype=np.float32)
    with pytest.raises(MovieError, match="e.h5.*empty"):
        open_movie(tmp_path / "e.h5")


def test_nan_frames(tmp_path, fmovie):
    bad = fmovie.copy()
    bad[23, 4, 5] = np.nan
    bad[30] = np.nan
    np.save(tmp_path / "n.npy", bad)
    src = open_movie(tmp_path / "n.npy")  # not checked unless asked
    src.close()
    with pytest.raises(MovieError, match="n.npy: frame 23 contains NaN"):
        open_movie(tmp_path / "n.npy", check_nan=True)
    with pytest.raises(MovieError, match="frame 23 "):
        load_movie(tmp_path / "n.npy", check_nan=True)
    with pytest.raises(MovieError, match="frame 30 "):
        load_movie(bad, subindices=slice(25, None), check_nan=True)
    np.testing.assert_array_equal(load_movie(bad, subindices=slice(0, 23), check_nan=True),
                                  fmovie[:23])


def test_missing_hdf5_dataset(tmp_path, movie):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("data/images", data=movie)
        f.create_dataset("timestamps", data=np.arange(T))
    with pytest.raises(MovieError, match="no dataset named 'mov'") as err:
        open_movie(tmp_path / "m.h5")
    assert "data/images" in str(err.value) and "timestamps" in str(err.value)
    assert "m.h5" in str(err.value)


def test_inconsistent_frame_shapes(tmp_path, movie):
    tifffile.imwrite(tmp_path / "a.tif", movie)
    tifffile.imwrite(tmp_path / "b.tif", movie[:, :, :-1])
    with pytest.raises(MovieError, match=r"b.tif: frames of shape \(12, 9\)"):
        open_movie([tmp_path / "a.tif", tmp_path / "b.tif"])


# --- streaming within the memory budget ------------------------------------------

BIG_T, BIG_D = 512, 256  # 512 frames of 256x256 float32: 128 MiB on disk
BUDGET = 16 * 2**20


def _big_frames(t0, n):
    # cheap, position-dependent content so a wrong chunk would show
    return (np.arange(t0, t0 + n, dtype=np.float32)[:, None, None]
            + np.zeros((1, BIG_D, BIG_D), np.float32))


def _write_big(tmp_path, kind):
    n = 32
    if kind == "npy":
        path = tmp_path / "big.npy"
        out = np.lib.format.open_memmap(path, "w+", np.float32, (BIG_T, BIG_D, BIG_D))
        for t0 in range(0, BIG_T, n):
            out[t0:t0 + n] = _big_frames(t0, n)
        out.flush()
        del out
        return str(path)
    if kind.startswith("tif"):
        # contiguous: memory-mapped; pages: IFDs between frames, decoded page by page
        path = tmp_path / "big.tif"
        with tifffile.TiffWriter(path) as tw:
            for t0 in range(0, BIG_T, n):
                for frame in _big_frames(t0, n):
                    tw.write(frame, contiguous=kind == "tif_contiguous")
        return str(path)
    with MemmapWriter(tmp_path / "big", (BIG_D, BIG_D), BIG_T, order=kind[-1]) as w:
        for t0 in range(0, BIG_T, n):
            w.write(t0, _big_frames(t0, n))
    return w.path


@pytest.mark.parametrize("kind", ["npy", "tif_contiguous", "tif_pages", "mmap_C", "mmap_F"])
def test_streaming_holds_one_chunk(tmp_path, monkeypatch, kind):
    """Reading a movie larger than the memory budget frame-range by
    frame-range never holds more than one chunk."""
    path = _write_big(tmp_path, kind)
    file_bytes = os.path.getsize(path)
    assert file_bytes >= 8 * BUDGET
    monkeypatch.setenv("GPU_CNMF_MEMORY_BUDGET", str(BUDGET))
    with open_movie(path) as src:
        if kind.startswith("tif"):
            assert src._mode == kind[4:].replace("contiguous", "memmap")
        n = src.chunk_frames()
        chunk_bytes = n * BIG_D * BIG_D * 4
        assert chunk_bytes <= BUDGET and n < BIG_T
        tracemalloc.start()
        try:
            seen = 0
            for t0, chunk in src.iter_chunks():
                assert chunk.shape[0] <= n
                assert chunk[0, 0, 0] == t0 and chunk[-1, -1, -1] == t0 + len(chunk) - 1
                seen += len(chunk)
                del chunk
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert seen == BIG_T
    print(f"{kind}: file {file_bytes / 2**20:.0f} MiB, chunk {chunk_bytes / 2**20:.1f} MiB, "
          f"peak traced {peak / 2**20:.2f} MiB")
    assert peak < 1.5 * chunk_bytes, (peak, chunk_bytes)
    assert peak < file_bytes / 10


def test_save_memmap_streams(tmp_path, monkeypatch):
    src_path = _write_big(tmp_path, "npy")
    monkeypatch.setenv("GPU_CNMF_MEMORY_BUDGET", str(BUDGET))
    tracemalloc.start()
    try:
        path = save_memmap(src_path, tmp_path / "Yr", order="C")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BUDGET, peak
    Yr, dims, n = load_memmap(path)
    assert dims == (BIG_D, BIG_D) and n == BIG_T
    np.testing.assert_array_equal(Yr[:, 0], 0)
    np.testing.assert_array_equal(Yr[12345], np.arange(BIG_T, dtype=np.float32))


@pytest.mark.parametrize("dims", [(7, 5), (6, 5, 3)])
def test_c_order_tiles_with_ragged_edges(tmp_path, monkeypatch, dims):
    """C-order transfers go tile by tile; force many uneven tiles."""
    import gpu_cnmf.io.memmap as mm
    monkeypatch.setattr(mm, "_TILE_FRAMES", 4)
    monkeypatch.setattr(mm, "_TILE_BYTES", 4 * dims[0] * 4 * 2)  # 2 columns per tile
    movie = np.random.default_rng(6).standard_normal((23,) + dims).astype(np.float32)
    with MemmapWriter(tmp_path / "t", dims, 23, "C") as w:
        w.write(0, movie[:13])
        w.write(13, movie[13:])
    Yr, _, _ = load_memmap(w.path)
    np.testing.assert_array_equal(np.asarray(Yr), movie.reshape(23, -1, order="F").T)
    with open_movie(w.path) as src:
        np.testing.assert_array_equal(src.read(2, 21), movie[2:21])


def test_sources_pickle_and_reopen(tmp_path, movie):
    """Sources travel to worker processes (dask) without their open files."""
    tifffile.imwrite(tmp_path / "z.tif", movie, compression="zlib")
    tifffile.imwrite(tmp_path / "c.tif", movie)
    mm = save_memmap(movie, tmp_path / "Yr", order="C")
    np.save(tmp_path / "m.npy", movie)
    for name in ["z.tif", "c.tif", os.path.basename(mm), "m.npy"]:
        src = open_movie(tmp_path / name)
        src.read(0, 2)  # opens its file
        clone = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(clone.read(30, T), movie[30:].astype(clone.dtype))
        src.close()
        np.testing.assert_array_equal(src.read(1, 3), movie[1:3].astype(src.dtype))  # reopens
        clone.close()
        src.close()
