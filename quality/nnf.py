"""NNFDIV and NNFDIST (paper section 7): a space-time nearest-neighbour field found with PatchMatch.

For every 3x3x3 (frames x rows x columns) RGB patch of a *query* clip (a generated one), PatchMatch
(Barnes et al. 2009) looks for its nearest neighbour among the 3x3x3 patches of a *reference* clip (the
original): random initialisation, then iterations of propagation (a neighbour's match, shifted by the
same step, is a good guess) and random search (samples around the current match in windows halving
from the whole clip down to one pixel).

Definitions used here (so numbers can be compared across runs):

* Patches are "valid" patches only (no padding): a clip of T x H x W has (T-2) x (H-2) x (W-2) of them,
  indexed by their first frame, row and column.
* Pixel scale: [0, 1] (uint8 / 255).
* NNFDIST: the mean, over all query patches, of the mean squared difference between the patch and its
  nearest neighbour (the mean over its 81 values, 27 pixels x 3 channels). A copy scores 0.
* The field's offsets: for the query patch at (t, y, x) with neighbour (t', y', x'), the offset is
  (t'-t, y'-y, x'-x). NNFDIV encodes the field as three planes of int16 little-endian values, first
  every dt, then every dy, then every dx, each plane in C order over (t, y, x); compresses those bytes
  with zlib at level 9 and returns compressed size / raw size. A copy or a translated copy has a
  constant field, which compresses to almost nothing (NNFDIV ~ 0); a clip assembled from many places of
  the original has a field with many pieces and scores higher. A field of independent uniformly random
  offsets is the practical ceiling; `NNFResult.nnfdiv_ceiling` reports it for the same shape, because
  int16 offsets never use all 16 bits and the ceiling is therefore below 1.

Speed: patches are stored once as uint8 rows (81 bytes), so a candidate's cost is one row gather plus
a dot product. While searching, distances are computed on the patches' projections onto the
reference's `search_dims` leading principal components (default 16 of 81, which hold almost all of the
energy of natural 3x3x3 patches); the reported distances are then the exact 81-value ones of the
chosen neighbours. `search_dims=0` searches with exact distances throughout (about 5x slower).
Everything draws from one seeded numpy Generator, so a result is reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PATCH = 3  # patch extent along t, y and x
PATCH_VALUES = PATCH * PATCH * PATCH * 3


@dataclass(frozen=True)
class PatchMatchOptions:
    """Knobs of the search. The defaults take a few minutes for 100 frames of 256x144 on one core."""

    iterations: int = 6  # propagation + random search rounds
    search_dims: int = 16  # PCA dimensions compared while searching; 0 = all 81 (exact, slower)
    seed: int = 0  # random init, random search and PCA sample all come from this seed
    chunk: int = 1 << 16  # patches per vectorised block (bounds the temporary memory)

    def validate(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if not 0 <= self.search_dims <= PATCH_VALUES:
            raise ValueError(f"search_dims must be in [0, {PATCH_VALUES}], got {self.search_dims}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")


@dataclass
class NNFResult:
    """The nearest-neighbour field of a query clip into a reference clip."""

    offsets: np.ndarray  # int16 (Tq-2, Hq-2, Wq-2, 3): (dt, dy, dx) from each query patch to its NN
    distances: np.ndarray  # float32 (Tq-2, Hq-2, Wq-2): per-patch mean squared difference, [0,1] pixels
    reference_grid: tuple[int, int, int]  # (Tr-2, Hr-2, Wr-2): where a neighbour can be

    @property
    def nnfdist(self) -> float:
        return float(self.distances.mean(dtype=np.float64))

    @property
    def nnfdiv(self) -> float:
        return nnf_div(self.offsets)

    @property
    def nnfdiv_ceiling(self) -> float:
        """NNFDIV of a field whose matches are uniformly random over the reference (seeded)."""
        rng = np.random.default_rng(0)
        qgrid = self.offsets.shape[:3]
        pos = np.meshgrid(*[np.arange(e) for e in qgrid], indexing="ij")
        rand = np.stack([rng.integers(0, self.reference_grid[a], size=qgrid) - pos[a]
                         for a in range(3)], axis=-1)
        return nnf_div(rand.astype(np.int16))

    def per_frame_distance(self) -> np.ndarray:
        """NNFDIST of the patches centred on each query frame 1..Tq-2, float64 (Tq-2,)."""
        return self.distances.reshape(len(self.distances), -1).mean(axis=1, dtype=np.float64)

    def summary(self) -> dict:
        return {"nnfdist": self.nnfdist, "nnfdiv": self.nnfdiv,
                "nnfdiv_ceiling": self.nnfdiv_ceiling, "patches": int(self.distances.size)}


def encode_offsets(offsets: np.ndarray) -> bytes:
    """The bytes NNFDIV compresses: dt plane, dy plane, dx plane; int16 little-endian, C order."""
    if offsets.ndim != 4 or offsets.shape[-1] != 3:
        raise ValueError(f"offsets must be (T, H, W, 3), got {offsets.shape}")
    planes = np.moveaxis(np.asarray(offsets), -1, 0).astype("<i2")
    return np.ascontiguousarray(planes).tobytes()


def nnf_div(offsets: np.ndarray) -> float:
    """zlib (level 9) compressed size of the encoded offsets over their raw size."""
    raw = encode_offsets(offsets)
    return len(zlib.compress(raw, 9)) / len(raw)


# --- patches -------------------------------------------------------------------------------------

def check_clip(name: str, clip: np.ndarray) -> None:
    """Refuse a clip PatchMatch cannot read (wrong layout, or smaller than one patch)."""
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 (N, H, W, 3) frames, got {clip.dtype} {clip.shape}")
    if min(clip.shape[:3]) < PATCH:
        raise ValueError(f"{name} must have at least {PATCH} frames, rows and columns, "
                         f"got {clip.shape[0]}x{clip.shape[1]}x{clip.shape[2]}")


def patch_rows(clip: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T-2, H-2, W-2, 81): every valid 3x3x3 patch as one row."""
    win = sliding_window_view(clip, (PATCH, PATCH, PATCH), axis=(0, 1, 2))  # (..., 3, 3, 3, 3)
    return np.ascontiguousarray(win).reshape(*win.shape[:3], PATCH_VALUES)


