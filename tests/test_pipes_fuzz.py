"""A hypothesis fuzz of the y4m and raw RGB24 readers (sinfusion.io.pipes) and of the CLI's stdin sniffing.

Any bytes must give frames of the announced size or one PipeError/InputError whose message is a single
bounded line; never another exception, never an allocation a header merely claims. Valid streams
written by our writers, then cut, flipped or spliced, must lose no frame before the damage and name the
frame where it broke. Bounded to a few seconds (small frames, a fixed example count, derandomized so a
failure reproduces).
"""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinfusion.clients.cli_io import open_source
from sinfusion.io.cli import InputError
from sinfusion.io.pipes import (
    CHROMA,
    MAX_FRAME_PIXELS,
    PipeError,
    RawReader,
    RawWriter,
    Y4MReader,
    Y4MWriter,
    parse_frame_size,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
WRITABLE = [c for c in CHROMA if c in ("444", "422", "420jpeg", "mono")]  # what Y4MWriter is used with


def read_all(reader_factory) -> tuple[list[np.ndarray], PipeError | None]:
    """Frames read before the stream ended or broke, and the PipeError if it broke."""
    frames: list[np.ndarray] = []
    try:
        reader = reader_factory()
        for frame in reader:
            frames.append(frame)
    except PipeError as exc:
        return frames, exc
    return frames, None


def one_line(exc: Exception) -> None:
    text = str(exc)
    assert "\n" not in text and 0 < len(text) < 400, text


@st.composite
def clips(draw, max_side: int = 9) -> np.ndarray:
    n = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    data = draw(st.binary(min_size=n * h * w * 3, max_size=n * h * w * 3))
    return np.frombuffer(data, np.uint8).reshape(n, h, w, 3)


def y4m_bytes(clip: np.ndarray, colorspace: str, full: bool) -> bytes:
    buf = io.BytesIO()
    writer = Y4MWriter(buf, 25, colorspace, full_range=full)
    for frame in clip:
        writer.write(frame)
    return buf.getvalue()


# ---- any bytes -------------------------------------------------------------------------------------

HEADER_TOKENS = st.sampled_from([
    "W2", "H2", "W0", "H-1", "W100000", "H100000", "W16777217", "H1", "W4096", "H4097", "W" + "9" * 40,
    "F25:1", "F0:0", "F30000:1001", "F" + "9" * 30 + ":1", "F" + "9" * 400 + ":1", "F1:", "Ip", "It",
    "A1:1", "C420jpeg", "C444", "C422", "C411", "Cmono", "C420p10", "XCOLORRANGE=FULL", "XYSCSS=420JPEG",
    "", "Z", "\t", "\x00",
])


@st.composite
def y4m_like(draw) -> bytes:
    """Header-ish text (tokens from real and broken headers), then FRAME-ish lines and bytes."""
    header = "YUV4MPEG2 " + " ".join(draw(st.lists(HEADER_TOKENS, max_size=8)))
    body = draw(st.lists(st.one_of(st.just(b"FRAME\n"), st.just(b"FRAME Ixyz\n"), st.just(b"FRAM"),
                                   st.binary(max_size=40)), max_size=6))
    end = draw(st.sampled_from([b"\n", b"", b"\r\n"]))
    return header.encode("latin-1") + end + b"".join(body)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), y4m_like()))
def test_y4m_reader_any_bytes(data):
    frames, error = read_all(lambda: Y4MReader(io.BytesIO(data)))
    if error is not None:
        one_line(error)
    if frames:
        reader = Y4MReader(io.BytesIO(data))
        h, w = reader.height, reader.width
        assert h * w <= MAX_FRAME_PIXELS
        assert all(f.shape == (h, w, 3) and f.dtype == np.uint8 for f in frames)


@FUZZ
@given(data=st.binary(max_size=400), w=st.integers(1, 7), h=st.integers(1, 7))
def test_raw_reader_any_bytes(data, w, h):
    frames, error = read_all(lambda: RawReader(io.BytesIO(data), w, h))
    size = w * h * 3
    assert len(frames) == len(data) // size
    assert b"".join(f.tobytes() for f in frames) == data[: len(frames) * size]
    if len(data) % size:
        assert error is not None
        one_line(error)
        assert f"frame {len(frames)} at byte {len(frames) * size}: truncated" in str(error)
    else:
        assert error is None


