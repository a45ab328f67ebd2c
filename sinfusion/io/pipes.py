"""Frames over byte pipes: raw RGB24 and YUV4MPEG2 (y4m) readers and writers, without torch.

These are the formats ffmpeg speaks on stdin/stdout (`-f rawvideo -pix_fmt rgb24`, `-f yuv4mpegpipe`):

- raw RGB24: frames of exactly width * height * 3 bytes back to back; the size must be known out of band.
- y4m: a text header line `YUV4MPEG2 W<w> H<h> F<num>:<den> I<p|t|b|m|?> A<n>:<d> C<colorspace> X...`,
  then per frame a line `FRAME[ params]` and the planar Y, Cb, Cr bytes. Size and rate come from the
  header, which is why `ffmpeg ... -f yuv4mpegpipe - | sinfusion upsample ...` needs no flags.

Colour: Y'CbCr is BT.601 (what ffmpeg assumes for y4m when nothing else is said), limited range
(Y 16-235, C 16-240) unless the header says `XCOLORRANGE=FULL`. Supported colorspaces, all 8 bits:
4:2:0 (`C420jpeg`, `C420mpeg2`, `C420paldv`, `C420`; the default when `C` is absent), `C422`, `C411`,
`C444` and `Cmono`.
The 4:2:0 variants differ only in where chroma samples sit (sub-pixel offsets); reading upsamples chroma
by replication and writing averages 2x2 blocks, which ignores those offsets: the error is under a pixel
of chroma position, invisible next to the 4:2:0 subsampling itself. Interlaced streams are read as
progressive frames.

Errors are `PipeError`s whose message names the stream, the frame number (from 0) and the byte offset
where it broke, for one-line CLI reports. A stream that ends exactly at a frame boundary is a normal end.

Frame sizes are bounded by MAX_FRAME_PIXELS (2^24, e.g. 4096x4096 or 5120x2880; 8K is refused): a y4m
header or a raw size claiming more is refused before any frame buffer is allocated, so a hostile or
mistyped size ends in a PipeError, not a MemoryError. Its RGB24 frame (48 MiB) still fits in one client
message (64 MiB, clients/options.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import numpy as np

Y4M_MAGIC = b"YUV4MPEG2 "
MAX_HEADER = 4096  # bytes; real headers are under 100, this only stops reading a non-y4m stream forever
# colorspace token -> (horizontal, vertical) chroma subsampling; None for mono (no chroma planes)
CHROMA = {
    "420jpeg": (2, 2),
    "420mpeg2": (2, 2),
    "420paldv": (2, 2),
    "420": (2, 2),
    "422": (2, 1),
    "411": (4, 1),
    "444": (1, 1),
    "mono": None,
}
DEFAULT_COLORSPACE = "420jpeg"  # the y4m specification's default when the header has no C parameter
MAX_FRAME_PIXELS = 1 << 24  # width * height; see the module docstring
MAX_DIGITS = 9  # of a header number: keeps int() cheap and a rate's float() finite


class PipeError(ValueError):
    """A malformed or truncated frame stream; the message names the stream, frame and byte offset."""


def frame_size_problem(width: int, height: int) -> str | None:
    """Why a frame size cannot be read or written here, or None when it can."""
    if width < 1 or height < 1:
        return f"frame size must be positive, got {width}x{height}"
    if width * height > MAX_FRAME_PIXELS:
        return (f"frame size {width}x{height} is {width * height} pixels, over the limit of "
                f"{MAX_FRAME_PIXELS} (2^24, e.g. 4096x4096)")
    return None


class ByteSource:
    """A binary stream read in exact-size pieces, counting bytes so errors can say where they are.

    `prefix` holds bytes already taken from the stream (by `sniff`), served before the stream's own.
    """

    def __init__(self, stream: BinaryIO, prefix: bytes = b"", name: str = "stdin"):
        self.stream, self.name = stream, name
        self._prefix = prefix
        self.offset = 0  # bytes handed out so far

    @property
    def pending(self) -> bytes:
        """Bytes taken from the stream but not handed out yet (what `sniff` looked at)."""
        return self._prefix

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the stream (pipes may return short reads)."""
        parts, want = [], n
        if self._prefix:
            parts.append(self._prefix[:want])
            self._prefix = self._prefix[want:]
            want -= len(parts[0])
        while want > 0:
            chunk = self.stream.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def readline(self, limit: int) -> bytes:
        """Bytes up to and including b'\\n', at most `limit`; shorter without newline only at the end."""
        out = bytearray()
        while len(out) < limit:
            b = self.read(1)
            if not b:
                break
            out += b
            if b == b"\n":
                break
        return bytes(out)


