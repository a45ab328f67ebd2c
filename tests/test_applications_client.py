"""Project and Summarize from the Python clients (sync and asyncio) and the `sinfusion` CLI, against a
real server on loopback; the CLI runs in process with PNG/JPEG files and y4m/raw pipes."""

from __future__ import annotations

import asyncio
import io
import sys
from contextlib import aclosing

import grpc
import numpy as np
import pytest

from sinfusion.clients import AsyncClient, Client, ClientError, Sampling
from sinfusion.clients.cli import main
from sinfusion.io.files import write_image
from sinfusion.io.pipes import RawWriter, Y4MReader, Y4MWriter
from sinfusion.video import read_clip
from tests.conftest import bundles_folder, tiny_clip, wait_until

H, W = 16, 24
FAST = Sampling(steps=2, method="ddim", seed=3)
FAST_ARGS = ["--steps", "2", "--method", "ddim", "--seed", "3"]
IMAGE = tiny_clip(1, H, W, seed=5)[0]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return bundles_folder(tmp_path_factory.mktemp("models"), still={"roles": ("projector",), "seed": 1},
                          nopro={"roles": ("predictor",), "seed": 2})


@pytest.fixture(scope="module")
def server_settings() -> dict:
    return {"max_frames": 8, "grace": 0.5}


@pytest.fixture(scope="module")
def address(running) -> str:
    return running.target


# --- Python clients ---------------------------------------------------------------------------------

def test_sync_project_and_summarize(address):
    with Client(address) as client:
        [result] = client.project("still", IMAGE, 0.5, sampling=FAST)
        assert result.image.shape == (H, W, 3) and result.synthesized and result.noise_level == 0
        steps = list(client.project("still", IMAGE, 0.5, sampling=FAST, intermediate_steps=True))
        assert [f.noise_level for f in steps][-1] == 0 and len(steps) == 3
        assert steps[0].noise_level > steps[1].noise_level > 0
        np.testing.assert_array_equal(steps[-1].image, result.image)
        [same] = client.project("still", IMAGE, 0.0)
        np.testing.assert_array_equal(same.image, IMAGE)
        assert not same.synthesized
        summary = list(client.summarize("still", IMAGE, [0.75, 0.5], axes="width", sampling=FAST))
        assert [(f.width, f.height) for f in summary] == [(18, 16), (12, 16)]
        with pytest.raises(ClientError) as info:
            list(client.project("nopro", IMAGE))
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(ValueError, match="axes must be one of both, width, height"):
            client.summarize("still", IMAGE, [0.5], axes="diagonal")


def test_leaving_a_summary_early_cancels_it_on_the_server(running, address):
    with Client(address) as client:
        frames = client.summarize("still", IMAGE, [1.0] * 8, strength=1.0)  # DDPM, 50 steps each
        assert next(frames).index == 0
        frames.close()
        wait_until(lambda: running.live_streams == 0 and running.models["still"].scheduler.held == 0)


def test_async_project_and_summarize(running, address):
    async def go():
        async with AsyncClient(address) as client:
            got = [f async for f in client.project("still", IMAGE, 0.5, sampling=FAST)]
            summary = [f async for f in client.summarize("still", IMAGE, [0.5], sampling=FAST)]
            async with aclosing(client.summarize("still", IMAGE, [1.0] * 8, strength=1.0)) as long:
                async for frame in long:
                    assert frame.index == 0
                    break
            return got, summary

    got, summary = asyncio.run(go())
    assert len(got) == 1 and got[0].image.shape == (H, W, 3)
    assert [(f.width, f.height) for f in summary] == [(12, 8)]
    wait_until(lambda: running.live_streams == 0 and running.models["still"].scheduler.held == 0)


# --- the CLI --------------------------------------------------------------------------------------

