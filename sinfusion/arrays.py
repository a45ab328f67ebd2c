"""The few array operations the sampling loop does itself, for host and device arrays alike.

The loop (sinfusion.sampling) passes each step's output back into the next request unchanged, so a
runtime that answers with device tensors (runtimes/torch_compiled.py) keeps a frame on its device from
step to step: no host round trip inside a frame. Where the loop combines arrays itself (stacking a
batch, the Interpolator's two conditioning frames, noising a frame for the correction) it goes through
these functions, which keep numpy arrays numpy (the very same operations as before, so the ONNX
Runtime and torch-cpu paths are unchanged bit for bit) and put everything on the device of the first
tensor when one is a torch tensor. A frame leaves the device once, through `to_host` or `to_uint8`.

torch is imported only when a tensor is actually seen: an ONNX Runtime server never imports it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .frames import to_uint8 as _host_to_uint8


def is_host(a) -> bool:
    """A numpy array (or scalar): what every runtime but the device-resident ones works with."""
    return isinstance(a, (np.ndarray, np.generic))


def _first_tensor(arrays: Sequence):
    return next((a for a in arrays if a is not None and not is_host(a)), None)


def like(a, reference):
    """`a` as an array of `reference`'s kind: numpy stays numpy; next to a tensor, a float32 tensor on
    its device (a host array is uploaded, asynchronously where the source allows)."""
    if is_host(reference):
        return a
    import torch

    if isinstance(a, torch.Tensor):
        return a.to(reference.device, torch.float32)
    src = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return src.to(reference.device, non_blocking=True)


_SHARED_COPIES: dict[tuple[int, str], object] = {}


def shared_like(a, reference):
    """`like`, for a host array that many streams share and none changes (a bundle's clip
    layouts): one copy per device, kept while `a` lives, not one per stream."""
    if is_host(reference) or not is_host(a):
        return like(a, reference)
    key = (id(a), str(reference.device))
    copy = _SHARED_COPIES.get(key)
    if copy is None:
        # a copy of the host array first: a tensor on the CPU would share its memory, and keep it
        # (and so the entry) alive for ever
        copy = _SHARED_COPIES[key] = like(np.array(a, np.float32), reference)
        weakref.finalize(a, _SHARED_COPIES.pop, key, None)
    return copy


def stack(arrays: Sequence):
    """np.stack, or torch.stack on the device of the first tensor among them."""
    ref = _first_tensor(arrays)
    if ref is None:
        return np.stack(arrays)
    import torch

    return torch.stack([like(a, ref) for a in arrays])


def concat(arrays: Sequence):
    """Concatenation along the first axis (channels of one frame), host or device as `stack`."""
    ref = _first_tensor(arrays)
    if ref is None:
        return np.concatenate(arrays, axis=0)
    import torch

    return torch.cat([like(a, ref) for a in arrays], dim=0)


@functools.lru_cache(maxsize=32)
def _mirrored_index(length: int, margin: int) -> np.ndarray:
    """Which of a side's `length` pixels each of its `length + 2 * margin` mirrored ones shows."""
    index = np.pad(np.arange(length), margin, mode="reflect" if length > 1 else "edge")
    index.setflags(write=False)  # shared by every call (cached)
    return index


def pad_mirrored(frame, margin: int):
    """A (C, H, W) frame mirrored `margin` px out on every side (0: itself).

    The mirror is about the edge pixels, which are not repeated (numpy's "reflect"); a side shorter
    than the margin is mirrored again, and a side of one pixel is repeated. What lies past the edge
    thus carries the frame's own texture, where a repeated edge is streaks of one colour. Host and
    device gather the same pixels, by one index per side.
    """
    if margin == 0:
        return frame
    if is_host(frame):
        rows, cols = (_mirrored_index(int(n), margin) for n in frame.shape[1:])
        return frame.take(rows, axis=1).take(cols, axis=2)
    rows, cols = (_mirrored_index_on(int(n), margin, frame.device) for n in frame.shape[1:])
    return frame.index_select(1, rows).index_select(2, cols)


