"""The client library and CLI against a real `sinfusion-server` subprocess and a real ffmpeg binary.

One server (torch-cpu, tiny random bundles, a bearer token) serves the whole module; sampling uses DDIM
with 3 steps and 1 correction step so that each frame costs milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sinfusion.clients import AsyncClient, Client, ClientError, Sampling
from sinfusion.clients.cli import EXIT_INPUT, EXIT_OK
from sinfusion.server.process import ServerStartError, start_server_process, stop_server_process
from tests.conftest import make_tiny_bundle, tiny_clip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token"
FAST = Sampling(steps=3, method="ddim", correction_steps=1, seed=7)
FAST_ARGS = ["--method", "ddim", "--steps", "3", "--correction-steps", "1", "--seed", "7"]
H, W = 16, 24
# The CLI runs as users run it: with buffered stdout, so the tests see whether it flushes frame by frame.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_bundle(root / "tiny", height=H, width=W)
    make_tiny_bundle(root / "still", roles=("projector",), height=H, width=W)  # no interpolator
    return root


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    yield from start_server(models, tmp_path_factory.mktemp("served"), "--token", TOKEN)


def start_server(models: Path, root: Path, *flags: str):
    """Run the real server on a free loopback port; yields its address; SIGTERM at the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SINFUSION_TOKEN": ""}
    args = ["--models", models, "--host", "127.0.0.1", "--port", "0", "--runtime", "torch-cpu",
            "--grace", "1", "--log-level", "warning", *flags]
    try:
        proc, port = start_server_process(args, root / "port", cwd=ROOT, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    yield f"127.0.0.1:{port}"
    stop_server_process(proc)


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()


def cli_cmd(server: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "sinfusion.clients", "--address", server, "--token", TOKEN, *args]


def cli(server: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(server, *args), input=stdin, capture_output=True, cwd=ROOT, timeout=120,
                          env=CLI_ENV)


def ffmpeg_y4m(ffmpeg: str, clip: np.ndarray, rate: int = 12, pix_fmt: str = "yuv420p") -> bytes:
    """ffmpeg turns raw RGB frames into a y4m stream (the way users feed the CLI)."""
    n, h, w, _ = clip.shape
    proc = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                           "-s", f"{w}x{h}", "-r", str(rate), "-i", "-", "-pix_fmt", pix_fmt,
                           "-f", "yuv4mpegpipe", "-"], input=clip.tobytes(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def probe(path: Path) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of a video file, decoded by PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, float(stream.average_rate or 0)


# ---- the library -------------------------------------------------------------------------------

def test_list_and_describe(server):
    with Client(server, token=TOKEN) as client:
        models = client.list_models()
        assert [m.name for m in models] == ["still", "tiny"]
        tiny = client.describe_model("tiny")
        assert (tiny.width, tiny.height, tiny.frame_count) == (W, H, 8)
        assert set(tiny.capabilities) == {"extrapolate", "generate", "upsample"}
        assert tiny.runtime == "torch-cpu" and tiny.schedule_steps == 50
        with pytest.raises(ClientError) as err:
            client.describe_model("nope")
        assert err.value.code.name == "NOT_FOUND" and "nope" in err.value.details


def test_health_needs_no_token(server):
    with Client(server) as client:
        assert client.health() == "SERVING" and client.health("sinfusion.v1.SinFusion") == "SERVING"
    proc = subprocess.run([sys.executable, "-m", "sinfusion.clients", "--address", server, "health"], capture_output=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.decode().strip() == "SERVING", proc.stderr.decode()
    proc = subprocess.run([sys.executable, "-m", "sinfusion.clients", "--address", server, "health", "--service", "nope"],
                          capture_output=True, cwd=ROOT, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 105, err  # grpc health: NOT_FOUND for an unknown service
    assert err == f"sinfusion: health: the server at {server} does not know service 'nope' (NOT_FOUND)\n"
    assert proc.stdout == b""


def test_token_is_required(server):
    with Client(server) as client, pytest.raises(ClientError) as err:
        client.list_models()
    assert err.value.code.name == "UNAUTHENTICATED"
    with Client(server, token="wrong") as client, pytest.raises(ClientError) as err:
        list(client.generate("tiny", 1, FAST))
    assert err.value.code.name == "UNAUTHENTICATED"


def test_generate_and_extrapolate_frames(server):
    with Client(server, token=TOKEN) as client:
        frames = list(client.generate("tiny", 3, FAST))
        assert [f.index for f in frames] == [0, 1, 2]
        assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 and f.synthesized for f in frames)
        again = list(client.generate("tiny", 3, FAST))
        assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again))  # same seed, same frames
        back = list(client.extrapolate("tiny", 2, step=-1, start_frame=5, sampling=FAST))
        assert len(back) == 2
        own = list(client.extrapolate("tiny", 2, start_image=tiny_clip(1, 32, 48)[0], sampling=FAST))
        assert len(own) == 2 and all(f.resized for f in own)  # 48x32 sent, resized to 24x16
        with pytest.raises(ClientError) as err:
            list(client.extrapolate("tiny", 2, start_frame=99, sampling=FAST))
        assert err.value.code.name == "INVALID_ARGUMENT" and "start_frame" in err.value.details


