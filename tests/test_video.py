"""Reading clips (PyAV containers, numbered frame folders, single images, gif), writing videos, errors."""

from __future__ import annotations

import numpy as np
import pytest

from sinfusion.io.files import VideoError, write_image, write_video
from sinfusion.synthetic import BLOB_PALETTE, make_sample_clip, write_sample_clip
from sinfusion.video import read_clip, target_size


def indexed_frames(n: int, h: int = 16, w: int = 24) -> np.ndarray:
    """Frames whose flat gray level tells their index (survives lossless PNG exactly)."""
    return np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)])


def write_folder(folder, frames, pattern="frame{}.png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        write_image(folder / pattern.format(i), f)
    return folder


def test_mp4_round_trip_through_pyav(tmp_path):
    frames = make_sample_clip(12, 32, 48)
    path = write_video(tmp_path / "clip.mp4", frames, 12.0)
    clip = read_clip(path)
    assert clip.kind == "container" and clip.fps == pytest.approx(12.0)
    assert clip.frames.shape == (12, 32, 48, 3) and clip.frames.dtype == np.uint8
    assert np.abs(clip.frames.astype(int) - frames).mean() < 6  # H.264 at crf 18: close, not exact
    assert clip.source["original_width"] == 48


def test_gif_is_read_as_a_clip(tmp_path):
    path = write_video(tmp_path / "clip.gif", make_sample_clip(5, 16, 24), 10.0)
    clip = read_clip(path)
    assert clip.frames.shape == (5, 16, 24, 3)


def test_folder_of_numbered_frames_is_sorted_by_number(tmp_path):
    frames = indexed_frames(12)
    folder = write_folder(tmp_path / "f", frames)  # frame0..frame11: "frame10" sorts before "frame2"
    (folder / "notes.txt").write_text("ignored")
    clip = read_clip(folder)
    assert clip.kind == "folder" and clip.frames.shape == (12, 16, 24, 3)
    np.testing.assert_array_equal(clip.frames[:, 0, 0, 0], 10 * np.arange(12))


def test_frame_range_and_stride(tmp_path):
    folder = write_folder(tmp_path / "f", indexed_frames(12))
    clip = read_clip(folder, start=2, end=9, stride=3)
    np.testing.assert_array_equal(clip.frames[:, 0, 0, 0], [20, 50, 80])
    assert clip.fps == pytest.approx(24.0 / 3)  # subsampling in time lowers the frame rate
    video = write_video(tmp_path / "v.mp4", make_sample_clip(10, 16, 24), 12.0)
    assert read_clip(video, start=4).frames.shape[0] == 6
    assert read_clip(video, end=3).frames.shape[0] == 3
    for kwargs in ({"start": -1}, {"start": 3, "end": 3}, {"stride": 0}):
        with pytest.raises(VideoError, match="bad frame range"):
            read_clip(folder, **kwargs)
    with pytest.raises(VideoError, match="no frames in the selected range"):
        read_clip(folder, start=20)


def test_single_image_and_size_rules(tmp_path):
    image = make_sample_clip(1, 200, 300)[0]
    path = write_image(tmp_path / "one.png", image)
    clip = read_clip(path)
    assert clip.kind == "image" and clip.frames.shape == (1, 170, 256, 3)  # long side capped at 256
    assert read_clip(path, max_side=128).frames.shape == (1, 86, 128, 3)  # even sides
    assert read_clip(path, max_side=0).frames.shape == (1, 200, 300, 3)  # cap off
    assert read_clip(path, size=(64, 40)).frames.shape == (1, 40, 64, 3)  # exact size wins
    assert target_size(100, 50) == (100, 50)  # small clips keep their size
    with pytest.raises(VideoError, match="too small"):
        read_clip(path, size=(4, 4))


@pytest.mark.parametrize("name, content, reason", [
    ("missing.mp4", None, "no such file"),
    ("junk.mp4", b"definitely not a video", "not a video PyAV can open"),
    ("empty.mov", b"", "not a video PyAV can open"),
    ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
])
def test_bad_files_name_the_file_and_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        read_clip(path)
    message = str(info.value)
    assert name in message and reason in message and "\n" not in message


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="holds no frames"):
        read_clip(tmp_path / "empty")
    mixed = write_folder(tmp_path / "mixed", indexed_frames(2))
    write_image(mixed / "frame2.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(VideoError, match="frame 2 is 8x8"):
        read_clip(mixed)
    bad = write_folder(tmp_path / "bad", indexed_frames(2))
    (bad / "frame2.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match="frame2.png: not a readable image"):
        read_clip(bad)


def test_write_video_refuses_bad_suffix_and_no_frames(tmp_path):
    with pytest.raises(VideoError, match="unsupported output suffix"):
        write_video(tmp_path / "x.txt", indexed_frames(2), 12.0)
    with pytest.raises(VideoError, match="no frames to write"):
        write_video(tmp_path / "x.mp4", [], 12.0)
    assert not (tmp_path / "x.mp4").exists()  # nothing half-written left behind


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_clip_blobs_cross_in_their_own_lanes_at_steady_speeds(seed):
    """The demo's blobs are what a Predictor conditioned on one frame can learn: each keeps its row
    and its speed (no bob), and no two share a lane or a hue (docs/training.md, the demo's clip)."""
    clip = make_sample_clip(12, 64, 96, seed=seed).astype(np.float64)
    rows, steps = [], []
    for colour in BLOB_PALETTE:
        dist = ((clip - colour) ** 2).sum(-1)  # the blob's centre: nearest its colour, over 5x5 px
        dist = sum(np.roll(dist, (dy, dx), axis=(1, 2)) for dy in range(-2, 3) for dx in range(-2, 3))
        ys, xs = np.unravel_index(dist.reshape(len(clip), -1).argmin(axis=1), dist.shape[1:])
        assert np.ptp(ys) <= 1, f"blob {colour} leaves its lane: rows {ys}"
        moves = (np.diff(xs) + 48) % 96 - 48  # across the wrap at the edges
        assert abs(np.median(moves)) >= 1 and np.ptp(moves) <= 2, f"blob {colour}: steps {moves}"
        rows.append(ys.mean())
        steps.append(np.median(moves))
    assert min(np.diff(sorted(rows))) >= 10  # lanes apart: no two blobs ever overlap
    assert len(set(steps)) == 3  # and every blob its own speed


def test_sample_clip_is_deterministic_and_moves(tmp_path):
    a, b = make_sample_clip(8, 32, 48, seed=1), make_sample_clip(8, 32, 48, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, make_sample_clip(8, 32, 48, seed=2))
    diffs = np.abs(np.diff(a.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (diffs > 1).all()  # every frame differs from the last: there is motion to learn
    assert a.std() > 20  # and texture, not a flat image
    clip = read_clip(write_sample_clip(tmp_path / "s.mp4", frames=8, height=32, width=48, seed=1))
    assert clip.frames.shape == (8, 32, 48, 3) and clip.fps == pytest.approx(12.0)
    with pytest.raises(ValueError, match="at least 8x8"):
        make_sample_clip(4, 4, 4)