class Stdin:
    """Stands in for sys.stdin: a pipe of bytes."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def sinfusion(address, *args, stdin: bytes | None = None, monkeypatch=None) -> int:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", Stdin(stdin))
    return main(["--address", address, *map(str, args)])


def image_at(path) -> np.ndarray:
    return read_clip(path, max_side=0).frames[0]


def test_cli_project_png_in_jpeg_and_png_out(address, tmp_path, capsys):
    big = np.repeat(np.repeat(IMAGE, 2, axis=0), 2, axis=1)
    write_image(tmp_path / "edit.png", big)
    assert sinfusion(address, "project", "--model", "still", "--strength", "0.5", *FAST_ARGS,
                     "-i", tmp_path / "edit.png", "-o", tmp_path / "out.jpg") == 0
    assert image_at(tmp_path / "out.jpg").shape == (H, W, 3)
    assert "input is 48x32, model 'still' takes 24x16" in capsys.readouterr().err
    assert sinfusion(address, "project", "--model", "still", *FAST_ARGS, "--output-size", "input",
                     "-i", tmp_path / "edit.png", "-o", tmp_path / "back.png") == 0
    assert image_at(tmp_path / "back.png").shape == (2 * H, 2 * W, 3)


def test_cli_project_intermediate_steps_to_a_pattern(address, tmp_path):
    write_image(tmp_path / "in.png", IMAGE)
    assert sinfusion(address, "project", "--model", "still", "--intermediate-steps", *FAST_ARGS,
                     "-i", tmp_path / "in.png", "-o", tmp_path / "step-%02d.png") == 0
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00.png", "step-01.png", "step-02.png"]


def test_cli_projects_every_frame_of_a_y4m_pipe(address, monkeypatch, capsysbinary):
    clip = tiny_clip(3, H, W)
    pipe = io.BytesIO()
    writer = Y4MWriter(pipe, 12.0)
    for frame in clip:
        writer.write(frame)
    assert sinfusion(address, "project", "--model", "still", *FAST_ARGS, stdin=pipe.getvalue(),
                     monkeypatch=monkeypatch) == 0
    frames = list(Y4MReader(io.BytesIO(capsysbinary.readouterr().out)))
    assert len(frames) == 3 and frames[0].shape == (H, W, 3)


def test_cli_project_raw_in_raw_out(address, monkeypatch, capsysbinary):
    pipe = io.BytesIO()
    RawWriter(pipe).write(IMAGE)
    assert sinfusion(address, "project", "--model", "still", "--strength", "0", "--size", f"{W}x{H}",
                     "--format", "raw", stdin=pipe.getvalue(), monkeypatch=monkeypatch) == 0
    assert capsysbinary.readouterr().out == IMAGE.tobytes()  # strength 0: the image itself


def test_cli_summarize_to_images_and_to_a_y4m_pipe(address, tmp_path, capsysbinary):
    write_image(tmp_path / "in.png", IMAGE)
    assert sinfusion(address, "summarize", "--model", "still", "--scales", "0.75,0.5", *FAST_ARGS,
                     "-i", tmp_path / "in.png", "-o", tmp_path / "s-%d.png") == 0
    assert [image_at(tmp_path / f"s-{i}.png").shape for i in (0, 1)] == [(12, 18, 3), (8, 12, 3)]
    capsysbinary.readouterr()
    assert sinfusion(address, "summarize", "--model", "still", "--scales", "0.5", *FAST_ARGS,
                     "-i", tmp_path / "in.png") == 0
    out = capsysbinary.readouterr()
    [frame] = list(Y4MReader(io.BytesIO(out.out)))
    assert frame.shape == (H, W, 3)  # centred on a model-size canvas
    assert frame[0, 0].max() <= 2  # the black border
    assert b"centred on a black 24x16 canvas" in out.err


@pytest.mark.parametrize("args, code, message", [
    (["summarize", "--model", "still", "-o", "{t}/s.png"], 2,
     "{t}/s.png holds one image but summarize makes several here: give a numbered pattern such as "
     "{t}/s-%03d.png"),
    (["project", "--model", "still", "--intermediate-steps", "-o", "{t}/p.png"], 2,
     "holds one image but project makes several"),
    (["project", "--model", "still", "--strength", "2", "-o", "{t}/p.png"], 2,
     "argument --strength: must be a number in [0, 1], got '2'"),
    (["summarize", "--model", "still", "--scales", "0.5,0", "-o", "{t}/p.png"], 2,
     "argument --scales: must be comma-separated numbers in (0, 1], got '0'"),
    (["summarize", "--model", "still", "--scales", "0.1", "-o", "{t}/p.png"], 103,
     "server error INVALID_ARGUMENT: scales[0] = 0.1 makes 2x2 of 24x16; each side must be at least 8 px"),
    (["project", "--model", "nopro", "-o", "{t}/p.png"], 109,
     "model 'nopro' cannot project: it needs a Projector (has: predictor)"),
    (["project", "--model", "still", "-o", "{t}/no/p.png"], 4, "folder {t}/no does not exist"),
    (["project", "--model", "still", "--correction-steps", "2", "-o", "{t}/p.png"], 2,
     "unrecognized arguments: --correction-steps"),
    (["extrapolate", "--model", "still", "--frames", "1", "-o", "{t}/p.png"], 4,
     "unsupported output suffix .png"),
])
def test_cli_errors_are_one_line_with_their_exit_code(address, tmp_path, capsys, args, code, message):
    write_image(tmp_path / "in.png", IMAGE)
    args = [a.format(t=tmp_path) for a in args]
    if args[0] != "extrapolate":
        args += ["-i", str(tmp_path / "in.png")]
    try:
        rc = sinfusion(address, *args)
    except SystemExit as exc:  # argparse's own exit
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code and message.format(t=tmp_path) in err and err.count("\n") == 1, err


def test_cli_second_image_to_a_plain_name_is_an_output_error(address, tmp_path, capsys, monkeypatch):
    pipe = io.BytesIO()
    writer = Y4MWriter(pipe, 12.0)
    for frame in tiny_clip(2, H, W):
        writer.write(frame)
    rc = sinfusion(address, "project", "--model", "still", *FAST_ARGS, "-o", tmp_path / "one.png",
                   stdin=pipe.getvalue(), monkeypatch=monkeypatch)
    assert rc == 4 and "one.png holds one image but a second one came" in capsys.readouterr().err
    assert (tmp_path / "one.png").is_file()