def test_leaving_a_stream_early_is_clean(server):
    with Client(server, token=TOKEN) as client:
        stream = client.generate("tiny", 500, FAST)
        first = next(stream)
        stream.close()  # cancels the call; the server stops the stream at its next step
        assert first.index == 0
        assert len(list(client.generate("tiny", 1, FAST))) == 1  # the channel is still usable


def test_upsample_streams_frames_back(server):
    clip = tiny_clip(4, H, W)
    with Client(server, token=TOKEN) as client:
        out = list(client.upsample("tiny", iter(clip), 4, sampling=FAST))
    assert len(out) == (len(clip) - 1) * 4 + 1
    assert [f.synthesized for f in out[:5]] == [False, True, True, True, False]
    assert np.array_equal(out[0].image, clip[0]) and np.array_equal(out[-1].image, clip[-1])


def test_upsample_input_failure_is_raised(server):
    class Broken(Exception):
        pass

    def frames():
        yield tiny_clip(1, H, W)[0]
        raise Broken("input broke after frame 0")

    with Client(server, token=TOKEN) as client, pytest.raises(Broken, match="after frame 0"):
        list(client.upsample("tiny", frames(), 2, sampling=FAST))


def test_upsample_without_interpolator_is_failed_precondition(server):
    with Client(server, token=TOKEN) as client, pytest.raises(ClientError) as err:
        list(client.upsample("still", iter(tiny_clip(2, H, W)), 2, sampling=FAST))
    assert err.value.code.name == "FAILED_PRECONDITION"


def test_async_client(server):
    async def main():
        async with AsyncClient(server, token=TOKEN) as client:
            names = [m.name for m in await client.list_models()]
            gen = [f async for f in client.generate("tiny", 2, FAST)]

            async def frames():
                for f in tiny_clip(3, H, W):
                    await asyncio.sleep(0)
                    yield f

            up = [f async for f in client.upsample("tiny", frames(), 2, sampling=FAST)]
            try:
                await client.describe_model("nope")
            except ClientError as exc:
                code = exc.code.name
            return names, gen, up, code

    names, gen, up, code = asyncio.run(main())
    assert names == ["still", "tiny"] and code == "NOT_FOUND"
    assert [f.index for f in gen] == [0, 1] and gen[0].image.shape == (H, W, 3)
    assert len(up) == 5 and [f.synthesized for f in up] == [False, True, False, True, False]
    with Client(server, token=TOKEN) as client:  # the sync client gives the same seeded frames
        assert np.array_equal(next(client.generate("tiny", 1, FAST)).image, gen[0].image)


