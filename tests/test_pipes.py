"""sinfusion.io.pipes: raw RGB24 and y4m readers/writers, checked against a real ffmpeg binary."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest

from sinfusion.io.pipes import (
    PipeError,
    RawReader,
    RawWriter,
    Y4MReader,
    Y4MWriter,
    parse_frame_size,
    parse_size,
    parse_y4m_header,
    rgb_to_yuv,
    sniff,
    yuv_to_rgb,
)
from tests.conftest import tiny_clip


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(ffmpeg: str, args: list[str], stdin: bytes = b"") -> bytes:
    proc = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", *args], input=stdin,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def smooth_clip(n: int = 3, h: int = 16, w: int = 24) -> np.ndarray:
    """Colour gradients: 4:2:0 subsampling changes them by little, so tolerances stay tight."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [np.stack([40 + xx * 4 + i * 5, 30 + yy * 6, 200 - xx * 3 - yy * 2], -1) for i in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_bt601_roundtrip_is_close_in_both_ranges():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for full in (False, True):
        y, cb, cr = rgb_to_yuv(rgb, full)
        q = [np.clip(p + 0.5, 0, 255).astype(np.uint8) for p in (y, cb, cr)]
        back = yuv_to_rgb(*q, full)
        assert np.abs(back.astype(int) - rgb).max() <= 3
    # Limited range: black and white land on 16 and 235, neutral chroma on 128.
    y, cb, cr = rgb_to_yuv(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    assert np.allclose(y, [[16, 235]]) and np.allclose(cb, 128) and np.allclose(cr, 128)


@pytest.mark.parametrize("colorspace", ["444", "420jpeg", "422", "mono"])
def test_y4m_writer_reader_roundtrip(colorspace):
    clip = smooth_clip()
    if colorspace == "mono":
        clip = np.repeat(clip[..., :1], 3, axis=-1)  # grey frames survive a mono stream
    buf = io.BytesIO()
    writer = Y4MWriter(buf, 30000 / 1001, colorspace=colorspace)
    for f in clip:
        writer.write(f)
    buf.seek(0)
    reader = Y4MReader(buf)
    assert (reader.width, reader.height) == (24, 16)
    assert reader.header.rate.numerator == 30000 and reader.header.rate.denominator == 1001
    out = np.stack(list(reader))
    assert out.shape == clip.shape
    assert np.abs(out.astype(int) - clip).max() <= (3 if colorspace in ("444", "mono") else 12)


def test_y4m_odd_size_420():
    clip = smooth_clip(2, 7, 9)
    buf = io.BytesIO()
    w = Y4MWriter(buf, 10, colorspace="420jpeg")
    for f in clip:
        w.write(f)
    # 9x7 luma, 5x4 chroma planes (sizes round up)
    assert len(buf.getvalue()) == len(w.header.encode()) + 2 * (6 + 63 + 2 * 20)
    buf.seek(0)
    assert np.stack(list(Y4MReader(buf))).shape == clip.shape


@pytest.mark.parametrize("pix_fmt,token", [("yuv420p", "C420"), ("yuv444p", "C444"),
                                           ("yuv422p", "C422"), ("gray", "Cmono")])
def test_reads_ffmpeg_y4m_like_ffmpeg_decodes_it(ffmpeg, pix_fmt, token):
    """ffmpeg encodes RGB into y4m; our reader must give back what ffmpeg itself decodes to RGB."""
    clip = smooth_clip()
    y4m = run_ffmpeg(ffmpeg, ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "24x16", "-r", "12", "-i", "-",
                              "-pix_fmt", pix_fmt, "-f", "yuv4mpegpipe", "-"], clip.tobytes())
    assert b" " + token.encode() in y4m.split(b"\n", 1)[0]
    rgb = run_ffmpeg(ffmpeg, ["-f", "yuv4mpegpipe", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                     y4m)
    expected = np.frombuffer(rgb, np.uint8).reshape(-1, 16, 24, 3)
    ours = np.stack(list(Y4MReader(io.BytesIO(y4m))))
    assert ours.shape == expected.shape == (3, 16, 24, 3)
    diff = np.abs(ours.astype(int) - expected)
    # ffmpeg interpolates chroma, we replicate it: per-pixel differences stay small on gradients
    worst = 1 if pix_fmt in ("yuv444p", "gray") else 4
    assert diff.mean() < 1.5 and diff.max() <= worst, (diff.mean(), diff.max())


@pytest.mark.parametrize("colorspace", ["444", "420jpeg"])
def test_ffmpeg_reads_our_y4m(ffmpeg, colorspace):
    clip = smooth_clip()
    buf = io.BytesIO()
    w = Y4MWriter(buf, 12, colorspace=colorspace)
    for f in clip:
        w.write(f)
    rgb = run_ffmpeg(ffmpeg, ["-f", "yuv4mpegpipe", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                     buf.getvalue())
    back = np.frombuffer(rgb, np.uint8).reshape(clip.shape)
    diff = np.abs(back.astype(int) - clip)
    mean, worst = (1.0, 2) if colorspace == "444" else (3.0, 8)  # ffmpeg's swscale rounds its own way
    assert diff.mean() < mean and diff.max() <= worst, (diff.mean(), diff.max())


def test_full_range_header_is_honoured():
    header = parse_y4m_header(b"YUV4MPEG2 W4 H2 F25:1 C444 XCOLORRANGE=FULL\n")
    assert header.full_range and header.fps == 25.0
    frame = b"FRAME\n" + bytes([255] * 8 + [128] * 16)
    data = header.encode() + frame
    out = next(iter(Y4MReader(io.BytesIO(data))))
    assert (out == 255).all()  # full-range Y=255 is white; limited range would clip the same way,
    limited = parse_y4m_header(b"YUV4MPEG2 W4 H2 C444\n")
    assert not limited.full_range and limited.rate is None and limited.colorspace == "444"
    grey = next(iter(Y4MReader(io.BytesIO(limited.encode() + b"FRAME\n" + bytes([126] * 8 + [128] * 16)))))
    assert abs(int(grey[0, 0, 0]) - round((126 - 16) * 255 / 219)) <= 1  # ...but not mid-grey


def test_truncated_y4m_names_frame_and_byte():
    buf = io.BytesIO()
    w = Y4MWriter(buf, 12, colorspace="420jpeg")
    for f in smooth_clip():
        w.write(f)
    data = buf.getvalue()
    header = len(w.header.encode())
    per_frame = 6 + 24 * 16 * 3 // 2
    cut = data[: header + 2 * per_frame + 100]
    reader = Y4MReader(io.BytesIO(cut))
    with pytest.raises(PipeError) as err:
        list(reader)
    msg = str(err.value)
    assert "frame 2" in msg and f"byte {header + 2 * per_frame}" in msg and "truncated" in msg
    assert "\n" not in msg
    # inside a FRAME line
    with pytest.raises(PipeError, match="frame 1 .*inside the FRAME line"):
        list(Y4MReader(io.BytesIO(data[: header + per_frame + 3])))
    # exactly at a frame boundary: a normal end
    assert len(list(Y4MReader(io.BytesIO(data[: header + per_frame])))) == 1


@pytest.mark.parametrize("data,match", [
    (b"", "empty stream"),
    (b"YUV4MPEG2 W24 H16", "ends inside the y4m header"),
    (b"YUV4MPEG2 W24\n", "H must be a positive integer"),
    (b"YUV4MPEG2 W0 H16\n", "W must be a positive integer"),
    (b"YUV4MPEG2 W24 H16 C420p10\n", "C420p10 is not supported"),
    (b"YUV4MPEG2 W2 H2 F3x\n", "F must be"),
    (b"YUV4MPEG2 W2 H2 C444\nFRAMX\n" + bytes(12), "frame 0 at byte 21: expected a 'FRAME' line"),
    (b"RIFF1234" + bytes(10000), "must start with 'YUV4MPEG2 '"),
    # sizes and rates a header only claims: refused before any buffer is allocated or float overflows
    (b"YUV4MPEG2 W100000 H100000 F25:1\nFRAME\n", r"100000x100000 is 10000000000 pixels, over the limit"),
    (b"YUV4MPEG2 W2 H2 F" + b"9" * 400 + b":1\n", r"at most 9 digits each, got '9999.*\.\.\. \(402 characters\)"),
    (b"YUV4MPEG2 W" + b"9" * 4000 + b" H2\n", r"W must be a positive integer, got '9999.*\(4000 characters\)"),
])
def test_malformed_y4m(data, match):
    with pytest.raises(PipeError, match=match):
        list(Y4MReader(io.BytesIO(data)))


def test_raw_reader_writer_and_truncation():
    clip = tiny_clip(3)
    buf = io.BytesIO()
    w = RawWriter(buf)
    for f in clip:
        w.write(f)
    data = buf.getvalue()
    assert data == clip.tobytes()
    assert np.array_equal(np.stack(list(RawReader(io.BytesIO(data), 24, 16))), clip)
    with pytest.raises(PipeError, match=r"frame 2 at byte 2304: truncated, got 5 of 1152 bytes"):
        list(RawReader(io.BytesIO(data[: 2 * 1152 + 5]), 24, 16))
    with pytest.raises(ValueError, match="frame 3 is 8x8"):
        w.write(np.zeros((8, 8, 3), np.uint8))


def test_sniff_keeps_every_byte():
    y4m = b"YUV4MPEG2 W2 H2 C444\nFRAME\n" + bytes(12)
    is_y4m, source = sniff(io.BytesIO(y4m))
    assert is_y4m and len(list(Y4MReader(source))) == 1
    raw = bytes(range(24))
    is_y4m, source = sniff(io.BytesIO(raw))
    assert not is_y4m
    frames = list(RawReader(source, 2, 2))
    assert b"".join(f.tobytes() for f in frames) == raw
    is_y4m, source = sniff(io.BytesIO(b"abc"))  # shorter than the magic
    assert not is_y4m and source.read(10) == b"abc"


def test_parse_size():
    assert parse_size("256x144") == (256, 144) and parse_size("8X8") == (8, 8)
    for bad in ("256", "0x4", "ax4", "4x-1", ""):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    assert parse_frame_size("4096x4096") == (4096, 4096)
    with pytest.raises(ValueError, match="4097x4096 is 16781312 pixels, over the limit of 16777216"):
        parse_frame_size("4097x4096")
    with pytest.raises(PipeError, match="stdin: raw RGB24 frame size 100000x100000 .* over the limit"):
        RawReader(io.BytesIO(b""), 100000, 100000)