def sniff(stream: BinaryIO, name: str = "stdin") -> tuple[bool, ByteSource]:
    """Whether the stream starts with the y4m magic, and a ByteSource that still yields every byte."""
    source = ByteSource(stream, name=name)
    head = source.read(len(Y4M_MAGIC))
    return head == Y4M_MAGIC, ByteSource(stream, prefix=head, name=name)


# ---- BT.601 colour conversion ---------------------------------------------------------------------

def _bt601(full_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """(M, offset) with [Y, Cb, Cr] = M @ [R, G, B] + offset, in 8-bit code values.

    BT.601: Y' = 0.299 R + 0.587 G + 0.114 B, Pb = (B - Y') / 1.772, Pr = (R - Y') / 1.402; limited range
    scales Y' to 219 steps above 16 and Pb, Pr to 224 steps around 128, full range keeps 255 steps.
    """
    kr, kb = 0.299, 0.114
    luma = np.array([kr, 1.0 - kr - kb, kb])
    pb = (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb))
    pr = (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr))
    ys, cs, y0 = (1.0, 1.0, 0.0) if full_range else (219 / 255, 224 / 255, 16.0)
    m = np.stack([luma * ys, pb * cs, pr * cs])
    return m, np.array([y0, 128.0, 128.0])


# Conversion is one (N, 3) x (3, 3) product per frame, with matrices built once (float32).
_RGB2YUV = {full: tuple(a.astype(np.float32) for a in _bt601(full)) for full in (False, True)}
_YUV2RGB = {full: (np.linalg.inv(_bt601(full)[0]).astype(np.float32), _bt601(full)[1].astype(np.float32))
            for full in (False, True)}