def test_async_upsample_input_failure_and_early_close(server):
    async def main():
        async with AsyncClient(server, token=TOKEN) as client:
            async def frames():
                yield tiny_clip(1, H, W)[0]
                raise KeyError("camera unplugged")

            try:
                [f async for f in client.upsample("tiny", frames(), 2, sampling=FAST)]
            except KeyError as exc:
                failure = str(exc)
            stream = client.generate("tiny", 500, FAST)
            first = await anext(stream)
            await stream.aclose()  # cancels the call
            after = [f.index async for f in client.generate("tiny", 2, FAST)]
            return failure, first.index, after

    assert asyncio.run(main()) == ("'camera unplugged'", 0, [0, 1])


# ---- the CLI with ffmpeg -------------------------------------------------------------------------

def test_cli_models(server):
    proc = cli(server, "models")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["NAME", "SIZE", "FPS"] and lines[2].split()[:2] == ["tiny", "24x16"]


def test_cli_server_errors_have_distinct_codes(server):
    cases = [(["models", "nope"], 105, "NOT_FOUND"),
             (["extrapolate", "--model", "tiny", "--frames", "2", "--step", "9", "--format", "raw"], 103,
              "step must be in"),
             (["upsample", "--model", "still", "--factor", "2", "--size", f"{W}x{H}"], 109, "FAILED_PRECONDITION")]
    for args, code, text in cases:
        proc = cli(server, *args, stdin=tiny_clip(2, H, W).tobytes())
        err = proc.stderr.decode()
        assert proc.returncode == code and text in err and err.count("\n") == 1, (args, proc.returncode, err)
    proc = subprocess.run([sys.executable, "-m", "sinfusion.clients", "--address", server, "models"], capture_output=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 116 and "UNAUTHENTICATED" in proc.stderr.decode()


def raw_pipeline(server: str, ffmpeg: str, clip: np.ndarray, mp4: Path, *flags: str) -> tuple[int, str]:
    """The README's pipeline: ffmpeg -f rawvideo | sinfusion upsample --size WxH --format raw | ffmpeg
    -f rawvideo -s WxH (the input's size on both sides) -> mp4; (the CLI's exit code, its stderr)."""
    _, h, w, _ = clip.shape
    src = subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                            "-s", f"{w}x{h}", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    mid = subprocess.Popen(cli_cmd(server, "upsample", "--model", "tiny", "--factor", "2", "--size", f"{w}x{h}",
                                   "--format", "raw", *FAST_ARGS, *flags),
                           stdin=src.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=CLI_ENV)
    dst = subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt",
                            "rgb24", "-s", f"{w}x{h}", "-r", "24", "-i", "-", "-pix_fmt", "yuv420p", str(mp4)],
                           stdin=mid.stdout, stderr=subprocess.PIPE)
    src.stdout.close()
    mid.stdout.close()  # the pipes now belong to the processes they connect
    src.communicate(clip.tobytes(), timeout=60)
    _, mid_err = mid.communicate(timeout=120)
    _, dst_err = dst.communicate(timeout=60)
    if mid.returncode == 0:
        assert dst.returncode == 0, dst_err.decode()
    return mid.returncode, mid_err.decode()


def test_ffmpeg_raw_in_cli_raw_out_ffmpeg_mp4(server, ffmpeg, tmp_path):
    """ffmpeg -f rawvideo | sinfusion upsample --size | ffmpeg -f rawvideo -> mp4 of the right length."""
    mp4 = tmp_path / "up.mp4"
    code, err = raw_pipeline(server, ffmpeg, tiny_clip(4, H, W), mp4)
    assert code == 0, err
    assert probe(mp4)[:3] == (7, W, H)
    assert "resizes" not in err and "stdout: raw" not in err  # the size is the input's, the user's --size


def test_raw_pipeline_with_a_clip_of_another_size(server, ffmpeg, tmp_path):
    """Raw output of another size than the input's would be misread downstream: refused until
    --output-size says which; --output-size input gives frames of the input's size, as ffmpeg reads them."""
    clip = tiny_clip(4, H * 2, W * 2)
    code, err = raw_pipeline(server, ffmpeg, clip, tmp_path / "refused.mp4")
    assert code == 2, err
    assert err.count("\n") == 1 and "raw RGB24 output would be 24x16, the size of model 'tiny', but the input " \
                                    "is 48x32" in err
    mp4 = tmp_path / "up.mp4"
    code, err = raw_pipeline(server, ffmpeg, clip, mp4, "--output-size", "input")
    assert code == 0, err
    assert probe(mp4)[:3] == (7, W * 2, H * 2)
    assert "the server resizes input frames from 48x32 to 24x16 by --resize resize" in err
    assert "output frames are resized back to 48x32 here" in err


