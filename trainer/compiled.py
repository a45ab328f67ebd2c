"""The trainer's fast path on a GPU: the network's forward (and with it AOTAutograd's backward)
compiled with torch.compile, and Adam's update as one fused kernel.

`compile_network` compiles a network in place: its module, parameters and state_dict keys stay the
same, so checkpoints, the EMA copy and resume are untouched (torch.compile(net) would return a
wrapper whose state_dict keys gain an `_orig_mod.` prefix). The compiled forward is built on the
first step; if that fails (no Triton, no C++ compiler, an inductor error) a WARNING says why and
training goes on eagerly, as before. Crop shapes are fixed for a run, so one graph serves it
(dynamic=False: no recompiles into a dynamic-shape graph).

More crops per step are `TrainConfig.batch_size` (the presets' choice); bench/bench_gpu.py measures
steps/s and crops/s per batch size so that a GPU preset can pick where it pays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from sinfusion.runtimes.torch_compiled import use_cache_dir

log = logging.getLogger("sinfusion.trainer")

CUDA_MODE = "max-autotune-no-cudagraphs"  # autotuned GEMM/conv choices; the step has host work between


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, device: torch.device
                   ) -> torch.optim.Adam:
    """Adam, fused into one kernel on CUDA (the per-parameter loop of the default is launch-bound
    on a network of 16 small blocks); the default implementation elsewhere."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


class _CompiledForward:
    """A network's forward: the compiled one, or the eager one once compiling has failed."""

    def __init__(self, eager, mode: str | None) -> None:
        self.eager = eager
        self.compiled = torch.compile(eager, mode=mode, dynamic=False)
        self.proven = False  # a compiled call has succeeded: errors after that are real errors
        self.fallback: str | None = None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if self.proven:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # dynamo/inductor raise many types; all mean "cannot compile here"
            lines = str(exc).strip().splitlines()
            self.fallback = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
            log.warning("torch.compile is unavailable for training here (%s); training eagerly",
                        self.fallback)
            self.compiled = None
            return self.eager(*args, **kwargs)
        self.proven = True
        return out


def compile_network(net: torch.nn.Module, device: torch.device, mode: str | None = "auto"
                    ) -> torch.nn.Module:
    """Compile `net`'s forward in place (see the module doc) and return it.

    mode "auto": max-autotune-no-cudagraphs on CUDA, the default mode elsewhere.
    """
    if mode == "auto":
        mode = CUDA_MODE if device.type == "cuda" else None
    use_cache_dir()  # the serving runtime's persistent cache: a restarted run compiles in seconds
    eager = type(net).forward.__get__(net)  # the class's forward, bound: no recursion below
    net.forward = _CompiledForward(eager, mode)
    return net


def compile_fallback(net: torch.nn.Module) -> str | None:
    """Why a compiled network trains eagerly, or None (compiled, or never compiled)."""
    forward = net.__dict__.get("forward")
    return forward.fallback if isinstance(forward, _CompiledForward) else None
