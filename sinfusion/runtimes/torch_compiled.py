"""The fast PyTorch runtime: the diffusion step compiled, in reduced precision, replayed as CUDA graphs,
with the sampling loop's arrays kept on the device.

What it does to `sinfusion.network.DiffusionStep` (the same step every runtime runs):
- **precision**: the network's weights in bf16 (fp16 where the GPU lacks bf16; fp32 on the CPU); the
  step's update (x0 estimate, clamp, posterior) stays float32 (see DiffusionStep).
- **layout**: channels-last on CUDA, the layout cuDNN and inductor's kernels are fastest in.
- **compile**: `torch.compile` with inductor, mode "max-autotune-no-cudagraphs" on CUDA (autotuned
  kernels; the graphs are captured here, not by inductor) and the default mode on the CPU. Each
  (role, batch) is compiled at load (`warm_up`), which logs how long each took.
- **CUDA graphs**: one per (role, batch, frame size), captured after warm-up into one shared memory
  pool and replayed: a step is a few input copies and one graph launch. A call with a batch size that
  was not captured is padded up to a captured one (runtimes/fixed.py's plan; rows are independent and
  the padding rows' outputs are dropped). Frame sizes other than the bundle's (a visual summary's)
  run the same step eagerly rather than compiling a new shape per request.
- **device-resident loop**: outputs are torch tensors on the device, which the sampling loop passes
  back unchanged (sinfusion.arrays); only the noise, t, k and the coefficients are uploaded each step,
  asynchronously. Nothing waits for the device inside a frame.
- **quick restarts**: inductor's on-disk caches (compiled graphs, autotuning results, Triton kernels)
  go to one persistent folder, `use_cache_dir`: $TORCHINDUCTOR_CACHE_DIR if set, else
  ~/.cache/sinfusion/inductor (or the server's --compile-cache). The compiled code does not depend on
  the weights, so bundles with the same network and frame size share it.
- **fallback**: where compiling fails (no C++ compiler on the CPU, no Triton, an inductor error), a
  WARNING says why and the step runs eagerly, still in graphs on CUDA.

docs/gpu.md has the figures and how to measure them (bench/bench_gpu.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle
from ..network import DiffusionStep, SinFusionNet
from .fixed import plan_chunks
from .torch_runtime import load_network

log = logging.getLogger("sinfusion.runtimes")

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_BATCHES = (1, 2, 4, 8)
CUDA_MODE = "max-autotune-no-cudagraphs"  # autotuned kernels; CUDA graphs are captured below
INPUTS = ("x", "cond", "t", "k", "coef", "noise")  # DiffusionStep.forward's arguments


def default_cache_dir() -> Path:
    """Where inductor's caches persist when nobody names a folder: ~/.cache/sinfusion/inductor."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sinfusion" / "inductor"


def use_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Point inductor's on-disk caches at `path` (process-wide: inductor reads one variable).

    None keeps $TORCHINDUCTOR_CACHE_DIR when set, else default_cache_dir(). Inductor's own default
    is under /tmp, which a reboot empties: every restart would compile from scratch.
    """
    if path is None:
        path = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def default_precision(device: torch.device) -> str:
    if device.type != "cuda":
        return "fp32"  # bf16 convolutions on the CPU are slower, not faster
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _allow_recompiles(count: int) -> None:
    """Every (role, batch) is its own compiled graph of DiffusionStep.forward: let dynamo keep them
    all (its default keeps 8 per function and then runs the rest eagerly, silently)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), count))
            return


@dataclass
class _Prepared:
    """One (role, batch) at the warmed frame size: its static inputs and how to run them."""

    inputs: dict[str, torch.Tensor | None]
    run: object  # the compiled (or eager) step
    graph: torch.cuda.CUDAGraph | None = None
    output: torch.Tensor | None = None  # the graph's static output


