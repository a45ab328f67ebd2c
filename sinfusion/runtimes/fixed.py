"""Fixed-shape batching shared by the engine runtimes (ONNX Runtime, TensorRT).

An engine takes exactly its exported batch size. A call with any B is cut into chunks that each go
to one engine: a chunk either fills an engine exactly or is zero-padded up to the next exported size,
and the padded rows of the result are dropped. Zero rows are safe to compute: coef = 0 makes their
output 0, and the network's norms add eps before the square root, so nothing turns into NaN.

Which chunks: the fewest "cost units", where a call costs `call_cost` plus its padded batch size.
On a CPU the work grows with the batch, so a small call_cost prefers exact splits (2 = 1 + 1 over
padding to 4); on a GPU a call's launch overhead dominates and a larger call_cost prefers one padded
call. The plan is a tiny dynamic programme over B, cached per (B, sizes, call_cost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..bundle import Bundle, BundleError, IntegrityError, read_verified
from ..engines import DEFAULT_PRECISION, PRECISIONS, engine_entries, step_feed


@dataclass(frozen=True)
class Chunk:
    start: int  # first row of the caller's batch
    count: int  # real rows in this chunk
    batch: int  # engine batch size used (count <= batch; the rest is padding)


@lru_cache(maxsize=256)
def _plan(n: int, sizes: tuple[int, ...], call_cost: float) -> tuple[tuple[int, int], ...]:
    """((count, batch), ...) covering n rows at the least total cost."""
    # best[i] = (cost, chunks) to cover i rows; each step covers min(size, remaining) rows.
    best: list[tuple[float, tuple[tuple[int, int], ...]]] = [(0.0, ())]
    for i in range(1, n + 1):
        options = []
        for size in sizes:
            count = min(size, i)
            cost, chunks = best[i - count]
            options.append((cost + call_cost + size, chunks + ((count, size),)))
        best.append(min(options, key=lambda o: (o[0], len(o[1]))))
    return best[n][1][::-1]  # the DP adds partial chunks first; run full ones first, pad the tail


def plan_chunks(n: int, sizes: Sequence[int], call_cost: float = 1.0) -> list[Chunk]:
    """How to run a batch of n rows on engines of the given batch sizes."""
    if n < 1:
        raise ValueError(f"batch must be >= 1, got {n}")
    if not sizes or min(sizes) < 1:
        raise ValueError(f"engine batch sizes must be positive, got {list(sizes)}")
    chunks, start = [], 0
    for count, batch in _plan(n, tuple(sorted(set(sizes))), float(call_cost)):
        chunks.append(Chunk(start, count, batch))
        start += count
    return chunks


def pad_rows(array: np.ndarray, batch: int) -> np.ndarray:
    """Zero-pad the leading axis of an array up to `batch` rows."""
    missing = batch - array.shape[0]
    if missing <= 0:
        return array
    pad = np.zeros((missing, *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, pad], axis=0)


def run_chunked(feed: dict[str, np.ndarray], sizes: Sequence[int],
                call: Callable[[int, dict[str, np.ndarray]], np.ndarray],
                call_cost: float = 1.0) -> np.ndarray:
    """Run named, batched inputs through fixed-batch engines and return the stacked outputs.

    `call(batch, chunk_feed)` runs the engine of that batch size on inputs with exactly `batch` rows.
    """
    n = next(iter(feed.values())).shape[0]
    if any(a.shape[0] != n for a in feed.values()):
        raise ValueError("all inputs of one call must share the batch size")
    outputs = []
    for chunk in plan_chunks(n, sizes, call_cost):
        rows = slice(chunk.start, chunk.start + chunk.count)
        part = {name: pad_rows(a[rows], chunk.batch) for name, a in feed.items()}
        outputs.append(np.asarray(call(chunk.batch, part))[: chunk.count])
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)


# --- the engine runtimes' shared body --------------------------------------------------------------

class FixedShapeDenoiser:
    """A Denoiser over a bundle's fixed-shape engines of one kind; subclasses load and run one engine.

    At construction every engine of the kind is checksum-verified and loaded (a server fails at start,
    not at the first request). Among several precisions of one shape, `precision` picks; None takes
    the kind's default when present, else whichever exists.
    """

    kind = ""  # "onnx" | "tensorrt"
    name = ""
    call_cost = 1.0  # see plan_chunks

    def __init__(self, bundle: Bundle, roles: Sequence[str] | None = None,
                 precision: str | None = None) -> None:
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.bundle = bundle
        self.sampling = bundle.sampling()  # once: what size each role's steps take (canvas)
        self.configs = {}
        # (role, height, width) -> {batch: loaded engine}
        self.engines: dict[tuple[str, int, int], dict[int, object]] = {}
        self.entries = []
        chosen = {}
        for entry in engine_entries(bundle, self.kind):
            if (roles is not None and entry.role not in roles) or \
                    (precision is not None and entry.precision != precision):
                continue
            shape_key = (entry.role, entry.batch, entry.height, entry.width)
            if shape_key not in chosen or entry.precision == DEFAULT_PRECISION[self.kind]:
                chosen[shape_key] = entry
        absent = [r for r in (roles or []) if r not in {e.role for e in chosen.values()}]
        if chosen and absent:
            raise BundleError(f"{bundle.path}: no {self.kind} engines for {', '.join(absent)}; "
                              f"run: sinfusion-export {bundle.path} --kind {self.kind} "
                              f"--roles {' '.join(absent)}")
        if not chosen:
            raise BundleError(
                f"{bundle.path}: no {self.kind} engines"
                + (f" for {', '.join(roles)}" if roles else "")
                + (f" at {precision}" if precision else "")
                + f"; run: sinfusion-export {bundle.path} --kind {self.kind}")
        for entry in chosen.values():
            self.configs[entry.role] = bundle.role(entry.role).network
            path = bundle.path / entry.file
            if not entry.sha256:  # export always records one: a manifest without it was edited
                raise IntegrityError(f"{path}: the manifest records no sha256 for this engine; "
                                     f"re-export the bundle")
            # hash the very bytes that get loaded
            data = read_verified(path, entry.sha256, "engine", "re-export the bundle")
            engine = self._load(entry, data)
            self.engines.setdefault((entry.role, entry.height, entry.width), {})[entry.batch] = engine
            self.entries.append(entry)

    # subclasses --------------------------------------------------------------------------------
    def _load(self, entry, data: bytes):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, engine, feed: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    # Denoiser ------------------------------------------------------------------------------------
    def batch_sizes(self, role: str, height: int | None = None, width: int | None = None) -> list[int]:
        """Exported batch sizes of a role at an array size (default: the bundle's frames, as the
        role takes them: see BundleSampling.canvas)."""
        return sorted(self._engines_for(role, height, width))

    def _engines_for(self, role: str, height: int | None, width: int | None) -> dict[int, object]:
        m, sampling = self.bundle.manifest, self.sampling
        if height is None or width is None:  # the frames' size, as the role's steps take it
            height, width = sampling.canvas(role, m.height, m.width)
        found = self.engines.get((role, height, width))
        if not found:
            have = sorted({f"{r} {ww}x{hh}" for r, hh, ww in self.engines})
            frame_h, frame_w = m.height, m.width  # export --size takes the frame size
            if (height, width) not in sampling.sizes(role, m.height, m.width):
                grow_h, grow_w = sampling.canvas(role, 0, 0)  # a Predictor's margin on both sides
                frame_h, frame_w = height - grow_h, width - grow_w
            raise BundleError(f"{self.bundle.path}: no {self.kind} engine for {role} at {width}x"
                              f"{height} (has: {', '.join(have)}); run: sinfusion-export "
                              f"{self.bundle.path} --kind {self.kind} --roles {role} --size "
                              f"{frame_w}x{frame_h}")
        return found

    def __call__(self, role, x, cond, t, k, coef, noise) -> np.ndarray:
        x = np.asarray(x)
        engines = self._engines_for(role, x.shape[-2], x.shape[-1])
        feed = step_feed(self.configs[role], x, cond, t, k, coef, noise)
        return run_chunked(feed, list(engines), lambda b, part: self._run(engines[b], part),
                           self.call_cost)