@functools.lru_cache(maxsize=32)
def _mirrored_index_on(length: int, margin: int, device):
    """_mirrored_index as a tensor on `device`, made once: no copy to the device per frame."""
    import torch

    return torch.as_tensor(_mirrored_index(length, margin), device=device)


def crop_margin(frame, margin: int):
    """The inverse of pad_mirrored: the (C, H, W) frame without `margin` px on every side."""
    return frame if margin == 0 else frame[:, margin:-margin, margin:-margin]


def _side_matrix(length: int, taps: np.ndarray) -> np.ndarray:
    """(length, length) float32: the filter of `taps` (odd count, centred) along one side, the side
    mirrored past its ends as `pad_mirrored` does."""
    radius = len(taps) // 2
    source = _mirrored_index(length, radius)  # padded position -> pixel of the side
    m = np.zeros((length, length), np.float64)
    for offset, weight in enumerate(taps):  # output i reads padded position i + offset
        np.add.at(m, (np.arange(length), source[offset:offset + length]), weight)
    m = m.astype(np.float32)
    m.setflags(write=False)  # shared by every call (cached)
    return m


@functools.lru_cache(maxsize=32)
def _blur_matrix(length: int, sigma: float) -> np.ndarray:
    """A Gaussian blur of standard deviation `sigma` px along one side; each row sums to 1."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return _side_matrix(length, taps / taps.sum())


@functools.lru_cache(maxsize=32)
def _window_matrix(length: int, radius: int) -> np.ndarray:
    """The sum over the 2 radius + 1 pixels around each one along one side."""
    return _side_matrix(length, np.ones(2 * radius + 1))


@functools.lru_cache(maxsize=32)
def _on_device(side_matrix, length: int, size, device):
    """A side matrix (`_blur_matrix` or `_window_matrix` of `length` and `size`) as a tensor on
    `device`, made once."""
    import torch

    return torch.tensor(side_matrix(length, size), device=device)  # a copy: the cache is read-only


def layout(frame, sigma: float):
    """A (C, H, W) frame's layout: the frame blurred by a Gaussian of `sigma` px, mirrored past its
    edges. A matrix product on each side, the same arithmetic on host and device."""
    h, w = (int(n) for n in frame.shape[1:])
    if is_host(frame):
        down, across = _blur_matrix(h, sigma), _blur_matrix(w, sigma)
        return (down @ frame @ across.T).astype(np.float32)
    down, across = (_on_device(_blur_matrix, n, sigma, frame.device) for n in (h, w))
    return down @ frame @ across.T


def nearest_layout(own, clip, radius: int, first=None):
    """Each pixel of the clip's layouts `clip` (N, C, H, W) whose neighbourhood is nearest the
    frame's layout `own` (C, H, W): at every pixel, the clip frame with the least summed squared
    difference over the (2 radius + 1)^2 window around it (mirrored past the frame's edges), the
    first of equals. Where the clip holds still every frame agrees; where it moves, a pixel takes
    the clip's state that its surroundings look most like. `first` (C, H, W), where given, is a
    candidate before the clip's, without copying the clip (the clip's layouts are shared by every
    stream of a bundle, a stream's own first frame is not)."""
    c, h, w = (int(n) for n in own.shape)
    error = ((clip - own[None]) ** 2).sum(1)  # (N, H, W)
    offset = 0 if first is None else 1  # candidate i is clip frame i - offset
    if first is not None:
        error = concat([((first - own) ** 2).sum(0)[None], error])
    if is_host(own):
        best = (_window_matrix(h, radius) @ error @ _window_matrix(w, radius).T).argmin(axis=0)
        index = np.broadcast_to(np.maximum(best - offset, 0)[None, None], (1, c, h, w))
        picked = np.take_along_axis(clip, index, axis=0)[0]
        return picked if first is None else np.where(best == 0, first, picked)
    down, across = (_on_device(_window_matrix, n, radius, own.device) for n in (h, w))
    best = (down @ error @ across.T).argmin(dim=0)
    picked = clip.gather(0, (best - offset).clamp(min=0).expand(1, c, h, w))[0]
    if first is None:
        return picked
    import torch

    return torch.where(best == 0, first, picked)


def rows(batch) -> list:
    """A batched output split into its samples: float32 numpy rows, or views of the device tensor."""
    if is_host(batch) or not hasattr(batch, "unbind"):
        return [np.asarray(o, dtype=np.float32) for o in batch]
    return list(batch.unbind(0))


def _channel_stats(x):
    """Each channel's mean and standard deviation of a frame (3, H, W), shaped (3, 1, 1), where x is."""
    if is_host(x):
        return x.mean(axis=(1, 2), keepdims=True), x.std(axis=(1, 2), keepdims=True)
    return x.mean(dim=(1, 2), keepdim=True), x.std(dim=(1, 2), keepdim=True, correction=0)


def _set_channels(x, mean, std):
    m, s = _channel_stats(x)
    return (x - m) / (s + 1e-6) * std + mean


def match_channels(x, mean: Sequence[float], std: Sequence[float]):
    """A frame (3, H, W) with each channel's mean and standard deviation set to `mean` and `std`."""
    return _set_channels(x, like(np.asarray(mean, np.float32)[:, None, None], x),
                         like(np.asarray(std, np.float32)[:, None, None], x))


def _colour_moments(x):
    """A frame's (3, H, W) mean colour (3, 1) and colour covariance (3, 3), where x is."""
    if is_host(x):
        flat = x.reshape(3, -1).astype(np.float64)
        mean = flat.mean(axis=1, keepdims=True)
        centred = flat - mean
        return mean, centred @ centred.T / flat.shape[1]
    flat = x.reshape(3, -1).double()  # as numpy's: float32 sums of a frame differ in the 4th digit
    mean = flat.mean(dim=1, keepdim=True)
    centred = flat - mean
    return mean, centred @ centred.T / flat.shape[1]


def _colour_factor(c):
    """The lower Cholesky factor of a colour covariance (3, 3), a small ridge keeping a grey frame's
    empty colour directions finite (its covariance has rank 1). On a device it does not wait for
    the device (cholesky_ex: no error check; eigh would synchronise every frame)."""
    if is_host(c):
        return np.linalg.cholesky(c + 1e-6 * np.eye(3))
    import torch

    return torch.linalg.cholesky_ex(c + 1e-6 * torch.eye(3, device=c.device, dtype=c.dtype))[0]


def _colour_transform(target, current):
    """T with T C T^T = target for the covariance C whose factor is `current`: target L^-1."""
    if is_host(current):
        return target @ np.linalg.inv(current)
    import torch

    eye = torch.eye(3, device=current.device, dtype=current.dtype)
    return target @ torch.linalg.solve_triangular(current, eye, upper=False)


def match_covariance(x, mean: Sequence[float], cov: Sequence[Sequence[float]], rounds: int = 8):
    """A frame (3, H, W) with mean colour `mean` (3) and colour covariance `cov` (3 x 3), such as a
    clip's palette, clamped to [-1, 1], where x is. For one frame drawn from noise: frame after
    frame a stream keeps its colours with `keep_colours`, which does not re-draw a lost hue. The
    rescale is repeated on the clamped frame, giving back most of the contrast the clamp takes; on
    the host the rounds stop once a rescale clamps nothing (it is then exact), a device runs them
    all rather than wait for the device to say so."""
    mean = like(np.asarray(mean, np.float64).reshape(3, 1), x)
    target = like(_colour_factor(np.asarray(cov, np.float64)), x)
    if not is_host(x):
        mean, target = mean.double(), target.double()
    shape = tuple(x.shape)
    for _ in range(rounds):
        m, c = _colour_moments(x)
        flat = _colour_transform(target, _colour_factor(c)) @ (x.reshape(3, -1) - m) + mean
        if is_host(x):
            inside = -1.0 <= flat.min() and flat.max() <= 1.0
            x = np.clip(flat, -1.0, 1.0).astype(np.float32).reshape(shape)
            if inside:
                break
        else:
            x = flat.clamp(-1.0, 1.0).reshape(shape).to(x.dtype)
    return x


@dataclass(frozen=True)
class Colours:
    """A frame's colours as keep_colours sets them: each channel's mean and standard deviation
    (3, 1) and the saturation (1, 1), the mean over its pixels of the spread of their channels (max
    less min), float64, on the side of the frame they came from. A stream computes its start
    frame's once."""

    mean: object
    std: object
    saturation: object

    def on_side_of(self, x) -> Colours:
        """The same colours next to x (host or device): 7 numbers cross at most."""
        if is_host(x) == is_host(self.mean):
            return self
        parts = (self.mean, self.std, self.saturation)
        if is_host(x):
            return Colours(*(to_host(a).astype(np.float64) for a in parts))
        return Colours(*(like(a, x).double() for a in parts))


def _mean(a, axis: int):
    """a's mean along `axis`, kept as a length-1 axis, where a is."""
    return a.mean(axis=axis, keepdims=True) if is_host(a) else a.mean(dim=axis, keepdim=True)


def _flat_stats(flat):
    """Each channel's mean and standard deviation (3, 1) of a frame's pixels (3, N), where it is
    (the mean of squares: torch's std is several times slower on a CPU)."""
    mean = _mean(flat, 1)
    centred = flat - mean
    variance = _mean(centred * centred, 1)
    return mean, (np.sqrt(variance) if is_host(flat) else variance.sqrt())


def _saturation(flat):
    """A frame's saturation (1, 1): the mean over its pixels (3, N) of max less min of their channels."""
    if is_host(flat):
        return (flat.max(axis=0) - flat.min(axis=0)).mean().reshape(1, 1)
    return (flat.amax(dim=0) - flat.amin(dim=0)).mean().reshape(1, 1)


def _as_double(flat):
    return flat.astype(np.float64) if is_host(flat) else flat.double()


def colours_of(frame) -> Colours:
    """The colours of a frame (3, H, W), where it is."""
    flat = _as_double(frame.reshape(3, -1))
    return Colours(*_flat_stats(flat), _saturation(flat))


def _standardised(flat, colours: Colours):
    """Pixels (3, N) with each channel's mean and standard deviation set to the colours'."""
    m, s = _flat_stats(flat)
    return (flat - m) / (s + 1e-6) * colours.std + colours.mean


def _with_colours(flat, colours: Colours, evaluations: int):
    """Pixels (3, N) as grey + g chroma (the pixels' grey, and what each channel adds to it), each
    channel then standardised to the colours' mean and deviation, with the gain g that gives the
    colours' saturation: the secant method on its logarithm from no gain, a fixed count of
    saturations measured, so that a device is not asked whether it has converged (6: to 1e-5 of
    it for a frame three times as saturated; a stream's next frame, within a few percent of it,
    is there in 3), the gain within MAX_SATURATION_GAIN either way (standardised channels cap how
    saturated a frame can get: one out of reach is met as nearly as that allows). A channel of
    grey + g chroma has a mean and variance linear and quadratic in g, so each measurement is one
    pass over the pixels."""
    if is_host(flat):
        log, exp, sqrt, where = np.log, np.exp, np.sqrt, np.where

        def bounded(u):
            return np.clip(u, -LOG_MAX_GAIN, LOG_MAX_GAIN)
    else:
        import torch

        log, exp, sqrt, where = torch.log, torch.exp, torch.sqrt, torch.where

        def bounded(u):
            return u.clamp(-LOG_MAX_GAIN, LOG_MAX_GAIN)

    grey = _mean(flat, 0)
    chroma = flat - grey
    grey_mean, chroma_mean = _mean(grey, 1), _mean(chroma, 1)
    grey_dev, chroma_dev = grey - grey_mean, chroma - chroma_mean
    grey_var = _mean(grey_dev * grey_dev, 1)
    cross, chroma_var = _mean(grey_dev * chroma_dev, 1), _mean(chroma_dev * chroma_dev, 1)

    def coefficients(gain):  # the standardised channels as a grey + b chroma + c
        variance = grey_var + 2.0 * gain * cross + gain * gain * chroma_var
        scale = colours.std / (sqrt(variance * (variance > 0)) + 1e-6)
        return scale, gain * scale, colours.mean - scale * (grey_mean + gain * chroma_mean)

    def measured(u):
        a, b, c = coefficients(exp(u))
        return _saturation(a * grey + b * chroma + c) + tiny

    tiny = 1e-8  # a grey frame has no chroma to scale, a grey target none to keep
    target = colours.saturation + tiny
    u0 = 0.0 * target
    h0 = measured(u0)
    u1 = bounded(log(target / h0))
    for _ in range(evaluations - 1):
        h1 = measured(u1)
        moved = (h1 - h0) != 0
        step = (target - h1) * (u1 - u0) / where(moved, h1 - h0, 1.0)
        u0, h0, u1 = u1, h1, bounded(u1 + where(moved, step, 0.0 * step))
    a, b, c = coefficients(exp(u1))
    return a * grey + b * chroma + c


MAX_SATURATION_GAIN = 4.0
LOG_MAX_GAIN = float(np.log(MAX_SATURATION_GAIN))


def keep_colours(x, colours: Colours, rounds: int = 8):
    """x (3, H, W) given `colours` (so a frame's brightness, contrast and saturation), as it will be
    shown: clamped to [-1, 1]. Each channel's mean and standard deviation are set, and the chroma
    (each pixel less its grey) scaled so the frame's saturation is the colours' (`_with_colours`).
    It holds a stream to its start frame's colours without the colour covariance: where the
    Predictor blurs a saturated thing away (fish's red fish), restoring the covariance stretches
    that very hue over every pixel, and fish's school of orange fish turned to red streaks frame
    after frame (docs/training.md, "Colours without the covariance"). Clamping after a rescale
    takes back some of the contrast it gave, so each channel's rescale is repeated on the clamped
    frame (its saturation is left as the clamp has it, a little under the colours'): each round
    takes about four fifths of what is left even with a tenth of the pixels at the limits. On the host the rounds stop once a rescale clamps nothing (it is
    then exact); a device runs them all rather than wait for the device to say so. The colours
    may come from the other side (a stream's host start frame, device frames)."""
    colours = colours.on_side_of(x)
    host, shape, dtype = is_host(x), tuple(x.shape), x.dtype
    flat = _as_double(x.reshape(3, -1))
    flat = _with_colours(flat, colours, evaluations=6)
    for _ in range(rounds):
        if host and -1.0 <= flat.min() and flat.max() <= 1.0:
            break
        flat = _standardised(np.clip(flat, -1.0, 1.0) if host else flat.clamp(-1.0, 1.0), colours)
    if host:
        return np.clip(flat, -1.0, 1.0).astype(np.float32).reshape(shape)
    return flat.clamp(-1.0, 1.0).reshape(shape).to(dtype)


def to_host(a) -> np.ndarray:
    """A float32 numpy array (a no-op for numpy): where a frame leaves its device as floats."""
    if is_host(a):
        return a
    return a.detach().to("cpu", copy=False).float().numpy()


def to_uint8(x) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), as sinfusion.frames.to_uint8. A device
    tensor is converted on its device, so the frame crosses to the host once, as bytes."""
    if is_host(x):
        return _host_to_uint8(x)
    import torch

    y = ((x.float() + 1.0) * 127.5 + 0.5).clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(y.movedim(-3, -1).cpu().numpy())