class CompiledTorchDenoiser:
    """A sampling.Denoiser over a bundle's roles: compiled, graph-captured, device-resident.

    Returns torch tensors on `device` (CPU tensors on the CPU), which the sampling loop keeps;
    sinfusion.arrays brings frames to the host. Arguments after `roles` are keyword-only:
    precision ("bf16", "fp16", "fp32"; default per device), compile (False: eager, for references),
    mode (torch.compile mode; "auto": max-autotune-no-cudagraphs on CUDA, default on the CPU),
    cuda_graphs (default: on CUDA), batch_sizes (the batches compiled and captured; others are padded
    to the next), cache_dir (see use_cache_dir), warm_up (compile and capture now; default yes).
    """

    name = "torch-compiled"

    def __init__(self, bundle: Bundle, device: str = "cuda", roles: Sequence[str] | None = None,
                 **options) -> None:
        networks = {role: load_network(bundle, role) for role in (roles or bundle.roles)}
        m, sampling = bundle.manifest, bundle.sampling()
        self._setup(networks, device, {role: sampling.sizes(role, m.height, m.width)
                                       for role in networks}, **options)

    @classmethod
    def from_networks(cls, networks: dict[str, SinFusionNet], device: str,
                      size: tuple[int, int] | dict[str, tuple[int, int] | list[tuple[int, int]]],
                      **options) -> CompiledTorchDenoiser:
        """A runtime over in-memory networks at array size (height, width), one for all roles or
        one or more per role: benchmarks, tests."""
        self = cls.__new__(cls)
        self._setup(networks, device, size, **options)
        return self

    def _setup(self, networks: dict[str, SinFusionNet], device: str,
               size: tuple[int, int] | dict[str, tuple[int, int] | list[tuple[int, int]]], *,
               precision: str | None = None, compile: bool = True, mode: str | None = "auto",
               cuda_graphs: bool | None = None, batch_sizes: Sequence[int] = DEFAULT_BATCHES,
               cache_dir: str | os.PathLike | None = None, warm_up: bool = True) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device is visible to torch")
        self.precision = precision or default_precision(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if cuda_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        self.channels_last = cuda
        # (height, width) each role's steps are compiled and captured at (a Predictor with a margin
        # takes a larger canvas than the frames, a coarsely correcting Projector both: sampling.
        # BundleSampling.sizes)
        per_role = size if isinstance(size, dict) else {r: size for r in networks}
        self.sizes = {role: [(int(h), int(w)) for h, w in
                             (hws if isinstance(hws[0], (tuple, list)) else [hws])]
                      for role, hws in per_role.items()}
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        self.mode = (CUDA_MODE if cuda else None) if mode == "auto" else mode
        # On a GPU a call's launch cost dominates: one padded call beats two exact ones (fixed.py).
        self.call_cost = 8.0 if cuda else 1.0
        dtype = PRECISIONS[self.precision]
        self.steps: dict[str, DiffusionStep] = {}
        for role, net in networks.items():
            net = net.to(self.device, dtype).eval().requires_grad_(False)
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            self.steps[role] = DiffusionStep(net).eval()
        self.compiled: dict[str, object] = {}
        self.fallback: str | None = None  # why compiling was given up, when it was
        # keyed (role, batch, height, width)
        self.compile_seconds: dict[tuple[str, int, int, int], float] = {}
        self.cache_dir: Path | None = None
        self._prepared: dict[tuple[str, int, int, int], _Prepared] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        if compile:
            self.cache_dir = use_cache_dir(cache_dir)
            _allow_recompiles(len(self.steps) * len(self.batch_sizes) + 64)
            for role, step in self.steps.items():
                self.compiled[role] = torch.compile(step, mode=self.mode, dynamic=False,
                                                    fullgraph=True)
        if warm_up:
            self.warm_up()

    # --- load time --------------------------------------------------------------------------------

    def _device_context(self):
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _frames(self, batch: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
        t = torch.zeros((batch, channels, *size), device=self.device)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _example_inputs(self, role: str, batch: int, size: tuple[int, int]
                        ) -> dict[str, torch.Tensor | None]:
        """The static inputs of one (role, batch, size): the buffers each call copies its arguments
        into."""
        config = self.steps[role].net.config
        coef = torch.tensor([[1.0, -1.0, 0.5, 0.5, 0.1]], device=self.device).repeat(batch, 1)
        return {
            "x": self._frames(batch, 3, size),
            "cond": self._frames(batch, config.cond_channels, size) if config.cond_channels else None,
            "t": torch.full((batch,), 10.0, device=self.device),
            "k": torch.ones(batch, device=self.device) if config.use_k else None,
            "coef": coef,
            "noise": self._frames(batch, 3, size),
        }

    def warm_up(self) -> None:
        """Compile and capture every (role, batch) at each of the role's sizes, logging each
        compile's time."""
        with self._device_context(), torch.inference_mode():
            for role in self.steps:
                for size in self.sizes[role]:
                    for batch in self.batch_sizes:
                        if (role, batch, *size) not in self._prepared:
                            self._prepare(role, batch, size)
        self._sync()

    def _prepare(self, role: str, batch: int, size: tuple[int, int]) -> None:
        inputs = self._example_inputs(role, batch, size)
        run = self.compiled.get(role)
        if run is not None:
            start = time.perf_counter()
            try:
                run(**inputs)
                self._sync()
            except Exception as exc:  # inductor/dynamo raise many types; all mean "cannot compile"
                self._give_up_compiling(exc)
                return self._prepare(role, batch, size)
            seconds = time.perf_counter() - start
            self.compile_seconds[(role, batch, *size)] = seconds
            h, w = size
            log.info("%s batch %d at %dx%d compiled (%s, %s) in %.1f s", role, batch, w, h,
                     self.mode or "default mode", self.precision, seconds)
        else:
            run = self.steps[role]
        prepared = _Prepared(inputs, run)
        if self.cuda_graphs:
            try:
                prepared.graph, prepared.output = self._capture(run, inputs)
            except Exception as exc:
                log.warning("CUDA graph capture failed (%s); running %s steps without graphs",
                            _one_line(exc), self.name)
                self.cuda_graphs = False
        self._prepared[(role, batch, *size)] = prepared

    def _give_up_compiling(self, exc: Exception) -> None:
        self.fallback = _one_line(exc)
        log.warning("torch.compile is unavailable here (%s); the %s runtime runs the step eagerly "
                    "(slower)", self.fallback, self.name)
        self.compiled.clear()
        self._prepared.clear()
        self.compile_seconds.clear()

    def _capture(self, run, inputs: dict) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up on a side stream first (cuDNN/cuBLAS pick and allocate their workspaces there),
        # as CUDA graph capture requires; then capture into the pool every graph here shares. The
        # graphs run one after another and each output is copied out at once, so sharing is safe.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run(**inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = run(**inputs)
        return graph, output

    def describe(self) -> dict:
        """What this runtime runs, for logs and benchmarks."""
        return {"device": str(self.device), "precision": self.precision,
                "compiled": bool(self.compiled), "mode": self.mode or "default",
                "cuda_graphs": self.cuda_graphs, "batch_sizes": list(self.batch_sizes),
                "size": ", ".join(sorted({f"{w}x{h}" for hws in self.sizes.values()
                                          for h, w in hws})),
                "fallback": self.fallback,
                "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "compile_seconds": {f"{r}/{b}/{w}x{h}": round(s, 2)
                                    for (r, b, h, w), s in self.compile_seconds.items()}}

    # --- Denoiser ---------------------------------------------------------------------------------

    def __call__(self, role, x, cond, t, k, coef, noise) -> torch.Tensor:
        if role not in self.steps:
            raise KeyError(f"no {role} loaded in this runtime (has: {', '.join(self.steps)})")
        coef = np.asarray(coef, dtype=np.float32)
        with self._device_context(), torch.inference_mode():
            if tuple(x.shape[-2:]) in self.sizes[role] and self._prepared:
                return self._run_prepared(role, x, cond, t, k, coef, noise)
            return self._run_eager(role, x, cond, t, k, coef, noise)

    def _run_prepared(self, role, x, cond, t, k, coef, noise) -> torch.Tensor:
        outputs = []
        for chunk in plan_chunks(x.shape[0], self.batch_sizes, self.call_cost):
            prepared = self._prepared[(role, chunk.batch, *x.shape[-2:])]
            rows = slice(chunk.start, chunk.start + chunk.count)
            # Rows past chunk.count keep an earlier call's (finite) inputs: rows are independent
            # and their outputs are dropped, so they need no zeroing.
            given = {"x": x, "cond": cond, "t": t, "k": k, "coef": coef}
            if coef[rows, 4].any():  # c = 0 everywhere (DDIM, last steps): the noise is not read
                given["noise"] = noise
            for name, value in given.items():
                target = prepared.inputs[name]
                if target is not None and value is not None:
                    target[: chunk.count].copy_(_tensor(value[rows]), non_blocking=True)
            if prepared.graph is not None:
                prepared.graph.replay()
                out = prepared.output[: chunk.count].clone()  # the next replay overwrites it
            else:
                out = prepared.run(**prepared.inputs)[: chunk.count]
            outputs.append(out)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run_eager(self, role, x, cond, t, k, coef, noise) -> torch.Tensor:
        """Shapes that were not warmed up (a visual summary's sizes): the same step, uncompiled."""
        step = self.steps[role]

        def put(a, frames=False):
            if a is None:
                return None
            a = _tensor(a).to(self.device, torch.float32, non_blocking=True)
            return a.contiguous(memory_format=torch.channels_last) if frames and self.channels_last \
                else a

        k_in = put(k) if step.net.config.use_k else None
        return step(put(x, True), put(cond, True), put(t), k_in, put(coef), put(noise, True)).float()


def _tensor(a) -> torch.Tensor:
    """A host array as a CPU tensor sharing its memory; tensors as they are."""
    if isinstance(a, torch.Tensor):
        return a
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
