"""Video files (``.avi``, ``.mkv``, ``.mp4``, ...) and folders of Miniscope AVIs.

Decoder: PyAV (the ``av`` package, extra ``gpu_cnmf[video]``). It ships
FFmpeg's libraries in its wheels (no system FFmpeg to install, the same
decoder on every platform), hands back each decoded frame with its
presentation time, so a frame range is found by seeking rather than by
decoding from the start, and includes FFmpeg's encoders (FFV1, which the
tests use to write lossless movies). imageio-ffmpeg instead pipes raw frames
from an ``ffmpeg`` subprocess: frame-accurate seeking there means restarting
the process, and frame timestamps are not exposed.

How frames are found
--------------------
Frame ``i`` is the one whose presentation time is ``start + i / fps`` (a
constant frame rate, as Miniscope, nVista and camera software write). A
read of frames ``a:b`` continues the running decoder when ``a`` is the next
frame it will produce (the usual front-to-back pass); otherwise it seeks to
the last keyframe at or before frame ``a`` and decodes forward, dropping the
frames before ``a``. This is exact for every codec: intra-only codecs
(FFV1, rawvideo, MJPEG) decode only the asked frames plus those since the
keyframe; inter-frame codecs (H.264, ...) decode from the previous keyframe.

The frame count comes from the container's header when it has one (AVI);
otherwise (Matroska, some MP4s) one pass over the packets counts them
without decoding. On opening, the last frame is decoded: a file cut short
(the header promises more frames than the file holds) is reported there,
with how many frames it does hold. Both are done once per file (same path,
size and modification time) in a process.

Grey values
-----------
Grey pixel formats (``gray``, ``gray16le``: Miniscope's FFV1 and ``GREY``
AVIs) come back as stored (uint8 or uint16). For YUV formats the luma plane
is returned as stored (no range scaling). RGB formats whose three channels
agree (grey saved as colour) return one channel; otherwise the BT.601 luma
``0.299 R + 0.587 G + 0.114 B``, rounded to uint8.

Miniscope folders
-----------------
A folder of videos (``0.avi, 1.avi, ..., 10.avi``; also ``msCam1.avi,
...``) is one movie, its files joined in natural (numeric) order, not
lexical order. The frame rate is the ``frameRate`` entry of the folder's
``metaData.json`` (Miniscope DAQ software, e.g. ``"30FPS"`` or ``30``) when
present, else the rate the first file's container records.
"""
from __future__ import annotations

import json
import os
import re
from fractions import Fraction

import numpy as np

from ..errors import MovieError, OptionalDependencyError
from .source import ConcatSource, MovieSource

VIDEO_EXTENSIONS = (".avi", ".mkv", ".mp4", ".mov", ".m4v", ".webm", ".wmv", ".mpg", ".mpeg")

_GRAY = {"gray": np.uint8, "gray8": np.uint8, "gray16le": np.uint16, "gray16be": np.uint16}
_RGB = ("rgb24", "bgr24", "rgba", "bgra", "argb", "abgr", "rgb48le", "bgr48le")


# Files already checked in this process (path, size, mtime) -> frame count:
# a run opens each file several times (checks, parameters, motion
# correction), and a folder may hold hundreds of videos.
_CHECKED: dict[tuple, int] = {}


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _av():
    try:
        import av
    except ImportError as err:
        raise OptionalDependencyError(
            "reading video files (.avi, .mkv, .mp4) needs the optional package 'av' (PyAV), "
            "which is not installed; install it with: pip install 'gpu_cnmf[video]'") from err
    return av


def natural_key(name: str):
    """Sort key that orders embedded numbers by value: ``2.avi`` < ``10.avi``."""
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", os.path.basename(name))]


def _gray_dtype(pix_fmt: str, path: str):
    if pix_fmt in _GRAY:
        return np.dtype(_GRAY[pix_fmt])
    if pix_fmt in _RGB or pix_fmt.startswith(("yuv", "yuvj", "nv", "gray")):
        deep = re.search(r"(9|10|12|14|16)(le|be)$", pix_fmt)
        if deep and pix_fmt not in _RGB:
            return np.dtype(np.uint16)
        return np.dtype(np.uint8)
    raise MovieError(f"{path}: video pixel format {pix_fmt!r} is not supported; expected a "
                     "grey (gray, gray16le), YUV or RGB format")