def test_y4m_of_another_size_is_announced(server, ffmpeg):
    up = cli(server, "upsample", "--model", "tiny", "--factor", "2", *FAST_ARGS,
             stdin=ffmpeg_y4m(ffmpeg, tiny_clip(2, H * 2, W * 2), pix_fmt="yuv444p"))
    err = up.stderr.decode()
    assert up.returncode == 0, err
    assert up.stdout.startswith(b"YUV4MPEG2 W24 H16 ")  # the model's size, as the notice says
    assert ("input is 48x32, model 'tiny' takes 24x16: the server resizes input frames from 48x32 to 24x16 by "
            "--resize resize (Lanczos, aspect ratio not kept; --resize refuse refuses them); output is 24x16") in err


def test_ffmpeg_y4m_in_cli_y4m_out_ffmpeg_mp4(server, ffmpeg, tmp_path):
    """ffmpeg -f yuv4mpegpipe | sinfusion upsample (no size flags) | ffmpeg -i - out.mp4."""
    y4m = ffmpeg_y4m(ffmpeg, tiny_clip(3, H, W), rate=12)
    up = cli(server, "upsample", "--model", "tiny", "--factor", "4", *FAST_ARGS, "--chroma", "420", stdin=y4m)
    assert up.returncode == 0, up.stderr.decode()
    assert up.stdout.startswith(b"YUV4MPEG2 W24 H16 F48:1 ")  # 12 fps x 4
    mp4 = tmp_path / "up.mp4"
    enc = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "yuv4mpegpipe", "-i", "-",
                          str(mp4)], input=up.stdout, capture_output=True, timeout=60)
    assert enc.returncode == 0, enc.stderr.decode()
    assert probe(mp4) == (9, W, H, 48.0)


def test_cli_files_in_and_out(server, ffmpeg, tmp_path):
    """--input any container, --output by suffix (mp4 via PyAV, y4m), extrapolate from the input."""
    src = tmp_path / "in.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                    f"{W * 2}x{H * 2}", "-r", "10", "-i", "-", "-pix_fmt", "yuv420p", str(src)],
                   input=tiny_clip(3, H * 2, W * 2).tobytes(), check=True, timeout=60)
    out = tmp_path / "up.mp4"
    proc = cli(server, "upsample", "--model", "tiny", "--factor", "2", "-i", str(src), "-o", str(out), *FAST_ARGS)
    assert proc.returncode == 0, proc.stderr.decode()
    assert probe(out) == (5, W, H, 20.0)
    gen = tmp_path / "gen.y4m"
    proc = cli(server, "generate", "--model", "tiny", "--frames", "3", "-o", str(gen), *FAST_ARGS)
    assert proc.returncode == 0 and probe(gen)[:3] == (3, W, H)
    ex = tmp_path / "ex.mp4"
    proc = cli(server, "extrapolate", "--model", "tiny", "--frames", "4", "--start-from-input", "--step", "2",
               "-o", str(ex), *FAST_ARGS, stdin=ffmpeg_y4m(ffmpeg, tiny_clip(2, H, W)))
    assert proc.returncode == 0, proc.stderr.decode()
    assert probe(ex)[:3] == (4, W, H)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_raw_output_without_input_states_its_size(server):
    proc = cli(server, "generate", "--model", "tiny", "--frames", "2", "--format", "raw", *FAST_ARGS)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and len(proc.stdout) == 2 * W * H * 3, err
    assert err.splitlines()[0] == ("sinfusion: stdout: raw RGB24 frames of 24x16 at 12 fps (read with -f rawvideo "
                                   "-pix_fmt rgb24 -s 24x16 -r 12)")