def rgb_to_yuv(rgb: np.ndarray, full_range: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB -> float32 Y, Cb, Cr planes (H, W) in 8-bit code values, unrounded."""
    m, offset = _RGB2YUV[full_range]
    yuv = rgb.reshape(-1, 3).astype(np.float32) @ m.T + offset
    h, w = rgb.shape[:2]
    return tuple(np.ascontiguousarray(yuv[:, i]).reshape(h, w) for i in range(3))


def yuv_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, full_range: bool = False) -> np.ndarray:
    """Y, Cb, Cr planes (H, W) of 8-bit code values -> uint8 (H, W, 3) RGB, rounded and clipped."""
    inv, offset = _YUV2RGB[full_range]
    yuv = np.stack([y, cb, cr], axis=-1).astype(np.float32) - offset
    rgb = yuv @ inv.T
    rgb += 0.5
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)


def _chroma_shape(width: int, height: int, sub: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a chroma plane; odd sizes round up, as ffmpeg does."""
    return -(-height // sub[1]), -(-width // sub[0])


def _downsample(plane: np.ndarray, sub: tuple[int, int]) -> np.ndarray:
    """Average sub[1] x sub[0] blocks, replicating the last row/column for odd sizes."""
    sx, sy = sub
    if (sx, sy) == (1, 1):
        return plane
    h, w = plane.shape
    ch, cw = _chroma_shape(w, h, sub)
    padded = np.pad(plane, ((0, ch * sy - h), (0, cw * sx - w)), mode="edge")
    return padded.reshape(ch, sy, cw, sx).mean(axis=(1, 3))


def _upsample(plane: np.ndarray, sub: tuple[int, int], height: int, width: int) -> np.ndarray:
    sx, sy = sub
    if (sx, sy) == (1, 1):
        return plane
    return np.repeat(np.repeat(plane, sy, axis=0), sx, axis=1)[:height, :width]


# ---- y4m ------------------------------------------------------------------------------------------

@dataclass
class Y4MHeader:
    width: int
    height: int
    rate: Fraction | None  # frames per second; None when the header says F0:0 or nothing
    colorspace: str = DEFAULT_COLORSPACE
    full_range: bool = False
    params: dict[str, str] = field(default_factory=dict)  # every header parameter, by its letter

    @property
    def fps(self) -> float | None:
        return float(self.rate) if self.rate else None

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame's planes (the FRAME line excluded)."""
        sub = CHROMA[self.colorspace]
        if sub is None:
            return self.width * self.height
        ch, cw = _chroma_shape(self.width, self.height, sub)
        return self.width * self.height + 2 * ch * cw

    def encode(self) -> bytes:
        rate = self.rate or Fraction(0)
        rng = "FULL" if self.full_range else "LIMITED"
        return (f"YUV4MPEG2 W{self.width} H{self.height} F{rate.numerator}:{rate.denominator} Ip A1:1 "
                f"C{self.colorspace} XCOLORRANGE={rng}\n").encode("ascii")


def parse_y4m_header(line: bytes, name: str = "stdin") -> Y4MHeader:
    """Parse a y4m stream header line (with or without its newline)."""
    where = f"{name}: y4m header"
    try:
        text = line.decode("ascii").rstrip("\n")
    except UnicodeDecodeError:
        raise PipeError(f"{where} is not ASCII text") from None
    tokens = text.split(" ")
    if tokens[0] != "YUV4MPEG2":
        raise PipeError(f"{where} must start with 'YUV4MPEG2 ', got {line[:10]!r}")
    params: dict[str, str] = {}
    extras: list[str] = []
    for tok in tokens[1:]:
        if not tok:
            continue
        if tok[0] == "X":
            extras.append(tok[1:])
        else:
            params[tok[0]] = tok[1:]
    size = {}
    for key in ("W", "H"):
        value = params.get(key)
        if value is None or not _number(value) or int(value) < 1:
            raise PipeError(f"{where}: {key} must be a positive integer, got {_cut(value)}")
        size[key] = int(value)
    problem = frame_size_problem(size["W"], size["H"])
    if problem:
        raise PipeError(f"{where}: {problem}")
    rate = None
    if "F" in params:
        num, _, den = params["F"].partition(":")
        if not (_number(num) and _number(den)):
            raise PipeError(f"{where}: F must be <num>:<den> with at most {MAX_DIGITS} digits each, "
                            f"got {_cut(params['F'])}")
        if int(num) > 0 and int(den) > 0:
            rate = Fraction(int(num), int(den))
    colorspace = params.get("C", DEFAULT_COLORSPACE)
    if colorspace not in CHROMA:
        raise PipeError(f"{where}: colorspace C{_cut(colorspace, quote=False)} is not supported "
                        f"(use one of {', '.join('C' + c for c in CHROMA)}; 8 bits only)")
    full = "COLORRANGE=FULL" in extras
    return Y4MHeader(size["W"], size["H"], rate, colorspace, full, params)


def _number(text: str) -> bool:
    return text.isdigit() and len(text) <= MAX_DIGITS


def _cut(text: str | None, limit: int = 32, quote: bool = True) -> str:
    """A header value for a message (repr() unless quote=False), cut so that a 4 KiB header does not
    make a 4 KiB error line."""
    show = repr if quote else str
    if text is None or len(text) <= limit:
        return show(text)
    return f"{show(text[:limit])}... ({len(text)} characters)"


class Y4MReader:
    """Iterate a y4m stream as uint8 (H, W, 3) RGB frames; the header is read on construction."""

    def __init__(self, source: ByteSource | BinaryIO, name: str = "stdin"):
        self.source = source if isinstance(source, ByteSource) else ByteSource(source, name=name)
        self.name = self.source.name
        line = self.source.readline(MAX_HEADER)
        if not line:
            raise PipeError(f"{self.name}: empty stream, expected a y4m header")
        if not (line.startswith(Y4M_MAGIC) or Y4M_MAGIC.startswith(line)):
            raise PipeError(f"{self.name}: y4m header must start with 'YUV4MPEG2 ', got {line[:10]!r}")
        if not line.endswith(b"\n"):
            if len(line) >= MAX_HEADER:
                raise PipeError(f"{self.name}: y4m header has no newline in its first {MAX_HEADER} bytes")
            raise PipeError(f"{self.name}: stream ends inside the y4m header at byte {self.source.offset}")
        self.header = parse_y4m_header(line, self.name)
        self.frames_read = 0

    @property
    def width(self) -> int:
        return self.header.width

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def fps(self) -> float | None:
        return self.header.fps

    def _fail(self, at: int, what: str) -> PipeError:
        return PipeError(f"{self.name}: y4m frame {self.frames_read} at byte {at}: {what}")

    def read_frame(self) -> np.ndarray | None:
        """The next frame, or None at the end of the stream (exactly at a frame boundary)."""
        start = self.source.offset
        line = self.source.readline(MAX_HEADER)
        if not line:
            return None
        if not line.endswith(b"\n") and len(line) < MAX_HEADER and (
                line.startswith(b"FRAME") or b"FRAME".startswith(line)):
            raise self._fail(start, f"truncated: the stream ends inside the FRAME line at byte "
                                    f"{self.source.offset}")
        if not line.startswith(b"FRAME") or line[5:6] not in (b" ", b"\n"):
            raise self._fail(start, f"expected a 'FRAME' line, got {line[:16]!r}")
        h = self.header
        size = h.frame_bytes
        data = self.source.read(size)
        if len(data) < size:
            raise self._fail(start, f"truncated: got {len(data)} of {size} bytes of frame data "
                                    f"(the stream ends at byte {self.source.offset})")
        y = np.frombuffer(data, np.uint8, h.width * h.height).reshape(h.height, h.width)
        sub = CHROMA[h.colorspace]
        if sub is None:
            cb = cr = np.full_like(y, 128)
        else:
            ch, cw = _chroma_shape(h.width, h.height, sub)
            n = ch * cw
            base = h.width * h.height
            cb = np.frombuffer(data, np.uint8, n, base).reshape(ch, cw)
            cr = np.frombuffer(data, np.uint8, n, base + n).reshape(ch, cw)
            cb, cr = _upsample(cb, sub, h.height, h.width), _upsample(cr, sub, h.height, h.width)
        self.frames_read += 1
        return yuv_to_rgb(y, cb, cr, h.full_range)

    def __iter__(self) -> Iterator[np.ndarray]:
        while (frame := self.read_frame()) is not None:
            yield frame


class Y4MWriter:
    """Write uint8 (H, W, 3) RGB frames as y4m; the header goes out with the first frame.

    Every frame is flushed as soon as it is written, so a downstream player or encoder starts at once.
    """

    def __init__(self, stream: BinaryIO, fps: float | Fraction | None, colorspace: str = "444",
                 full_range: bool = False, flush: bool = True):
        if colorspace not in CHROMA:
            raise ValueError(f"colorspace must be one of {', '.join(CHROMA)}, got {colorspace!r}")
        self.stream, self.colorspace, self.full_range, self.flush = stream, colorspace, full_range, flush
        self.rate = Fraction(fps).limit_denominator(1001) if fps else None
        self.header: Y4MHeader | None = None
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        frame = _check_rgb(frame)
        h, w = frame.shape[:2]
        if self.header is None:
            self.header = Y4MHeader(w, h, self.rate, self.colorspace, self.full_range)
            self.stream.write(self.header.encode())
        elif (w, h) != (self.header.width, self.header.height):
            raise ValueError(f"frame {self.frames_written} is {w}x{h}, the stream is "
                             f"{self.header.width}x{self.header.height}")
        y, cb, cr = rgb_to_yuv(frame, self.full_range)
        planes = [y]
        sub = CHROMA[self.colorspace]
        if sub is not None:
            planes += [_downsample(cb, sub), _downsample(cr, sub)]
        self.stream.write(b"FRAME\n")
        for p in planes:
            self.stream.write(np.clip(p + 0.5, 0, 255).astype(np.uint8).tobytes())
        if self.flush:
            self.stream.flush()
        self.frames_written += 1


# ---- raw RGB24 ------------------------------------------------------------------------------------

class RawReader:
    """Iterate a raw RGB24 stream of known size as uint8 (H, W, 3) frames."""

    def __init__(self, source: ByteSource | BinaryIO, width: int, height: int, name: str = "stdin"):
        problem = frame_size_problem(width, height)
        if problem:
            raise PipeError(f"{name}: raw RGB24 {problem}")
        self.source = source if isinstance(source, ByteSource) else ByteSource(source, name=name)
        self.name = self.source.name
        self.width, self.height = width, height
        self.frames_read = 0

    def read_frame(self) -> np.ndarray | None:
        size = self.width * self.height * 3
        start = self.source.offset
        data = self.source.read(size)
        if not data:
            return None
        if len(data) < size:
            raise PipeError(f"{self.name}: raw RGB24 frame {self.frames_read} at byte {start}: truncated, "
                            f"got {len(data)} of {size} bytes ({self.width}x{self.height}x3; is the "
                            f"size right?)")
        self.frames_read += 1
        return np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)

    def __iter__(self) -> Iterator[np.ndarray]:
        while (frame := self.read_frame()) is not None:
            yield frame


class RawWriter:
    """Write uint8 (H, W, 3) frames as raw RGB24, flushed frame by frame."""

    def __init__(self, stream: BinaryIO, flush: bool = True):
        self.stream, self.flush = stream, flush
        self.size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        frame = _check_rgb(frame)
        size = (frame.shape[1], frame.shape[0])
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise ValueError(f"frame {self.frames_written} is {size[0]}x{size[1]}, the stream is "
                             f"{self.size[0]}x{self.size[1]}")
        self.stream.write(frame.tobytes())
        if self.flush:
            self.stream.flush()
        self.frames_written += 1


def _check_rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


def parse_frame_size(text: str) -> tuple[int, int]:
    """parse_size, also refusing sizes over MAX_FRAME_PIXELS (a frame size to read or send)."""
    w, h = parse_size(text)
    problem = frame_size_problem(w, h)
    if problem:
        raise ValueError(problem)
    return w, h


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H); ValueError with the expected form otherwise."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise ValueError(f"size must be WxH, i.e. WIDTHxHEIGHT with positive integers (e.g. 256x144), "
                         f"got {text!r}")
    return int(w), int(h)