def _to_gray(frame, pix_fmt: str, dtype) -> np.ndarray:
    """One decoded frame as a 2-D grey array (see the module notes)."""
    if pix_fmt in ("gray", "gray8"):
        return frame.to_ndarray(format="gray")
    if pix_fmt in ("gray16le", "gray16be"):
        return frame.to_ndarray(format="gray16le")
    if pix_fmt in _RGB:
        rgb = frame.to_ndarray(format="rgb24")
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].copy()
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    if pix_fmt.startswith("gray"):   # gray10le, gray12le...: widened by swscale
        return frame.to_ndarray(format="gray16le")
    # YUV: the luma plane as stored, rows cut to the frame width
    plane = frame.planes[0]
    item = np.dtype(dtype).itemsize
    raw = np.frombuffer(plane, dtype=np.uint8 if item == 1 else "<u2")
    rows = raw.reshape(frame.height, plane.line_size // item)
    return rows[:, :frame.width].copy()


class VideoSource(MovieSource):
    """One video file, read frame range by frame range through PyAV.

    Parameters
    ----------
    path : str
        ``.avi``, ``.mkv``, ``.mp4``, ... with one video stream.
    """

    _handle_attrs = ("_container",)

    def __init__(self, path: str):
        self.path = path
        self._container = self._stream = None
        self._decoder = None
        self._next = None      # index of the frame the running decoder yields next
        av = _av()
        try:
            container = av.open(path)
        except (av.error.FFmpegError, OSError, ValueError) as err:
            raise MovieError(f"{path}: cannot read as video: {err}") from err
        try:
            if not container.streams.video:
                raise MovieError(f"{path}: the file holds no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise MovieError(f"{path}: the video records no frame rate; frames cannot "
                                 "be located by time")
            self._rate = Fraction(rate)
            self._tb = Fraction(stream.time_base)
            self._t0 = int(stream.start_time or 0)
            self._pix_fmt = ctx.pix_fmt or ctx.format.name
            dtype = _gray_dtype(self._pix_fmt, path)
            key = _file_key(path)
            known = _CHECKED.get(key)
            n = int(stream.frames or 0) if known is None else known
            counted = n == 0
            if counted:     # the header has no count: count packets, no decoding
                n = self._count_packets(container, stream)
            self._setup((n, ctx.height, ctx.width), dtype, path)
            self._meta = {"format": "video", "fr": float(self._rate),
                          "fr_source": f"the container of {os.path.basename(path)}",
                          "codec": ctx.name, "pix_fmt": self._pix_fmt}
        except MovieError:
            container.close()
            raise
        except (av.error.FFmpegError, ValueError) as err:
            container.close()
            raise MovieError(f"{path}: cannot read as video: {err}") from err
        self._container, self._stream = container, stream
        if known is None:
            self._check_last_frame(counted)
            if len(_CHECKED) > 4096:
                _CHECKED.clear()
            _CHECKED[key] = n

    # -- locating frames -----------------------------------------------------
    @staticmethod
    def _count_packets(container, stream) -> int:
        n = sum(1 for pk in container.demux(stream) if pk.size)
        container.seek(0, stream=stream)
        return n

    def _pts(self, i: int) -> int:
        return self._t0 + round(Fraction(i) / (self._rate * self._tb))

    def _index(self, pts) -> int:
        return round((Fraction(pts) - self._t0) * self._tb * self._rate)

    def _handle(self):
        if self._container is None:
            av = _av()
            self._container = av.open(self.path)
            self._stream = self._container.streams.video[0]
            self._decoder = self._next = None
        return self._container

    def _seek(self, start: int) -> None:
        container = self._handle()
        container.seek(self._pts(start), stream=self._stream, backward=True, any_frame=False)
        self._decoder = container.decode(self._stream)
        self._next = None   # known after the first frame (its timestamp)

    def _frames(self, start: int, stop: int):
        """Yield frames ``start:stop`` in order, as grey arrays."""
        if self._decoder is None or self._next != start:
            self._seek(start)
        i = start
        while i < stop:
            try:
                frame = next(self._decoder)
            except StopIteration:
                self._decoder = self._next = None
                raise MovieError(
                    f"{self.path}: video ends before frame {i} (the container says "
                    f"{self.n_frames} frames); the file may be truncated") from None
            if frame.pts is None:
                raise MovieError(f"{self.path}: decoded frames carry no timestamps; "
                                 "frames cannot be located")
            k = self._index(frame.pts)
            if k < i:       # before the asked range: decoded from the keyframe
                continue
            if k > i:
                raise MovieError(f"{self.path}: frame {i} is missing from the video (the "
                                 f"next one decoded is frame {k}); a variable frame rate "
                                 "or dropped frames cannot be read by index")
            self._next = i + 1
            yield _to_gray(frame, self._pix_fmt, self.dtype)
            i += 1

    def _read(self, start: int, stop: int) -> np.ndarray:
        av = _av()
        out = np.empty((stop - start,) + self.dims, self.dtype)
        try:
            for j, frame in enumerate(self._frames(start, stop)):
                out[j] = frame
        except av.error.FFmpegError as err:
            self._decoder = self._next = None
            raise MovieError(f"{self.path}: cannot decode frames {start}:{stop} ({err}); "
                             "the file may be truncated or corrupted") from err
        return out

    def _check_last_frame(self, counted: bool) -> None:
        """Decode the last frame: a truncated file fails here, on opening."""
        av = _av()
        last = self.n_frames - 1
        try:
            for _ in self._frames(last, last + 1):
                pass
            return
        except (MovieError, av.error.FFmpegError):
            pass
        held = self._count_readable()
        self.close()
        raise MovieError(
            f"{self.path}: the video is truncated: {'its packets' if counted else 'its header'} "
            f"promise {self.n_frames} frames but only {held} can be decoded "
            "(expected a complete file)")

    def _count_readable(self) -> int:
        av = _av()
        self._seek(0)
        n = 0
        try:
            for _ in self._decoder:
                n += 1
        except av.error.FFmpegError:
            pass
        self._decoder = self._next = None
        return n

    def close(self) -> None:
        self._decoder = self._next = None
        self._stream = None
        super().close()

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_decoder=None, _next=None, _stream=None)
        return state


