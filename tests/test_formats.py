"""Recording formats labs write: video (Miniscope AVIs), Scanbox, NWB,
ScanImage / ImageJ / Bruker multi-plane, multi-channel TIFFs.

Each format is written with its own ecosystem's writer where one exists
(PyAV's FFV1 encoder, pynwb, tifffile with ScanImage/ImageJ metadata) or per
its published layout (Scanbox, Bruker), then read back exactly: values,
frame count, plane and channel selection, frame rate."""
from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from gpu_cnmf.errors import MovieError, OptionalDependencyError, ParameterError
from gpu_cnmf.io import load_movie, open_movie
from gpu_cnmf.params import CNMFParams

av = pytest.importorskip("av")

D1, D2 = 24, 32


def _rng(seed=0):
    return np.random.default_rng(seed)


def check_reads(src, movie):
    """Whole, partial, backwards and scattered reads all give ``movie``'s frames."""
    assert src.shape == movie.shape and src.dtype == movie.dtype
    np.testing.assert_array_equal(src.read(), movie)
    T = len(movie)
    for a, b in [(T - 3, T), (1, 4), (T // 2, T // 2 + 1), (0, 2)]:
        np.testing.assert_array_equal(src.read(a, b), movie[a:b])
    idx = [T - 1, 0, T // 2, 3]
    np.testing.assert_array_equal(src.take(idx), movie[idx])


# ---------------------------------------------------------------------------
# video

def write_ffv1(path, movie, fps=20, pix_fmt="gray"):
    """``movie`` (T, H, W) as a lossless FFV1 video, encoded by PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.height, stream.width = movie.shape[1:]
        stream.pix_fmt = pix_fmt
        for frame in movie:
            if pix_fmt == "yuv420p":   # luma = frame, neutral chroma
                h, w = frame.shape
                yuv = np.full((h * 3 // 2, w), 128, np.uint8)
                yuv[:h] = frame
                vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            else:
                vf = av.VideoFrame.from_ndarray(frame, format=pix_fmt)
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("ext,pix_fmt,dtype", [("avi", "gray", np.uint8),
                                                ("avi", "gray16le", np.uint16),
                                                ("mkv", "gray", np.uint8),
                                                ("avi", "yuv420p", np.uint8)])
def test_video_round_trip(tmp_path, ext, pix_fmt, dtype):
    hi = 255 if dtype == np.uint8 else 65535
    movie = _rng(1).integers(0, hi, (40, D1, D2), endpoint=True).astype(dtype)
    path = tmp_path / f"m.{ext}"
    write_ffv1(path, movie, fps=25, pix_fmt=pix_fmt)
    with open_movie(path) as src:
        check_reads(src, movie)
        assert src.metadata["fr"] == 25.0
        assert "m." + ext in src.metadata["fr_source"]
    np.testing.assert_array_equal(load_movie(path, subindices=slice(5, 30), outtype=None),
                                  movie[5:30])


def test_miniscope_folder_numeric_order(tmp_path):
    """0.avi ... 10.avi joined as 0, 1, 2, ..., 10 (not 0, 1, 10, 2, ...); the
    frame rate from metaData.json."""
    movie = _rng(2).integers(0, 255, (11 * 4, D1, D2)).astype(np.uint8)
    for i in range(11):
        write_ffv1(tmp_path / f"{i}.avi", movie[4 * i:4 * i + 4], fps=30)
    (tmp_path / "metaData.json").write_text(json.dumps({"frameRate": "20FPS",
                                                        "framesPerFile": 4}))
    with open_movie(tmp_path) as src:
        check_reads(src, movie)
        assert src.metadata["fr"] == 20.0
        assert "metaData.json" in src.metadata["fr_source"]
        assert src.metadata["files"][:3] == ["0.avi", "1.avi", "2.avi"]
    params = CNMFParams(fnames=str(tmp_path))
    assert params.data["fr"] == 20.0 and params.data["dims"] == (D1, D2)


def test_truncated_video(tmp_path):
    movie = _rng(3).integers(0, 255, (30, D1, D2)).astype(np.uint8)
    path = tmp_path / "cut.avi"
    write_ffv1(path, movie)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.6)])
    with pytest.raises(MovieError, match="truncated") as err:
        open_movie(path)
    msg = str(err.value)
    assert "cut.avi" in msg and "30 frames" in msg and "\n" not in msg


def test_video_without_pyav_names_the_extra(tmp_path, monkeypatch):
    movie = np.zeros((3, D1, D2), np.uint8)
    write_ffv1(tmp_path / "m.avi", movie)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(OptionalDependencyError, match=r"gpu_cnmf\[video\]"):
        open_movie(tmp_path / "m.avi")


# ---------------------------------------------------------------------------
# Scanbox

def write_sbx(base, movie, resfreq=7930.0, bidirectional=False, info_extra=None,
              scanbox3=False):
    """``movie`` (T, Z, C, Y, X) uint16 as ``base.sbx`` + ``base.mat`` per the
    Scanbox layout: inverted uint16, Fortran (C, X, Y, Z*T)."""
    from scipy.io import savemat

    T, Z, C, Y, X = movie.shape
    stored = (65535 - movie).transpose(0, 1, 3, 4, 2)      # (T, Z, Y, X, C) in C order
    stored.astype("<u2").tofile(f"{base}.sbx")
    info = {"sz": np.array([Y, X], float), "scanmode": 0 if bidirectional else 1,
            "resfreq": resfreq, "config": {"lines": float(Y), "magnification": 2.0},
            "recordsPerBuffer": float(Y // 2 if bidirectional else Y)}
    if scanbox3:
        info["chan"] = {"nchan": float(C)}
        if Z > 1:
            info["etl_table"] = np.arange(Z * 2, dtype=float).reshape(Z, 2)
    else:
        info["channels"] = 1.0 if C == 2 else 2.0
        if Z > 1:
            info["volscan"] = 1.0
            info["otwave"] = np.linspace(0, 100, Z)
    info.update(info_extra or {})
    savemat(f"{base}.mat", {"info": info})


@pytest.mark.parametrize("scanbox3", [False, True])
def test_sbx_planes_channels_rate(tmp_path, scanbox3):
    movie = _rng(4).integers(0, 65535, (7, 3, 2, D1, D2)).astype(np.uint16)
    base = tmp_path / "rec"
    write_sbx(base, movie, bidirectional=True, scanbox3=scanbox3)
    for plane in range(3):
        for channel in range(2):
            with open_movie(f"{base}.sbx", plane=plane, channel=channel) as src:
                check_reads(src, movie[:, plane, channel])
                meta = src.metadata
    # bidirectional: two lines per resonant period; each plane a third of the frames
    assert meta["fr"] == pytest.approx(7930.0 / D1 * 2 / 3)
    assert meta["n_planes"] == 3 and meta["n_channels"] == 2 and meta["bidirectional"]
    with open_movie(f"{base}.sbx", channel=1) as src:          # all planes: a volume
        assert src.dims == (3, D1, D2)
        np.testing.assert_array_equal(src.read(2, 5), movie[2:5, :, 1])


def test_sbx_single_channel_unidirectional(tmp_path):
    movie = _rng(5).integers(0, 65535, (9, 1, 1, D1, D2)).astype(np.uint16)
    write_sbx(tmp_path / "one", movie)
    with open_movie(tmp_path / "one.sbx") as src:
        check_reads(src, movie[:, 0, 0])
        assert src.metadata["fr"] == pytest.approx(7930.0 / D1)
    assert CNMFParams(fnames=str(tmp_path / "one.sbx")).data["fr"] == pytest.approx(7930 / D1)


def test_sbx_bad_input(tmp_path):
    movie = _rng(6).integers(0, 65535, (4, 2, 2, D1, D2)).astype(np.uint16)
    write_sbx(tmp_path / "r", movie)
    with pytest.raises(MovieError, match=r"plane 2 is out of range.*2 planes.*0\.\.1") as err:
        open_movie(tmp_path / "r.sbx", plane=2, channel=0)
    assert "r.sbx" in str(err.value)
    with pytest.raises(MovieError, match=r"channel 5 is out of range.*2 channels"):
        open_movie(tmp_path / "r.sbx", plane=0, channel=5)
    with pytest.raises(MovieError, match=r"r\.sbx.*2 channels; pick one"):
        open_movie(tmp_path / "r.sbx", plane=0)
    data = (tmp_path / "r.sbx").read_bytes()
    (tmp_path / "r.sbx").write_bytes(data[:-10])
    with pytest.raises(MovieError, match=r"r\.sbx.*truncated"):
        open_movie(tmp_path / "r.sbx", plane=0, channel=0)
    (tmp_path / "r.mat").unlink()
    with pytest.raises(MovieError, match=r"r\.sbx: its Scanbox header r\.mat is missing") as err:
        open_movie(tmp_path / "r.sbx")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------
# NWB

def write_nwb(path, series):
    """``series``: list of (name, kind, data, rate) written with pynwb."""
    pynwb = pytest.importorskip("pynwb")
    from datetime import datetime, timezone

    from pynwb.ophys import OnePhotonSeries, OpticalChannel, TwoPhotonSeries

    nwb = pynwb.NWBFile(session_description="test", identifier="id",
                        session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    device = nwb.create_device(name="scope")
    channel = OpticalChannel(name="green", description="GCaMP", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(name="plane", optical_channel=channel, description="",
                                     device=device, excitation_lambda=920.0,
                                     imaging_rate=30.0, indicator="GCaMP6f",
                                     location="V1")
    kinds = {"2p": TwoPhotonSeries, "1p": OnePhotonSeries}
    for name, kind, data, rate in series:
        nwb.add_acquisition(kinds[kind](name=name, data=data, imaging_plane=plane, rate=rate,
                                        unit="n.a."))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def test_nwb_series_round_trip(tmp_path):
    m2p = _rng(7).integers(0, 4000, (20, D1, D2)).astype(np.uint16)
    m1p = _rng(8).random((15, D1, D2)).astype(np.float32)
    path = tmp_path / "s.nwb"
    write_nwb(path, [("TwoPhotonSeries", "2p", m2p, 15.0), ("Miniscope", "1p", m1p, 20.0)])
    with open_movie(path, nwb_series="TwoPhotonSeries") as src:
        check_reads(src, m2p)
        assert src.metadata["fr"] == 15.0 and "TwoPhotonSeries" in src.metadata["fr_source"]
    with open_movie(path, var_name_hdf5="Miniscope") as src:     # CaImAn's spelling
        check_reads(src, m1p)
        assert src.metadata["fr"] == 20.0
    p = CNMFParams(fnames=str(path), nwb_series="Miniscope")
    assert p.data["fr"] == 20.0 and p.data["dims"] == (D1, D2)
    with pytest.raises(MovieError, match=r"s\.nwb: 2 image series; name the series.*"
                                         r"Miniscope \(OnePhotonSeries\)"):
        open_movie(path)
    with pytest.raises(MovieError, match=r"s\.nwb: no image series named 'GCaMP'.*"
                                         r"TwoPhotonSeries \(TwoPhotonSeries\)"):
        open_movie(path, nwb_series="GCaMP")


def test_nwb_only_series_is_default(tmp_path):
    movie = _rng(9).integers(0, 255, (12, D1, D2)).astype(np.uint8)
    write_nwb(tmp_path / "one.nwb", [("TwoPhotonSeries", "2p", movie, 30.0)])
    np.testing.assert_array_equal(load_movie(tmp_path / "one.nwb", outtype=None), movie)


# ---------------------------------------------------------------------------
# ScanImage, ImageJ hyperstacks, Bruker, oddly grouped TIFFs

SI_META = ("SI.hChannels.channelSave = [1;2]\nSI.hStackManager.numSlices = 3\n"
           "SI.hStackManager.actualNumSlices = 3\nSI.hFastZ.enable = true\n"
           "SI.hRoiManager.scanFrameRate = 30.5\nSI.hRoiManager.scanVolumeRate = 10.1\n"
           "SI.hRoiManager.scanZoomFactor = 2.5")


def test_scanimage_planes_channels(tmp_path):
    movie = _rng(10).integers(-100, 4000, (6, 3, 2, D1, D2)).astype(np.int16)  # T, Z, C
    path = tmp_path / "si.tif"
    # pages interleaved channel fastest, then plane, then time, as ScanImage writes
    tifffile.imwrite(path, movie.reshape(-1, D1, D2), software=SI_META, bigtiff=True,
                     metadata=None)
    for z in range(3):
        for c in range(2):
            with open_movie(path, plane=z, channel=c) as src:
                check_reads(src, movie[:, z, c])
                meta = src.metadata
    assert meta["fr"] == pytest.approx(10.1) and meta["zoom"] == 2.5
    assert meta["fr_source"] == "ScanImage metadata of si.tif"
    with open_movie(path, channel=1) as src:
        assert src.dims == (3, D1, D2)
        np.testing.assert_array_equal(src.read(1, 4), movie[1:4, :, 1])
    with pytest.raises(MovieError, match=r"si\.tif: plane 3 is out of range.*3 planes"):
        open_movie(path, plane=3, channel=0)
    with pytest.raises(MovieError, match=r"si\.tif: the file holds 2 channels"):
        open_movie(path, plane=0)


def write_scanimage_bigtiff(path, pages, frame_data: str):
    """A BigTIFF laid out as ScanImage (2016+) writes it: after the 16-byte
    header, the static metadata block (magic 0x07030301, version 3, sizes,
    the ``SI.*`` frame data) that tifffile's ``scanimage_metadata`` parses;
    then each page's data and IFD (int16, one strip, uncompressed)."""
    import struct

    n, h, w = pages.shape
    fd = frame_data.encode() + b"\0"
    out = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
    out += struct.pack("<IIII", 0x07030301, 3, len(fd), 0) + fd
    # each page's Software tag: here only the format line ScanImage starts it with
    software = b"SI.TIFF_FORMAT_VERSION = 3\0"
    software_at = len(out)
    out += software
    ifd_offsets = []
    for page in pages.astype("<i2"):
        data_at = len(out)
        out += page.tobytes()
        ifd_offsets.append(len(out))
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1),
                   (262, 3, 1, 1), (273, 16, 1, data_at), (277, 3, 1, 1), (278, 4, 1, h),
                   (279, 16, 1, page.nbytes), (305, 2, len(software), software_at),
                   (339, 3, 1, 2)]
        out += struct.pack("<Q", len(entries))
        for tag, typ, count, value in entries:
            out += struct.pack("<HHQQ", tag, typ, count, value)
        out += struct.pack("<Q", 0)        # next IFD, patched below
    struct.pack_into("<Q", out, 8, ifd_offsets[0])
    for a, b in zip(ifd_offsets[:-1], ifd_offsets[1:]):
        n_entries = struct.unpack_from("<Q", out, a)[0]
        struct.pack_into("<Q", out, a + 8 + 20 * n_entries, b)
    path.write_bytes(bytes(out))


def test_scanimage_bigtiff_header(tmp_path):
    """The metadata block of ScanImage's BigTIFF header, read by tifffile."""
    movie = _rng(18).integers(-50, 3000, (5, 2, 1, D1, D2)).astype(np.int16)   # T, Z, C
    path = tmp_path / "file_00001.tif"
    meta = SI_META.replace("channelSave = [1;2]", "channelSave = 2").replace("= 3", "= 2")
    # the pages' Software tag names no planes or rates: only the header block does
    write_scanimage_bigtiff(path, movie.reshape(-1, D1, D2), meta)
    with tifffile.TiffFile(path) as tif:
        assert tif.scanimage_metadata["FrameData"]["SI.hStackManager.numSlices"] == 2
    for z in range(2):
        with open_movie(path, plane=z) as src:
            check_reads(src, movie[:, z, 0])
            assert src.metadata["fr"] == pytest.approx(10.1)
            assert src.metadata["n_channels"] == 1


def test_scanimage_single_plane_rate(tmp_path):
    movie = _rng(11).integers(0, 4000, (10, D1, D2)).astype(np.uint16)
    meta = "SI.hChannels.channelSave = 1\nSI.hStackManager.numSlices = 1\n" \
           "SI.hRoiManager.scanFrameRate = 29.76\nSI.hRoiManager.scanZoomFactor = 1"
    tifffile.imwrite(tmp_path / "m.tif", movie, software=meta, metadata=None)
    with open_movie(tmp_path / "m.tif") as src:
        check_reads(src, movie)
        assert src.metadata["fr"] == pytest.approx(29.76)
    assert CNMFParams(fnames=str(tmp_path / "m.tif")).data["fr"] == pytest.approx(29.76)
    assert CNMFParams(fnames=str(tmp_path / "m.tif"), fr=15).data["fr"] == 15   # user's wins


def test_imagej_hyperstack(tmp_path):
    movie = _rng(12).integers(0, 255, (5, 3, 2, D1, D2)).astype(np.uint8)   # T, Z, C
    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TZCYX", "finterval": 0.05})
    for z in range(3):
        for c in range(2):
            with open_movie(path, plane=z, channel=c) as src:
                check_reads(src, movie[:, z, c])
                assert src.metadata["fr"] == pytest.approx(20.0)
    with open_movie(path, channel=0) as src:
        np.testing.assert_array_equal(src.read(), movie[:, :, 0])
    with pytest.raises(MovieError, match=r"hs\.tif: channel 2 is out of range"):
        open_movie(path, plane=0, channel=2)
    # planes without channels: a plane of a TZYX stack
    vol = movie[:, :, 0]
    tifffile.imwrite(tmp_path / "z.tif", vol, imagej=True, metadata={"axes": "TZYX"})
    with open_movie(tmp_path / "z.tif", plane=2) as src:
        check_reads(src, vol[:, 2])
    # a plain ImageJ time series records its frame interval too
    tifffile.imwrite(tmp_path / "t.tif", vol[:, 0], imagej=True,
                     metadata={"axes": "TYX", "finterval": 0.125})
    with open_movie(tmp_path / "t.tif") as src:
        check_reads(src, vol[:, 0])
        assert src.metadata["fr"] == 8.0 and "ImageJ metadata of t.tif" in src.metadata[
            "fr_source"]


def test_plain_files_take_plane_zero_only(tmp_path):
    movie = _rng(13).integers(0, 255, (8, D1, D2)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", movie)
    with open_movie(tmp_path / "m.tif", plane=0, channel=0) as src:
        check_reads(src, movie)
    with pytest.raises(MovieError, match=r"m\.tif: plane 1 is out of range: the file holds "
                                         r"1 plane \(expected plane 0\)"):
        open_movie(tmp_path / "m.tif", plane=1)


def test_tiff_blocks_read_one_frame_per_page(tmp_path):
    """Blocks of different shapes appended to one file: every 2-D page a frame."""
    movie = _rng(14).integers(0, 255, (10, D1, D2)).astype(np.uint8)
    path = tmp_path / "blocks.tif"
    tifffile.imwrite(path, movie[:6])
    tifffile.imwrite(path, movie[6:].reshape(2, 2, D1, D2), append=True)
    with open_movie(path) as src:
        check_reads(src, movie)


def write_bruker(folder, movie, frame_period=0.02, zseries=True):
    """``movie`` (T, Z, C, Y, X) as PrairieView writes it: one TIFF per frame
    and channel, listed in an XML (one ZSeries sequence per volume)."""
    T, Z, C = movie.shape[:3]
    root = ET.Element("PVScan", version="5.6")
    shard = ET.SubElement(root, "PVStateShard")
    ET.SubElement(shard, "PVStateValue", key="framePeriod", value=str(frame_period))
    ET.SubElement(shard, "PVStateValue", key="opticalZoom", value="1.5")
    frames = [(t, z) for t in range(T) for z in range(Z)]
    seq = None
    for i, (t, z) in enumerate(frames):
        if seq is None or (zseries and z == 0):
            seq = ET.SubElement(root, "Sequence", cycle=str(t + 1),
                                type="TSeries ZSeries Element" if zseries
                                else "TSeries Timed Element")
        fr = ET.SubElement(seq, "Frame", index=str(z + 1 if zseries else i + 1),
                           relativeTime=str(i * frame_period))
        for c in range(C):
            name = f"TSeries-001_Cycle{t + 1:05d}_Ch{c + 1}_{z + 1:06d}.ome.tif"
            tifffile.imwrite(folder / name, movie[t, z, c])
            ET.SubElement(fr, "File", channel=str(c + 1), channelName=f"Ch{c + 1}",
                          filename=name)
    ET.ElementTree(root).write(folder / "TSeries-001.xml")


def test_bruker_folder(tmp_path):
    movie = _rng(15).integers(0, 8000, (4, 3, 2, D1, D2)).astype(np.uint16)
    write_bruker(tmp_path, movie)
    for z in range(3):
        for c in range(2):
            with open_movie(tmp_path, plane=z, channel=c) as src:
                check_reads(src, movie[:, z, c])
                meta = src.metadata
    assert meta["fr"] == pytest.approx(1 / (0.02 * 3)) and meta["zoom"] == 1.5
    assert "framePeriod" in meta["fr_source"]
    with pytest.raises(MovieError, match=r"channel 2 is out of range.*2 channels"):
        open_movie(tmp_path, plane=0, channel=2)
    os.remove(tmp_path / "TSeries-001_Cycle00002_Ch2_000003.ome.tif")
    with pytest.raises(MovieError, match=r"Cycle00002_Ch2_000003\.ome\.tif: TIFF listed in "
                                         r"TSeries-001\.xml is missing"):
        open_movie(tmp_path, plane=0, channel=0)


def test_bruker_time_series(tmp_path):
    movie = _rng(16).integers(0, 8000, (12, 1, 1, D1, D2)).astype(np.uint16)
    write_bruker(tmp_path, movie, frame_period=0.033, zseries=False)
    with open_movie(tmp_path) as src:
        check_reads(src, movie[:, 0, 0])
        assert src.metadata["fr"] == pytest.approx(1 / 0.033)


def test_folder_without_movie(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MovieError, match="is a folder without a movie"):
        open_movie(tmp_path)


# ---------------------------------------------------------------------------
# parameters

def test_data_plane_channel_parameters():
    p = CNMFParams(plane="all", channel=1, nwb_series="TwoPhotonSeries")
    assert p.data["plane"] == "all" and p.data["channel"] == 1
    for bad in ({"plane": -1}, {"plane": "every"}, {"channel": 1.5}, {"plane": True}):
        with pytest.raises(ParameterError, match=f"data.{next(iter(bad))}"):
            CNMFParams(params_dict=bad)
    assert "data.fr" in CNMFParams()._derived
    assert "data.fr" not in CNMFParams(fr=30)._derived


# ---------------------------------------------------------------------------
# end to end: gpu-cnmf run on a Miniscope folder and on a Scanbox file

E2E_PARAMS = {"p": 1, "nb": 1, "gSig": [4, 4], "rf": 16, "stride": 6, "K": 4,
              "merge_thr": 0.85, "max_shifts": [4, 4], "strides": [32, 32],
              "overlaps": [12, 12]}


@pytest.fixture(scope="module")
def synthetic():
    from gpu_cnmf.synthetic import make_movie

    movie, truth = make_movie("2p", dims=(48, 48), n_frames=200, n_neurons=6, seed=3,
                              fr=20.0)
    lo, hi = float(movie.min()), float(movie.max())
    return (movie - lo) / (hi - lo), truth


def _run_cli(tmp_path, capsys, target, *extra):
    from gpu_cnmf.cli import main

    params = tmp_path / "p.json"
    params.write_text(json.dumps(E2E_PARAMS))
    out = tmp_path / "r.hdf5"
    rc = main(["run", str(target), "--params", str(params), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return out, captured


def _f1(out, truth):
    from gpu_cnmf.io import load_results
    from gpu_cnmf.metrics import roi_f1

    res = load_results(out)
    est = res["estimates"]
    return roi_f1(truth.A, est["A"][:, est["idx_components"]], est["dims"])["f1"], res


def test_run_miniscope_folder(tmp_path, capsys, synthetic):
    movie, truth = synthetic
    frames = np.rint(movie * 255).astype(np.uint8)
    folder = tmp_path / "Miniscope"
    folder.mkdir()
    for i, a in enumerate(range(0, len(frames), 19)):       # 0.avi .. 10.avi
        write_ffv1(folder / f"{i}.avi", frames[a:a + 19], fps=25)   # the DAQ's setting wins
    (folder / "metaData.json").write_text(json.dumps({"frameRate": "20FPS"}))
    out, captured = _run_cli(tmp_path, capsys, folder)
    assert "fr = 20 Hz from Miniscope metaData.json" in captured.err
    f1, res = _f1(out, truth)
    assert f1 >= 0.7, f1
    assert res["params"].data["fr"] == 20.0


def test_run_scanbox(tmp_path, capsys, synthetic):
    movie, truth = synthetic
    green = np.rint(movie * 30000 + 1000).astype(np.uint16)
    red = _rng(17).integers(0, 2000, green.shape).astype(np.uint16)   # a second PMT
    both = np.stack([green, red], axis=1)[:, None]                    # T, Z, C, Y, X
    write_sbx(tmp_path / "rec", both, resfreq=20.0 * 48 / 2, bidirectional=True)
    out, captured = _run_cli(tmp_path, capsys, tmp_path / "rec.sbx", "--channel", "0")
    assert "fr = 20 Hz from Scanbox header rec.mat" in captured.err
    f1, res = _f1(out, truth)
    assert f1 >= 0.7, f1
    assert res["params"].data["channel"] == 0 and res["params"].data["fr"] == 20.0


def test_sources_pickle(tmp_path):
    """Readers travel to worker processes: pickled without open files, reopened."""
    import pickle

    movie = _rng(19).integers(0, 255, (6, 2, 2, D1, D2)).astype(np.uint8)
    write_ffv1(tmp_path / "m.avi", movie[:, 0, 0])
    write_sbx(tmp_path / "s", movie.astype(np.uint16))
    tifffile.imwrite(tmp_path / "si.tif", movie.reshape(-1, D1, D2), software=SI_META.replace(
        "= 3", "= 2"), metadata=None)
    bruker = tmp_path / "bruker"
    bruker.mkdir()
    write_bruker(bruker, movie)
    cases = [(tmp_path / "m.avi", {}, movie[:, 0, 0]),
             (tmp_path / "s.sbx", {"plane": 1, "channel": 1}, movie[:, 1, 1]),
             (tmp_path / "si.tif", {"plane": 1, "channel": 0}, movie[:, 1, 0]),
             (bruker, {"plane": 0, "channel": 1}, movie[:, 0, 1])]
    for path, select, expected in cases:
        with open_movie(path, **select) as src:
            src.read(0, 2)                          # files open
            clone = pickle.loads(pickle.dumps(src))
            np.testing.assert_array_equal(clone.read(3, 6), expected[3:6])
            clone.close()


def test_plane_all_runs_each_plane(tmp_path, monkeypatch):
    """data.plane = 'all': one run per plane, results <out>_plane<i>.hdf5."""
    from gpu_cnmf import pipeline

    movie = _rng(20).integers(0, 255, (30, 3, 1, D1, D2)).astype(np.uint16)
    write_sbx(tmp_path / "v", movie)
    calls = []

    def fake(fnames, params, out_path, **kwargs):
        calls.append((params.data["plane"], os.path.basename(out_path)))
        return out_path

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    params = CNMFParams(fnames=str(tmp_path / "v.sbx"), plane="all")
    assert params.data["dims"] == (D1, D2)
    out = pipeline._run_each_plane(str(tmp_path / "v.sbx"), params, tmp_path / "r.hdf5",
                                   progress=False)
    assert calls == [(0, "r_plane0.hdf5"), (1, "r_plane1.hdf5"), (2, "r_plane2.hdf5")]
    assert len(out) == 3


@pytest.mark.parametrize("case", ["no_mat", "plane", "channel", "no_plane"])
def test_cli_bad_recording_one_line(tmp_path, capsys, case):
    from gpu_cnmf.cli import main

    movie = _rng(21).integers(0, 255, (20, 2, 2, D1, D2)).astype(np.uint16)
    write_sbx(tmp_path / "r", movie)
    args = {"no_mat": ["--channel", "0", "--plane", "0"], "plane": ["--plane", "4",
            "--channel", "0"], "channel": ["--plane", "0", "--channel", "2"],
            "no_plane": ["--channel", "1"]}[case]
    if case == "no_mat":
        (tmp_path / "r.mat").unlink()
    rc = main(["run", str(tmp_path / "r.sbx"), "--out", str(tmp_path / "o.hdf5"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "r.sbx" in err, err
    assert {"no_mat": "r.mat is missing", "plane": "plane 4 is out of range",
            "channel": "channel 2 is out of range", "no_plane": "--plane all"}[case] in err
    assert not (tmp_path / "o.hdf5").exists()


def test_motion_correct_takes_plane_and_channel(tmp_path):
    from gpu_cnmf.motion import MotionCorrect

    movie = _rng(22).integers(0, 255, (10, 2, 2, D1, D2)).astype(np.uint16)
    write_sbx(tmp_path / "r", movie)
    mc = MotionCorrect(str(tmp_path / "r.sbx"), plane=1, channel=0, max_shifts=(2, 2))
    np.testing.assert_array_equal(mc.source.read(), movie[:, 1, 0])
    mc.source.close()


def test_lexical_file_list_is_flagged(tmp_path, caplog):
    """A shell glob (0, 1, 10, 2, ...) is joined as given, with a warning."""
    movie = _rng(23).integers(0, 255, (11, D1, D2)).astype(np.uint8)
    paths = []
    for i in range(11):
        tifffile.imwrite(tmp_path / f"{i}.tif", movie[i:i + 1])
        paths.append(str(tmp_path / f"{i}.tif"))
    lexical = sorted(paths)
    with caplog.at_level("WARNING", logger="gpu_cnmf.io.movie"):
        with open_movie(lexical) as src:
            np.testing.assert_array_equal(src.read(), movie[[int(os.path.basename(p)[:-4])
                                                             for p in lexical]])
    assert "lexical order (0.tif, 1.tif, 10.tif" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gpu_cnmf.io.movie"):
        open_movie(paths).close()
    assert caplog.text == ""