def test_broken_downstream_pipe_ends_cleanly(server):
    proc = subprocess.Popen(cli_cmd(server, "generate", "--model", "tiny", "--frames", "1000", "--format", "raw",
                                    *FAST_ARGS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=CLI_ENV)
    first = proc.stdout.read(W * H * 3)  # one frame, then the reader goes away
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert len(first) == W * H * 3
    assert proc.returncode == EXIT_OK, err.decode()
    assert "Traceback" not in err.decode() and "downstream closed the pipe" in err.decode()


def test_truncated_y4m_stream(server, ffmpeg):
    y4m = ffmpeg_y4m(ffmpeg, tiny_clip(3, H, W))
    header = y4m.index(b"\n") + 1
    frame = 6 + W * H * 3 // 2
    cut = y4m[: header + 2 * frame + 50]  # frame 2 ends early
    proc = cli(server, "upsample", "--model", "tiny", "--factor", "2", "--format", "raw", *FAST_ARGS, stdin=cut)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_INPUT, err
    assert f"y4m frame 2 at byte {header + 2 * frame}: truncated" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_raw_stdin_without_size(server):
    proc = cli(server, "upsample", "--model", "tiny", "--factor", "2", stdin=bytes(100))
    assert proc.returncode == EXIT_INPUT and "give --size WxH" in proc.stderr.decode()


def test_cli_options_after_the_command_and_closed_stdout(server):
    proc = subprocess.run([sys.executable, "-m", "sinfusion.clients", "models", "--address", server, "--token", TOKEN],
                          capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and b"tiny" in proc.stdout, proc.stderr.decode()
    reader = subprocess.Popen([sys.executable, "-m", "sinfusion.clients", "--address", server, "--token", TOKEN, "models",
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    reader.stdout.close()  # nobody reads the listing
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and b"Traceback" not in err, err.decode()


def test_tls_with_a_root_certificate(models, tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    servers = start_server(models, root, "--tls-cert", str(cert), "--tls-key", str(key))
    address = next(servers)
    try:
        with Client(address, tls_ca=cert) as client:
            assert [m.name for m in client.list_models()] == ["still", "tiny"]
        plain = subprocess.run([sys.executable, "-m", "sinfusion.clients", "--address", address, "models"],
                               capture_output=True, cwd=ROOT, timeout=60)
        untrusted = subprocess.run([sys.executable, "-m", "sinfusion.clients", "--address", address, "--tls", "models"],
                                   capture_output=True, cwd=ROOT, timeout=60)
        trusted = subprocess.run([sys.executable, "-m", "sinfusion.clients", "--address", address, "--tls-ca", str(cert),
                                  "generate", "--model", "tiny", "--frames", "2", "--format", "raw", *FAST_ARGS],
                                 capture_output=True, cwd=ROOT, timeout=60)
    finally:
        next(servers, None)
    assert plain.returncode == 114 and untrusted.returncode == 114
    err = untrusted.stderr.decode()
    assert "CERTIFICATE_VERIFY_FAILED" in err and err.count("\n") == 1  # grpc's own log lines silenced
    assert trusted.returncode == 0 and len(trusted.stdout) == 2 * W * H * 3, trusted.stderr.decode()


def test_cli_upsample_answers_before_its_input_ends(server):
    """Frames come out while stdin is still open: nothing waits for the end of the input."""
    import threading

    from sinfusion.io.pipes import Y4MWriter

    proc = subprocess.Popen(cli_cmd(server, "upsample", "--model", "tiny", "--factor", "2", "--format", "raw",
                                    *FAST_ARGS),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=CLI_ENV)
    writer = Y4MWriter(proc.stdin, 12)

    def read_frames(n: int, timeout: float = 60) -> bytes:
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(proc.stdout.read(n * W * H * 3)), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            proc.kill()
            pytest.fail(f"no {n} frames within {timeout} s while the input stayed open")
        return got[0]

    try:
        clip = tiny_clip(3, H, W)
        writer.write(clip[0])
        writer.write(clip[1])
        first = read_frames(2)  # frame 0 and the one between 0 and 1, with stdin still open
        writer.write(clip[2])
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(first) + len(rest) == 5 * W * H * 3