def _folder_rate(folder: str):
    """``frameRate`` of a Miniscope ``metaData.json`` in ``folder``, or None."""
    meta_path = os.path.join(folder, "metaData.json")
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise MovieError(f"{meta_path}: cannot read the Miniscope metadata ({err}); "
                         "expected a JSON object") from err
    value = meta.get("frameRate") if isinstance(meta, dict) else None
    if value is None:
        return None
    m = re.search(r"\d+(\.\d+)?", str(value))
    if m is None or float(m.group()) <= 0:
        raise MovieError(f"{meta_path}: frameRate = {value!r} is not a frame rate "
                         "(expected e.g. 30 or \"30FPS\")")
    return float(m.group())


def video_files(folder: str) -> list[str]:
    """The video files of ``folder``, in natural (numeric) order."""
    names = [n for n in os.listdir(folder)
             if n.lower().endswith(VIDEO_EXTENSIONS) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def open_video_folder(folder: str) -> MovieSource:
    """A folder of videos (Miniscope: ``0.avi, 1.avi, ...``) as one movie."""
    files = video_files(folder)
    if not files:
        raise MovieError(f"{folder}: the folder holds no video files "
                         f"(expected {', '.join(VIDEO_EXTENSIONS[:3])})")
    parts: list[MovieSource] = []
    try:
        for f in files:
            parts.append(VideoSource(f))
            parts[-1].close()
    except BaseException:
        for p in parts:
            p.close()
        raise
    source = parts[0] if len(parts) == 1 else ConcatSource(parts)
    if len(parts) > 1:
        source.name = f"{folder} ({len(parts)} videos)"
    meta = source.metadata
    rate = _folder_rate(folder)
    if rate is not None:
        meta.update(fr=rate, fr_source=f"Miniscope metaData.json of {folder}")
    meta.update(format="video folder", files=[os.path.basename(f) for f in files])
    source._meta = meta
    return source


__all__ = ["VideoSource", "open_video_folder", "video_files", "natural_key",
           "VIDEO_EXTENSIONS"]