def _pca_basis(rows: np.ndarray, dims: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean (81,) and the `dims` leading principal axes (81, dims) of a sample of patch rows."""
    sample = rows[rng.choice(len(rows), size=min(len(rows), 200_000), replace=False)]
    sample = sample.astype(np.float32) / 255.0
    mean = sample.mean(axis=0)
    centred = sample - mean
    cov = centred.T @ centred / max(1, len(sample) - 1)
    _, vecs = np.linalg.eigh(cov.astype(np.float64))
    return mean, vecs[:, ::-1][:, :dims].astype(np.float32)


def _descriptors(rows: np.ndarray, mean: np.ndarray | None, basis: np.ndarray | None,
                 chunk: int) -> np.ndarray:
    """Search descriptors: PCA projections (float32), or the raw uint8 rows when exact."""
    if basis is None:
        return rows
    out = np.empty((len(rows), basis.shape[1]), np.float32)
    for s in range(0, len(rows), chunk):
        block = rows[s:s + chunk].astype(np.float32) / 255.0
        out[s:s + chunk] = (block - mean) @ basis
    return out


def _sq_dist(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Row-wise sum of squared differences (float32), for uint8 rows or float descriptors."""
    d = q.astype(np.float32) - r  # uint8 - uint8 would wrap; promote first
    return np.einsum("ij,ij->i", d, d)


# --- PatchMatch ----------------------------------------------------------------------------------

class _Search:
    """State of one PatchMatch run: the current matches (N, 3) and their search distances (N,)."""

    def __init__(self, qdesc, rdesc, qgrid, rgrid, rng, chunk):
        self.qdesc, self.rdesc = qdesc, rdesc
        self.qgrid, self.rgrid = qgrid, np.array(rgrid)
        self.rng, self.chunk = rng, chunk
        self.rstride = np.array([rgrid[1] * rgrid[2], rgrid[2], 1])
        n = int(np.prod(qgrid))
        self.match = np.stack([rng.integers(0, e, size=n) for e in rgrid], axis=1).astype(np.int32)
        self.best = self.distance(self.match)

    def distance(self, cand: np.ndarray) -> np.ndarray:
        flat = cand @ self.rstride
        out = np.empty(len(cand), np.float32)
        for s in range(0, len(cand), self.chunk):
            e = s + self.chunk
            out[s:e] = _sq_dist(self.qdesc[s:e], self.rdesc[flat[s:e]])
        return out

    def offer(self, cand: np.ndarray) -> None:
        """Keep the candidate wherever it is closer than the current match."""
        np.clip(cand, 0, self.rgrid - 1, out=cand)
        d = self.distance(cand)
        better = d < self.best
        self.match[better] = cand[better]
        self.best[better] = d[better]

    def propagate(self, axis: int, step: int) -> None:
        """Candidate for p: match(p - step*e) + step*e, from the neighbour `step` away along `axis`."""
        grid = self.match.reshape(*self.qgrid, 3)
        for sign in (1, -1):
            if step >= self.qgrid[axis]:
                continue
            cand = grid.copy()
            dst = [slice(None)] * 3
            src = [slice(None)] * 3
            if sign > 0:
                dst[axis], src[axis] = slice(step, None), slice(None, -step)
            else:
                dst[axis], src[axis] = slice(None, -step), slice(step, None)
            cand[tuple(dst)] = grid[tuple(src)]
            cand[tuple(dst) + (axis,)] += sign * step
            self.offer(cand.reshape(-1, 3))

    def random_search(self) -> None:
        """Samples around the current match in windows from the whole reference down to 1 pixel."""
        radius = self.rgrid.astype(np.float64)
        while radius.max() >= 1.0:
            r = np.floor(radius).astype(np.int32)
            jitter = np.stack([self.rng.integers(-r[a], r[a] + 1, size=len(self.match))
                               for a in range(3)], axis=1).astype(np.int32)
            self.offer(self.match + jitter)
            radius /= 2.0


def nearest_neighbour_field(query: np.ndarray, reference: np.ndarray,
                            options: PatchMatchOptions = PatchMatchOptions()) -> NNFResult:
    """PatchMatch of every 3x3x3 patch of `query` into `reference` (both uint8 (N, H, W, 3))."""
    check_clip("query", query)
    check_clip("reference", reference)
    options.validate()
    rng = np.random.default_rng(options.seed)
    qrows, rrows = patch_rows(query), patch_rows(reference)
    qgrid, rgrid = qrows.shape[:3], rrows.shape[:3]
    qrows, rrows = qrows.reshape(-1, PATCH_VALUES), rrows.reshape(-1, PATCH_VALUES)

    if options.search_dims:
        mean, basis = _pca_basis(rrows, options.search_dims, rng)
    else:
        mean = basis = None
    search = _Search(_descriptors(qrows, mean, basis, options.chunk),
                     _descriptors(rrows, mean, basis, options.chunk),
                     qgrid, rgrid, rng, options.chunk)
    # Jump steps let good matches spread across a whole frame in a few vectorised rounds (each round
    # updates all patches at once, unlike the original's sequential scan that carries a match along
    # a row in one pass); the step-1 rounds keep fine coherence.
    jumps = [1 << j for j in range(int(np.log2(max(qgrid[1:]))), 0, -1)]
    for it in range(options.iterations):
        for axis in range(3):
            search.propagate(axis, 1)
        jump = jumps[it % len(jumps)] if jumps else 1
        for axis in (1, 2):
            search.propagate(axis, jump)
        search.random_search()

    match = search.match
    dist = np.empty(len(match), np.float32)
    flat = match @ search.rstride
    for s in range(0, len(match), options.chunk):
        e = s + options.chunk
        dist[s:e] = _sq_dist(qrows[s:e], rrows[flat[s:e]])
    dist /= PATCH_VALUES * 255.0 ** 2
    qpos = np.stack(np.unravel_index(np.arange(len(match)), qgrid), axis=1)
    offsets = (match - qpos).astype(np.int16).reshape(*qgrid, 3)
    return NNFResult(offsets, dist.reshape(qgrid), tuple(int(e) for e in rgrid))
