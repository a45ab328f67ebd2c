"""Soak: N seeded streams x M rounds with fuzzed requests interleaved, against a real server child process.

    nice -n 19 .venv/bin/python -m bench.soak [--models DIR --model NAME] [--streams 8] [--rounds 10]
        [--frames 20] [--fuzz 5000] [--stall-frames 200] [--threads 1] [--seed 0]

The server (`python -m sinfusion.server.cli`, torch-cpu, `--fixed-batch` so that a seeded stream is bit-identical
alone or batched, /metrics on a free port) runs as a child process, as in production; this process is
only its client. Without --models, a bundle of random tiny networks with all three roles is made in a
temporary folder (a step's cost and the server's behaviour do not depend on the weights).

1. Reference: each of the N seeded Extrapolate streams once, alone; its frames' hashes are the truth.
2. M rounds: the N streams at once, while two threads send fuzzed requests (random bytes, and
   well-formed requests cut, flipped or spliced, on every SinFusion, health and reflection method,
   names up to 20,000 characters). A frame is lost when a stream ends short or skips an index,
   corrupted when its bytes differ from the reference. RSS of the server process after each round.
3. Stall: a client (gRPC's default settings) reads one frame of a long stream and stops. Once the
   server's engine counters stop moving, frames computed for it (engine work / work per frame) minus
   frames handed to gRPC (sinfusion_frames_total) is what the stream holds: at most the run-ahead.
   Another stream is served meanwhile; then the stalled client reads on and must get every frame.
4. RSS after the run (idle, 2 s later), server log tracebacks, exit status on SIGTERM.

Targets: 0 UNKNOWN or INTERNAL in >= 5000 fuzzed requests; RSS after within +50 MB of the
start; a stalled stream holding at most its run-ahead; 0 frames lost or corrupted. Exit status 0 when
every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from sinfusion.server.process import start_server_process, stop_server_process
from sinfusion.server.scheduler import RUNAHEAD
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "/sinfusion.v1.SinFusion/"
# Method -> call shape: unary-unary, unary-stream, stream-stream. Health Watch is left out: it never ends.
METHODS = {SERVICE + "ListModels": "uu", SERVICE + "DescribeModel": "uu", SERVICE + "Extrapolate": "us",
           SERVICE + "Generate": "us", SERVICE + "Upsample": "ss", "/grpc.health.v1.Health/Check": "uu",
           "/grpc.health.v1.Health/List": "uu",
           "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "ss",
           "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "ss"}
FUZZ_TIMEOUT = 10.0  # a mutated request can be valid and long: the client gives up, the server cancels
BAD = ("UNKNOWN", "INTERNAL")


def make_bundle(path: Path, width: int, height: int):
    """Random tiny networks (2 blocks x 8 channels), all three roles, over a random 8-frame clip."""
    import numpy as np
    import torch

    from sinfusion.bundle import Bundle, Manifest, RoleEntry, weights_path
    from sinfusion.config import default_config
    from sinfusion.network import SinFusionNet

    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (8, height, width, 3), dtype=np.uint8)
    manifest = Manifest(name=path.name, mode="video", width=width, height=height, fps=12.0,
                        frame_count=len(frames), source={"kind": "soak"})
    bundle = Bundle.create(path, manifest, frames)
    for role in ("predictor", "projector", "interpolator"):
        config = default_config(role, channels=8, blocks=2)
        net = SinFusionNet(config)
        entry = RoleEntry(config, {"kind": "cosine", "steps": 50}, "eps" if role == "predictor" else "x0",
                          weights_path(role))
        bundle.write_weights(role, entry, {k: v.numpy() for k, v in net.state_dict().items()})


# ---- server observation ----------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MetricsReader:
    """Sums of Prometheus samples from the server's /metrics, by name and label subset."""

    LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([-+\deE.naNInf]+)$")

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"

    def value(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(self.url, timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            m = self.LINE.match(line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total


# ---- streams ---------------------------------------------------------------------------------------

def stream_request(model: str, frames: int, seed: int, args) -> pb.ExtrapolateRequest:
    return pb.ExtrapolateRequest(model=model, frames=frames, sampling=pb.SamplingParams(
        steps=args.steps, method=pb.SAMPLING_METHOD_DDIM, correction_steps=args.correction, seed=seed))


def run_stream(channel, model: str, seed: int, args) -> list[tuple[int, int, int, str]] | str:
    """(index, width, height, sha1) of every frame, or the status name when the call failed."""
    try:
        call = pb_grpc.SinFusionStub(channel).Extrapolate(stream_request(model, args.frames, seed, args),
                                                          timeout=600)
        return [(f.index, f.width, f.height, hashlib.sha1(f.rgb).hexdigest()) for f in call]
    except grpc.RpcError as exc:
        return exc.code().name


def compare(got, want) -> tuple[int, int]:
    """(frames lost, frames corrupted) of a stream against its reference."""
    if isinstance(got, str):
        return len(want), 0
    lost = len(want) - len(got)
    indices_ok = [g[0] for g in got] == list(range(len(got)))
    corrupted = sum(1 for g, w in zip(got, want) if g != w)
    return lost + (0 if indices_ok else 1), corrupted


# ---- fuzz ------------------------------------------------------------------------------------------

class Fuzzer:
    """Fuzzed request bytes for every method, from a seeded random generator."""

    def __init__(self, rng: random.Random, model: str, width: int, height: int):
        self.rng, self.model, self.size = rng, model, (width, height)
        self.names = [model, model, "", "nope", "x" * 300, "y" * 20000, "é" * 5, model + "\x00"]

    def sampling(self) -> pb.SamplingParams:
        r = self.rng
        return pb.SamplingParams(steps=r.randint(1, 3), method=r.randint(0, 3), correction_steps=r.randint(0, 2),
                                 seed=r.randint(0, 2**64 - 1))

    def raw_frame(self) -> pb.RawFrame:
        r = self.rng
        if r.random() < 0.5:  # a well-formed frame, of the model's size or not
            w, h = (self.size if r.random() < 0.5 else (r.randint(1, 40), r.randint(1, 30)))
            return pb.RawFrame(width=w, height=h, rgb=r.randbytes(w * h * 3))
        return pb.RawFrame(width=r.randint(0, 40), height=r.randint(0, 30), rgb=r.randbytes(r.randint(0, 64)))

    def well_formed(self, method: str):
        r = self.rng
        name = r.choice(self.names)
        kind = method.rsplit("/", 1)[-1]
        if kind == "DescribeModel":
            return pb.DescribeModelRequest(model=name)
        if kind == "Extrapolate":
            req = pb.ExtrapolateRequest(model=name, frames=r.randint(0, 2), step=r.randint(-4, 4),
                                        resize=r.randint(0, 3), sampling=self.sampling())
            if r.random() < 0.5:
                req.start_image.CopyFrom(self.raw_frame())
            else:
                req.start_frame = r.randint(0, 9)
            return req
        if kind == "Generate":
            return pb.GenerateRequest(model=name, frames=r.randint(0, 2), sampling=self.sampling())
        if kind == "Upsample":
            req = pb.UpsampleRequest(model=name, factor=r.choice([0, 2, 3, 4, 8, 9]), resize=r.randint(0, 3),
                                     sampling=self.sampling())
            if r.random() < 0.3:
                req.frame.CopyFrom(self.raw_frame())
            return req
        if kind == "Check":
            return health_pb2.HealthCheckRequest(service=r.choice(["", "sinfusion.v1.SinFusion",
                                                                   f"sinfusion.v1.SinFusion/{name}"]))
        if kind == "List":
            return health_pb2.HealthListRequest()
        if kind == "ServerReflectionInfo":
            if r.random() < 0.5:
                return reflection_pb2.ServerReflectionRequest(list_services="")
            return reflection_pb2.ServerReflectionRequest(file_containing_symbol=r.choice(
                ["sinfusion.v1.SinFusion", "grpc.health.v1.Health", "nope", name]))
        return pb.ListModelsRequest()

    def payload(self, method: str) -> bytes:
        """Well-formed bytes, the same cut, flipped or spliced, or random bytes."""
        r = self.rng
        how = r.choice(["valid", "cut", "flip", "splice", "random", "random"])
        if how == "random":
            return r.randbytes(r.randint(0, 200))
        data = self.well_formed(method).SerializeToString()
        if how == "cut" and data:
            return data[:r.randint(0, len(data) - 1)]
        if how == "flip" and data:
            at = r.randrange(len(data))
            return data[:at] + bytes([data[at] ^ r.randint(1, 255)]) + data[at + 1:]
        if how == "splice":
            at = r.randint(0, len(data))
            return data[:at] + r.randbytes(r.randint(1, 16)) + data[at:]
        return data

    def call(self) -> tuple[str, list[bytes]]:
        method = self.rng.choice(list(METHODS))
        count = self.rng.randint(1, 3) if METHODS[method] == "ss" else 1
        return method, [self.payload(method) for _ in range(count)]


def raw_call(channel, method: str, payloads: list[bytes]) -> str:
    """Send request bytes as they are; the status name (OK when the call completed)."""
    kind = METHODS[method]
    try:
        if kind == "uu":
            channel.unary_unary(method)(payloads[0], timeout=FUZZ_TIMEOUT)
        elif kind == "us":
            for _ in channel.unary_stream(method)(payloads[0], timeout=FUZZ_TIMEOUT):
                pass
        else:
            for _ in channel.stream_stream(method)(iter(payloads), timeout=FUZZ_TIMEOUT):
                pass
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def fuzz(target: str, fuzzer: Fuzzer, count: int, statuses: Counter, lock: threading.Lock,
         bad: list) -> None:
    with grpc.insecure_channel(target) as channel:
        for _ in range(count):
            method, payloads = fuzzer.call()
            code = raw_call(channel, method, payloads)
            with lock:
                statuses[code] += 1
                if code in BAD and len(bad) < 5:
                    bad.append((method, payloads[0][:80], code))


# ---- phases ----------------------------------------------------------------------------------------

def rounds(target: str, model: str, reference: dict, pid: int, args, rng: random.Random) -> dict:
    statuses, lock, bad = Counter(), threading.Lock(), []
    lost = corrupted = frames = 0
    per_round = [args.fuzz // args.rounds + (1 if i < args.fuzz % args.rounds else 0) for i in range(args.rounds)]
    print(f"{'round':>5} {'frames':>7} {'lost':>5} {'corrupt':>7} {'fuzzed':>7} {'UNKNOWN+INTERNAL':>16} "
          f"{'RSS MB':>7} {'wall s':>7}", flush=True)
    with grpc.insecure_channel(target) as channel:
        for i in range(args.rounds):
            start = time.monotonic()
            results: dict[int, object] = {}
            threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, run_stream(channel, model, s, args)))
                       for s in range(args.streams)]
            half = per_round[i] // 2
            fuzzers = [threading.Thread(target=fuzz, args=(target, Fuzzer(random.Random(rng.random()), model,
                                                                          *args.wh), n, statuses, lock, bad))
                       for n in (half, per_round[i] - half)]
            for t in threads + fuzzers:
                t.start()
            for t in threads + fuzzers:
                t.join()
            r_lost = r_corrupt = r_frames = 0
            for seed, got in results.items():
                l, c = compare(got, reference[seed])
                r_lost, r_corrupt = r_lost + l, r_corrupt + c
                r_frames += 0 if isinstance(got, str) else len(got)
            lost, corrupted, frames = lost + r_lost, corrupted + r_corrupt, frames + r_frames
            print(f"{i + 1:>5} {r_frames:>7} {r_lost:>5} {r_corrupt:>7} {sum(statuses.values()):>7} "
                  f"{sum(statuses[b] for b in BAD):>16} {rss_mb(pid):>7.1f} {time.monotonic() - start:>7.1f}",
                  flush=True)
    return dict(statuses=statuses, bad=bad, lost=lost, corrupted=corrupted, frames=frames)


def wait_still(metrics: MetricsReader, model: str, quiet_s: float = 1.5, limit_s: float = 60.0) -> float:
    """Engine work (streams carried per call, all roles) once it has not moved for quiet_s."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        now = metrics.value("sinfusion_batch_size_sum", model=model)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
        time.sleep(0.2)
    return last


# A stalled client's HTTP/2 window decides how many frames gRPC takes off the server for it: a small
# fixed one (4 KiB, no BDP probing) shows the server's own bound; gRPC's defaults, what a real client gets.
WINDOWS = {"small window": [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)],
           "default window": []}


def stall(target: str, model: str, metrics: MetricsReader, per_frame: float, window: str, pid: int,
          args) -> dict:
    """A client that reads one frame and stops: what the server computes and holds for it."""
    carried0 = wait_still(metrics, model)
    sent0 = metrics.value("sinfusion_frames_total", model=model, rpc="Extrapolate")
    rss0 = rss_mb(pid)
    with grpc.insecure_channel(target, options=WINDOWS[window]) as slow, grpc.insecure_channel(target) as fast:
        call = pb_grpc.SinFusionStub(slow).Extrapolate(stream_request(model, args.stall_frames, 999, args),
                                                       timeout=600)
        first = next(call)
        carried = wait_still(metrics, model)
        sent = metrics.value("sinfusion_frames_total", model=model, rpc="Extrapolate") - sent0
        computed = (carried - carried0) / per_frame
        rss_stalled = rss_mb(pid)
        # Another stream while it is stalled: served in full, and the stalled one computes nothing more.
        other = run_stream(fast, model, 0, args)
        carried_after = wait_still(metrics, model)
        extra = (carried_after - carried) / per_frame - (0 if isinstance(other, str) else len(other))
        rest = [first.index] + [f.index for f in call]  # the stalled client reads on
    time.sleep(1.0)
    rss_after = rss_mb(pid)
    return dict(window=window, asked=args.stall_frames, computed=computed, sent=sent, held=computed - sent,
                rss=rss_stalled - rss0, rss_after=rss_after,
                other=0 if isinstance(other, str) else len(other), extra=extra,
                complete=rest == list(range(args.stall_frames)), received=len(rest))


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, help="bundles to serve (default: a random tiny bundle, made here)")
    p.add_argument("--model", help="the model to stream (default: the first served)")
    p.add_argument("--size", default="48x32", help="frame size of the made bundle (default 48x32)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--frames", type=int, default=20, help="frames per stream and round")
    p.add_argument("--fuzz", type=int, default=5000, help="fuzzed requests over all rounds")
    p.add_argument("--stall-frames", type=int, default=200, help="frames the stalled stream asks for")
    p.add_argument("--steps", type=int, default=2, help="DDIM steps per frame")
    p.add_argument("--correction", type=int, default=1, help="Projector correction steps per frame")
    p.add_argument("--threads", type=int, default=1, help="the server's OMP_NUM_THREADS")
    p.add_argument("--seed", type=int, default=0, help="seed of the fuzz corpus")
    p.add_argument("--keep", type=Path, help="keep the server log here")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    args.wh = (w, h)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        models = args.models
        if models is None:
            models = tmp / "models"
            make_bundle(models / "soak", w, h)
        log_path = args.keep or tmp / "server.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "SINFUSION_TOKEN": ""}
        server_args = ["--models", models, "--host", "127.0.0.1", "--port", "0", "--runtime", "torch-cpu",
                       "--fixed-batch", "--max-frames", str(max(args.stall_frames, args.frames, 2)),
                       "--metrics-port", "0", "--metrics-port-file", tmp / "metrics-port", "--grace", "10",
                       "--log-level", "warning"]
        with open(log_path, "wb") as log:
            proc, port = start_server_process(server_args, tmp / "port", cwd=ROOT, env=env,
                                              stdout=subprocess.DEVNULL, stderr=log)
            target = f"127.0.0.1:{port}"
            try:
                rss_start = rss_mb(proc.pid)
                metrics = MetricsReader(int((tmp / "metrics-port").read_text()))
                with grpc.insecure_channel(target) as channel:
                    served = pb_grpc.SinFusionStub(channel).ListModels(pb.ListModelsRequest(), timeout=30).models
                    info = next(m for m in served if m.name == (args.model or served[0].name))
                    args.wh = (info.width, info.height)
                    print(f"server pid {proc.pid} on {target}: model {info.name!r} {info.width}x{info.height}, "
                          f"{args.streams} streams x {args.rounds} rounds x {args.frames} frames, DDIM "
                          f"{args.steps} + {args.correction} correction steps, {args.fuzz} fuzzed requests; "
                          f"RSS at start {rss_start:.1f} MB", flush=True)
                    start = time.monotonic()
                    carried0 = metrics.value("sinfusion_batch_size_sum", model=info.name)
                    reference = {s: run_stream(channel, info.name, s, args) for s in range(args.streams)}
                    failed = {s: r for s, r in reference.items() if isinstance(r, str)}
                    if failed:
                        print(f"reference streams failed: {failed}")
                        return 1
                    per_frame = (metrics.value("sinfusion_batch_size_sum", model=info.name) - carried0) / (
                        args.streams * args.frames)
                    rss_ref = rss_mb(proc.pid)
                    print(f"reference: {args.streams} streams alone in {time.monotonic() - start:.1f} s, "
                          f"{per_frame:g} engine calls per frame; RSS {rss_ref:.1f} MB", flush=True)
                result = rounds(target, info.name, reference, proc.pid, args, rng)
                stalls = [stall(target, info.name, metrics, per_frame, w, proc.pid, args) for w in WINDOWS]
                time.sleep(2.0)
                rss_end = rss_mb(proc.pid)
            finally:
                status = stop_server_process(proc)
        log_text = log_path.read_text(errors="replace")

    statuses = result["statuses"]
    fuzzed = sum(statuses.values())
    bad = sum(statuses[b] for b in BAD)
    print(f"fuzzed requests by status: {', '.join(f'{k} {v}' for k, v in statuses.most_common())}")
    for method, head, code in result["bad"]:
        print(f"  {code}: {method} {head!r}")
    print(f"streams: {result['frames']} frames in {args.streams * args.rounds} streams, {result['lost']} lost, "
          f"{result['corrupted']} corrupted (each compared with the same seed's stream run alone)")
    frame_mb = args.wh[0] * args.wh[1] * 3 / 1e6
    for st in stalls:
        print(f"stall, {st['window']}: {st['asked']}-frame stream, 1 frame read: the server computed "
              f"{st['computed']:.1f} frames, handed {st['sent']:.0f} to gRPC ({st['sent'] * frame_mb:.1f} MB, "
              f"what the client's flow-control window took), holds {st['held']:.1f} (run-ahead {RUNAHEAD}), "
              f"RSS {st['rss']:+.1f} MB; meanwhile another stream got {st['other']}/{args.frames} frames and "
              f"the stalled one computed {st['extra']:.1f} more; reading on, {st['received']}/{st['asked']} "
              f"frames in order; RSS {st['rss_after']:.1f} MB after it")
    print(f"RSS: start {rss_start:.1f} MB, after the reference streams {rss_ref:.1f} MB, after the run "
          f"{rss_end:.1f} MB ({rss_end - rss_start:+.1f} MB from the start, {rss_end - rss_ref:+.1f} MB from "
          f"after the reference streams)")
    print(f"server log: {log_text.count('Traceback')} tracebacks; exit status {status} on SIGTERM")
    held = ", ".join(f"{st['held']:.1f}" for st in stalls)
    targets = [
        (f"0 UNKNOWN/INTERNAL in >= 5000 fuzzed requests ({bad} in {fuzzed})", bad == 0 and fuzzed >= 5000),
        (f"RSS after within +50 MB of the start ({rss_end - rss_start:+.1f} MB)", rss_end - rss_start <= 50),
        (f"a stalled stream holds at most its run-ahead ({held} <= {RUNAHEAD}, "
         f"{max(abs(st['extra']) for st in stalls):.1f} computed while stalled)",
         all(st["held"] <= RUNAHEAD + 1e-6 and abs(st["extra"]) < 1e-6 for st in stalls)),
        (f"0 frames lost or corrupted ({result['lost']} lost, {result['corrupted']} corrupted, stalled streams "
         f"{'complete' if all(st['complete'] for st in stalls) else 'INCOMPLETE'})",
         result["lost"] == 0 and result["corrupted"] == 0 and all(st["complete"] for st in stalls)),
    ]
    for text, ok in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