@FUZZ
@given(w=st.integers(-3, 1 << 26), h=st.integers(-3, 1 << 26))
def test_frame_size_bound_before_any_allocation(w, h):
    ok = w >= 1 and h >= 1 and w * h <= MAX_FRAME_PIXELS
    stream = io.BytesIO(b"YUV4MPEG2 W%d H%d\nFRAME\n" % (w, h))  # no frame data: a claim only
    frames, error = read_all(lambda: Y4MReader(stream))
    assert frames == [] and error is not None
    assert ("truncated" in str(error)) == ok, str(error)
    try:
        RawReader(io.BytesIO(b""), w, h)
        raw_ok = True
    except PipeError as exc:
        one_line(exc)
        raw_ok = False
    assert raw_ok == ok
    try:
        parse_frame_size(f"{w}x{h}")
        size_ok = True
    except ValueError:
        size_ok = False
    assert size_ok == ok


# ---- valid streams, then damaged ---------------------------------------------------------------------

@FUZZ
@given(clip=clips(), colorspace=st.sampled_from(WRITABLE), full=st.booleans())
def test_y4m_roundtrip(clip, colorspace, full):
    frames, error = read_all(lambda: Y4MReader(io.BytesIO(y4m_bytes(clip, colorspace, full))))
    assert error is None and len(frames) == len(clip)
    assert all(f.shape == clip.shape[1:] for f in frames)
    if colorspace == "444":  # no chroma loss: only the 8-bit Y'CbCr rounding
        assert np.abs(np.stack(frames).astype(int) - clip).max() <= 3


@FUZZ
@given(clip=clips(), colorspace=st.sampled_from(WRITABLE), how=st.sampled_from(["cut", "flip", "splice"]),
       at=st.floats(0, 1, exclude_max=True), junk=st.binary(min_size=1, max_size=8),
       xor=st.integers(1, 255))
def test_damaged_y4m_loses_nothing_before_the_damage(clip, colorspace, how, at, junk, xor):
    data = y4m_bytes(clip, colorspace, False)
    header = data.index(b"\n") + 1
    frame = (len(data) - header) // len(clip)  # FRAME line + planes
    pos = int(at * len(data))
    if how == "cut":
        damaged = data[:pos]
    elif how == "flip":
        damaged = data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1:]
    else:
        damaged = data[:pos] + junk + data[pos:]
    frames, error = read_all(lambda: Y4MReader(io.BytesIO(damaged)))
    if error is not None:
        one_line(error)
    intact = max(0, (pos - header) // frame)  # frames wholly before the damage
    if pos >= header:
        assert len(frames) >= min(intact, len(clip))
        reference, _ = read_all(lambda: Y4MReader(io.BytesIO(data)))
        for a, b in zip(frames[:intact], reference):
            assert np.array_equal(a, b)
    if how == "cut" and pos >= header:
        assert len(frames) == intact
        if (pos - header) % frame:
            assert error is not None and f"y4m frame {intact} at byte {header + intact * frame}" in str(error)
        else:
            assert error is None


@FUZZ
@given(clip=clips(), cut=st.integers(0, 600))
def test_raw_writer_reader_roundtrip_and_cut(clip, cut):
    buf = io.BytesIO()
    writer = RawWriter(buf)
    for frame in clip:
        writer.write(frame)
    data = buf.getvalue()[:cut] if cut < len(buf.getvalue()) else buf.getvalue()
    h, w = clip.shape[1:3]
    frames, error = read_all(lambda: RawReader(io.BytesIO(data), w, h))
    whole = len(data) // (w * h * 3)
    assert len(frames) == whole and all(np.array_equal(a, b) for a, b in zip(frames, clip))
    assert (error is None) == (len(data) % (w * h * 3) == 0)


# ---- the CLI's stdin: sniffing y4m vs raw ----------------------------------------------------------

@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.one_of(st.binary(max_size=200), y4m_like()),
       size=st.one_of(st.none(), st.tuples(st.integers(1, 6), st.integers(1, 6))))
def test_stdin_sniffing_any_bytes(data, size):
    try:
        source = open_source(None, size, None, stdin=io.BytesIO(data))
        frames = list(source.frames)
    except (InputError, PipeError) as exc:
        one_line(exc)
        return
    assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
