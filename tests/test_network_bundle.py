"""The backbone's shapes and locality; bundle round trip and validation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sinfusion import sampling as S
from sinfusion.arrays import (_colour_moments, colours_of, crop_margin, keep_colours, layout,
                             match_channels, match_covariance, nearest_layout, pad_mirrored)
from sinfusion.bundle import Bundle, BundleError
from sinfusion.config import NetworkConfig, default_config
from sinfusion.network import DiffusionStep, SinFusionNet
from sinfusion.runtimes.torch_runtime import TorchDenoiser


@pytest.mark.parametrize("role,cin", [("predictor", 6), ("projector", 3), ("interpolator", 9)])
def test_network_shapes(role, cin):
    net = SinFusionNet(default_config(role, channels=8, blocks=2))
    x = torch.randn(2, cin, 12, 20)
    k = torch.tensor([1.0, -3.0]) if role == "predictor" else None
    assert net(x, torch.tensor([1.0, 50.0]), k).shape == (2, 3, 12, 20)


def test_receptive_field_is_local():
    """No down-sampling, no attention: a pixel far outside the receptive field has no influence."""
    cfg = default_config("projector", channels=8, blocks=2)
    net = SinFusionNet(cfg).eval()
    x = torch.randn(1, 3, 8, 64)
    y = x.clone()
    y[..., -1] += 5.0  # change the last column only
    with torch.no_grad():
        a, b = net(x, torch.tensor([5.0])), net(y, torch.tensor([5.0]))
    changed = (a - b).abs().amax(dim=(0, 1, 2)) > 0
    assert changed[-1] and not changed[: 64 - cfg.receptive_field].any()


def test_config_rejects_unknown_keys_and_odd_depth():
    with pytest.raises(ValueError, match="unknown network config keys"):
        NetworkConfig.from_dict({"channels": 8, "heads": 4})
    with pytest.raises(ValueError, match="even"):
        NetworkConfig(blocks=3)
    with pytest.raises(ValueError, match="valid roles"):
        default_config("critic")


def test_step_module_matches_the_formula():
    net = SinFusionNet(default_config("projector", channels=8, blocks=2)).eval()
    step = DiffusionStep(net)
    x, noise = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    coef = torch.tensor([[0.0, 1.0, 0.7, 0.2, 0.1]])
    t = torch.tensor([10.0])
    with torch.no_grad():
        x0 = net(x, t).clamp(-1, 1)
        expected = 0.7 * x0 + 0.2 * x + 0.1 * noise
        torch.testing.assert_close(step(x, None, t, None, coef, noise), expected)


def test_bundle_round_trip(tiny_bundle):
    again = Bundle.open(tiny_bundle.path)
    assert again.roles == ["predictor", "projector", "interpolator"]
    assert again.frames().shape == (8, 16, 24, 3)
    den = TorchDenoiser(again)
    start = (again.frames()[0].transpose(2, 0, 1).astype(np.float32) / 127.5) - 1
    frames = list(S.run(S.extrapolate(again.sampling(), start, 2, 1, np.random.default_rng(0),
                                      S.SamplingOptions(steps=3)), den))
    assert len(frames) == 2 and frames[0].image.shape == (3, 16, 24)


def test_bundle_refuses_what_it_does_not_understand(tiny_bundle, tmp_path):
    path = tiny_bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        Bundle.open(tiny_bundle.path)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(tiny_bundle.path)
    with pytest.raises(BundleError, match="no such bundle"):
        Bundle.open(tmp_path / "missing")


def test_damaged_weights_are_refused(tiny_bundle):
    w = tiny_bundle.path / "weights" / "projector.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.open(tiny_bundle.path).weights("projector")


def test_channel_norm_normalises_each_pixel_over_channels():
    from sinfusion.network import ChannelLayerNorm

    norm = ChannelLayerNorm(5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 6.0))
        norm.bias.fill_(0.5)
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + 0.5
    torch.testing.assert_close(norm(x), expected)


def test_bundle_records_the_clips_palette_and_generate_paints_with_it(tiny_bundle):
    """Generate's first frame gets the clip's mean colour and colour covariance (each channel's mean
    and contrast from a palette recorded before the covariance was); a manifest without a palette
    (older bundles) loads and generates as before; a malformed one is refused."""
    frames = tiny_bundle.frames()
    palette = tiny_bundle.manifest.palette
    assert palette == S.Palette.of(frames)
    x = frames.astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(palette.mean, x.mean(axis=(1, 2)).mean(axis=0), atol=1e-5)
    covs = [np.cov(f.reshape(-1, 3).T, bias=True) for f in x]
    np.testing.assert_allclose(palette.cov, np.mean(covs, axis=0), atol=1e-5)
    sampling = Bundle.open(tiny_bundle.path).sampling()
    assert sampling.palette == palette

    def first_frame(sampling):
        return S.run_to_value(S.generate_frame(sampling, (16, 24), np.random.default_rng(0),
                                               S.SamplingOptions(steps=3)), TorchDenoiser(tiny_bundle))

    first = first_frame(sampling)
    mean, cov = _colour_moments(first)
    np.testing.assert_allclose(mean[:, 0], palette.mean, atol=1e-4)
    np.testing.assert_allclose(cov, palette.cov, atol=1e-4)
    older = dataclasses.replace(sampling, palette=dataclasses.replace(palette, cov=None))
    first = first_frame(older)
    np.testing.assert_allclose(first.mean(axis=(1, 2)), palette.mean, atol=1e-4)
    np.testing.assert_allclose(first.std(axis=(1, 2)), palette.std, atol=1e-4)
    # the same arithmetic on a device tensor (the device-resident runtime's frames)
    frame = x[0].transpose(2, 0, 1).copy()
    np.testing.assert_allclose(match_channels(torch.from_numpy(frame), palette.mean, palette.std).numpy(),
                               match_channels(frame, palette.mean, palette.std), atol=1e-5)
    np.testing.assert_allclose(match_covariance(torch.from_numpy(frame), palette.mean, palette.cov).numpy(),
                               match_covariance(frame, palette.mean, palette.cov), atol=1e-5)

    path = tiny_bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    assert S.Palette.from_dict(data["palette"]) == palette
    del data["palette"]["cov"]
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).sampling().palette.cov is None
    del data["palette"]
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).sampling().palette is None
    for bad, needle in (({"mean": [0.1, 0.2], "std": [0.1, 0.1, 0.1]}, "palette needs 3 means"),
                        ({"mean": [0.1] * 3, "std": [0.1] * 3, "cov": [[0.1, 0.2], [0.2, 0.1]]},
                         "cov must be a symmetric 3 x 3")):
        data["palette"] = bad
        path.write_text(json.dumps(data))
        with pytest.raises(BundleError, match=needle):
            Bundle.open(tiny_bundle.path)


def test_manifest_records_the_correction_weight(tiny_bundle):
    """Written and read back; older manifests without it correct fully (the paper's); out of (0, 1]
    is refused with the field named."""
    path = tiny_bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    assert data["correction_weight"] == 1.0
    data["correction_weight"] = 0.5
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).sampling().correction_weight == 0.5
    assert data["correction_passes"] == 1
    data["correction_passes"] = 2
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).sampling().correction_passes == 2
    data["correction_passes"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="correction_passes must be in"):
        Bundle.open(tiny_bundle.path)
    data["correction_passes"] = 1
    del data["correction_weight"]
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).manifest.correction_weight == 1.0
    data["correction_weight"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="correction_weight must be in"):
        Bundle.open(tiny_bundle.path)


def assert_same_colours(x, reference, atol=1e-4, clamped=False):
    """Each channel's mean and standard deviation and the saturation, as keep_colours keeps them;
    `clamped` where the clamp took part of the frame, whose saturation is then left a little off
    (within 1% here: a clip's frames clamp far less) while the contrast is given back."""
    x, reference = (np.asarray(a, np.float64).reshape(3, -1) for a in (x, reference))
    np.testing.assert_allclose(x.mean(1), reference.mean(1), atol=atol)
    np.testing.assert_allclose(x.std(1), reference.std(1), atol=atol)
    saturation, expected = np.ptp(x, axis=0).mean(), np.ptp(reference, axis=0).mean()
    if clamped:
        assert abs(saturation - expected) < 0.01 * expected
    else:
        np.testing.assert_allclose(saturation, expected, atol=atol)


def test_correction_keeps_the_frames_colours(tiny_bundle):
    """The Projector's correction mends a frame without changing its colours (each channel's mean
    and contrast and its saturation: a bias would add up over a stream), or gives it those of
    `colours`; the bundle's correction weight keeps that share of the Projector's change; off, it returns the frame."""
    sampling, denoiser = tiny_bundle.sampling(), TorchDenoiser(tiny_bundle)
    frames = tiny_bundle.frames().astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    frame = frames[3]
    on = S.SamplingOptions(correction_steps=2)

    def corrected(sampling, anchor=None):
        return S.run_to_value(S.correct(sampling, frame, np.random.default_rng(0), on, anchor),
                              denoiser)

    fixed = corrected(sampling)
    assert np.abs(fixed - frame).mean() > 1e-3  # the Projector did change it
    # an untrained Projector's frame: much of it clamped
    assert_same_colours(fixed, frame, clamped=True)
    assert_same_colours(corrected(sampling, S.StreamAnchor(colours_of(frames[0]))), frames[0],
                        clamped=True)
    assert sampling.correction_weight == 1.0  # the tiny preset's (and the paper's)
    half = corrected(dataclasses.replace(sampling, correction_weight=0.5))
    assert_same_colours(half, frame, clamped=True)
    rng, rs = np.random.default_rng(0), sampling["projector"]  # the same draws, by hand
    raw = S.run_to_value(S.denoise("projector", rs, S.noise_to_level(frame, rs.schedule, 2, rng), rng,
                                   start=2), denoiser)
    np.testing.assert_allclose(half, keep_colours(frame + 0.5 * (raw - frame), colours_of(frame)), atol=1e-5)
    np.testing.assert_allclose(fixed, keep_colours(raw, colours_of(frame)), atol=1e-5)
    # two passes: the second corrects the first's result, with the next draws
    twice = corrected(dataclasses.replace(sampling, correction_weight=0.5, correction_passes=2))
    x = frame + 0.5 * (raw - frame)
    again = S.run_to_value(S.denoise("projector", rs, S.noise_to_level(x, rs.schedule, 2, rng), rng,
                                     start=2), denoiser)
    np.testing.assert_allclose(twice, keep_colours(x + 0.5 * (again - x), colours_of(frame)), atol=1e-5)
    off = S.SamplingOptions(correction_steps=0)
    assert S.run_to_value(S.correct(sampling, frame, np.random.default_rng(0), off), denoiser) is frame


def test_keep_colours_holds_after_the_clamp_on_host_and_device():
    """A rescaled frame is clamped to [-1, 1] as it will be shown, and still has the reference's
    colours (the clamp's lost contrast given back); a grey frame stays grey; device = host."""
    rng = np.random.default_rng(1)
    reference = np.clip(rng.normal(0.3, 0.6, (3, 16, 24)), -1, 1).astype(np.float32)  # 12% at +-1
    x = rng.normal(0, 0.2, (3, 16, 24)).astype(np.float32)
    kept = keep_colours(x, colours_of(reference))
    assert kept.dtype == np.float32 and kept.min() >= -1 and kept.max() <= 1
    assert_same_colours(kept, reference, atol=5e-4, clamped=True)
    np.testing.assert_allclose(keep_colours(torch.from_numpy(x), colours_of(torch.from_numpy(reference))).numpy(),
                               kept, atol=1e-4)
    grey = np.repeat(rng.normal(0, 0.3, (1, 16, 24)), 3, axis=0).astype(np.float32)
    kept = keep_colours(grey * 0.5, colours_of(grey))
    assert np.isfinite(kept).all()
    np.testing.assert_allclose(kept[0], kept[1], atol=1e-4)  # to a hundredth of a grey level
    np.testing.assert_allclose(kept, grey, atol=1e-3)


def test_keep_colours_reaches_a_saturation_far_from_the_frames():
    """A frame half or twice as saturated as its reference gets the reference's saturation (the
    chroma gain's secant search), each channel's mean and contrast, the same on a device; the
    colour covariance is not what is kept: given the colours of a frame whose red and green go
    together, a frame whose channels do not stays far from that."""
    rng = np.random.default_rng(3)
    reference = rng.normal(0.0, 0.2, (3, 24, 32)).astype(np.float32)  # nothing near the clamp
    grey = reference.mean(axis=0, keepdims=True)
    for gain in (0.5, 2.0):
        x = (grey + gain * (reference - grey)).astype(np.float32)
        kept = keep_colours(x, colours_of(reference))
        assert_same_colours(kept, reference, atol=1e-4)
        np.testing.assert_allclose(keep_colours(torch.from_numpy(x), colours_of(reference)).numpy(), kept,
                                   atol=1e-4)
    base = rng.normal(0.0, 0.3, (1, 24, 32))
    correlated = np.clip(np.concatenate([base, base + rng.normal(0, 0.1, base.shape),
                                         rng.normal(0.0, 0.3, base.shape)]), -1, 1).astype(np.float32)
    kept = keep_colours(reference, colours_of(correlated))
    assert_same_colours(kept, correlated, atol=1e-4, clamped=True)

    def correlation(frame):  # of the red and green channels
        _, cov = _colour_moments(frame)
        return cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])

    assert abs(correlation(reference)) < 0.1 and correlation(correlated) > 0.9
    assert abs(correlation(kept)) < 0.6  # less saturated, so nearer; not the covariance's


def test_a_corrected_stream_keeps_its_first_frames_colours(tiny_bundle):
    """Every corrected frame of an extrapolation is given its start frame's colours, so a frame's
    small error stays one frame's instead of adding up (a stream does not wash out)."""
    frames = tiny_bundle.frames().astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    loop = S.extrapolate(tiny_bundle.sampling(), frames[0], 6, 1, np.random.default_rng(0),
                         S.SamplingOptions(steps=2, method="ddim", correction_steps=1))
    out = [f.image for f in S.run(loop, TorchDenoiser(tiny_bundle))]
    for frame in out:
        assert_same_colours(frame, frames[0], clamped=True)  # an untrained bundle's frames


def test_manifest_records_the_predictor_margin(tiny_bundle):
    """Written and read back; older manifests without it have none (the paper's); out of range is
    refused with the field named."""
    path = tiny_bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    assert data["predictor_margin"] == 0
    data["predictor_margin"] = 8
    path.write_text(json.dumps(data))
    sampling = Bundle.open(tiny_bundle.path).sampling()
    assert sampling.predictor_margin == 8
    assert sampling.canvas("predictor", 16, 24) == (32, 40)
    assert sampling.canvas("projector", 16, 24) == (16, 24)
    del data["predictor_margin"]
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).sampling().predictor_margin == 0
    data["predictor_margin"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"predictor_margin must be in \[0, 64\] px, got -1"):
        Bundle.open(tiny_bundle.path)


def test_the_predictor_works_on_the_frame_mirrored_past_its_edges(tiny_bundle):
    """With a margin the Predictor's steps take the frame padded by its edge pixels and noise of that
    size; the frame is cut back out of the result before the correction; host = device arrays."""
    sampling = dataclasses.replace(tiny_bundle.sampling(), predictor_margin=3)
    frame = tiny_bundle.frames()[2].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    options = S.SamplingOptions(steps=2, method="ddim", correction_steps=0)
    seen = []

    class Recorder(TorchDenoiser):
        def __call__(self, role, x, cond, t, k, coef, noise):
            seen.append((role, x.shape, None if cond is None else cond.copy()))
            return super().__call__(role, x, cond, t, k, coef, noise)

    out = S.run_to_value(S.predict_frame(sampling, frame, 1, np.random.default_rng(0), options),
                         Recorder(tiny_bundle))
    assert out.shape == frame.shape
    assert [(r, s) for r, s, _ in seen] == [("predictor", (1, 3, 22, 30))] * 2
    cond = seen[0][2][0]
    np.testing.assert_array_equal(cond[:, 3:-3, 3:-3], frame)
    # the margin mirrors the frame about its edge rows and columns, which are not repeated
    np.testing.assert_array_equal(cond[:, :3, 3:-3], frame[:, 3:0:-1])  # top: rows 3, 2, 1
    np.testing.assert_array_equal(cond[:, 3:-3, -3:], frame[:, :, -2:-5:-1])  # right
    # by hand: the same draws at the canvas size, the step outputs cropped
    rng, rs = np.random.default_rng(0), sampling["predictor"]
    x = rng.standard_normal(cond.shape, dtype=np.float32)
    x = S.run_to_value(S.denoise("predictor", rs, x, rng, start=rs.schedule.steps, steps=2,
                                 method="ddim", cond=cond, k=1.0), TorchDenoiser(tiny_bundle))
    np.testing.assert_allclose(out, x[:, 3:-3, 3:-3], atol=1e-6)
    device = torch.from_numpy(frame)
    np.testing.assert_array_equal(pad_mirrored(device, 3).numpy(), cond)
    assert crop_margin(pad_mirrored(device, 3), 3).shape == device.shape


@pytest.mark.parametrize("shape, margin", [((3, 4, 6), 8), ((3, 2, 9), 5), ((3, 1, 5), 3), ((3, 9, 9), 0)])
def test_the_mirrored_margin_is_the_same_on_host_and_device(shape, margin):
    """Sides shorter than the margin are mirrored again, a one-pixel side repeated, on numpy and
    torch alike (torch mirrors by less than a side's length at a time)."""
    frame = np.random.default_rng(0).random(shape, dtype=np.float32)
    host = pad_mirrored(frame, margin)
    assert host.shape == (3, shape[1] + 2 * margin, shape[2] + 2 * margin)
    np.testing.assert_array_equal(pad_mirrored(torch.from_numpy(frame), margin).numpy(), host)
    np.testing.assert_array_equal(crop_margin(host, margin), frame)
    if min(shape[1:]) > 1:
        np.testing.assert_array_equal(host, np.pad(frame, ((0, 0), (margin,) * 2, (margin,) * 2),
                                                   mode="reflect"))


def test_manifest_records_the_coarse_correction(tiny_bundle):
    """Written and read back; older manifests have none (the paper's); a level off the Projector's
    schedule or a weight outside (0, 1] is refused with the field named. With a margin, the
    Projector's steps take the frame and the Predictor's canvas."""
    path = tiny_bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    assert (data["coarse_correction_level"], data["coarse_correction_weight"]) == (0, 1.0)
    data.update(coarse_correction_level=3, coarse_correction_weight=0.25, predictor_margin=4)
    path.write_text(json.dumps(data))
    sampling = Bundle.open(tiny_bundle.path).sampling()
    assert (sampling.coarse_correction_level, sampling.coarse_correction_weight) == (3, 0.25)
    assert sampling.sizes("projector", 16, 24) == [(16, 24), (24, 32)]
    assert sampling.sizes("predictor", 16, 24) == [(24, 32)]
    assert sampling.sizes("interpolator", 16, 24) == [(16, 24)]
    assert sampling.canvas("projector", 16, 24) == (16, 24)
    for field in ("coarse_correction_level", "coarse_correction_weight"):
        del data[field]
    path.write_text(json.dumps(data))
    old = Bundle.open(tiny_bundle.path).sampling()
    assert old.coarse_correction_level == 0 and old.sizes("projector", 16, 24) == [(16, 24)]
    steps = data["roles"]["projector"]["schedule"]["steps"]
    for field, value, message in (
            ("coarse_correction_level", steps + 1,
             rf"coarse_correction_level must be in \[0, {steps}\], got {steps + 1}"),
            ("coarse_correction_weight", 1.5, r"coarse_correction_weight must be in \(0, 1\]")):
        path.write_text(json.dumps({**data, field: value}))
        with pytest.raises(BundleError, match=message):
            Bundle.open(tiny_bundle.path)


def test_a_coarse_correction_comes_first_with_the_margin(tiny_bundle):
    """Before the passes at T_corr, the Projector's one-step estimate from the coarse level, made
    on the frame with its edges repeated by the margin and cut back, moves the frame by the coarse
    weight; a request correcting at or above that level (the paper's 3: one ancestral pass from 3),
    or not at all, gets none."""
    sampling = dataclasses.replace(tiny_bundle.sampling(), predictor_margin=2,
                                   coarse_correction_level=3, coarse_correction_weight=0.25,
                                   correction_weight=0.5, correction_passes=1)
    frame = tiny_bundle.frames()[1].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    options = S.SamplingOptions(steps=2, method="ddim", correction_steps=1)
    seen = []

    class Recorder(TorchDenoiser):
        def __call__(self, role, x, cond, t, k, coef, noise):
            seen.append((role, x.shape[-2:], t[0]))
            return super().__call__(role, x, cond, t, k, coef, noise)

    denoiser = Recorder(tiny_bundle)
    out = S.run_to_value(S.correct(sampling, frame, np.random.default_rng(5), options), denoiser)
    assert seen == [("projector", (20, 28), 3.0), ("projector", (16, 24), 1.0)]
    # by hand, with the same draws
    rng, rs, eager = np.random.default_rng(5), sampling["projector"], TorchDenoiser(tiny_bundle)
    noisy = S.noise_to_level(pad_mirrored(frame, 2), rs.schedule, 3, rng)
    estimate = S.run_to_value(S.denoise("projector", rs, noisy, rng, start=3, steps=1,
                                        method="ddim"), eager)
    x = frame + 0.25 * (crop_margin(estimate, 2) - frame)
    fine = S.run_to_value(S.denoise("projector", rs, S.noise_to_level(x, rs.schedule, 1, rng), rng,
                                    start=1), eager)
    np.testing.assert_allclose(out, keep_colours(x + 0.5 * (fine - x), colours_of(frame)), atol=1e-5)
    for correction_steps in (3, 0):
        seen.clear()
        S.run_to_value(S.correct(sampling, frame, np.random.default_rng(5),
                                 dataclasses.replace(options, correction_steps=correction_steps)),
                       denoiser)
        assert [level for *_, level in seen] == ([3.0, 2.0, 1.0] if correction_steps else [])
    record = S.options_record(options, sampling)
    assert (record["coarse_correction_level"], record["coarse_correction_weight"]) == (3, 0.25)
    assert "coarse_correction_level" not in S.options_record(
        dataclasses.replace(options, correction_steps=3), sampling)


def test_a_layout_is_a_gaussian_blur_mirrored_past_the_edges_on_host_and_device():
    """A flat frame is its own layout; inside the frame a point spreads by sigma px in each
    direction and keeps its sum; at the edges the frame is mirrored as the Predictor's margin is;
    a device tensor gets the same numbers."""
    flat = np.full((3, 12, 20), 0.3, np.float32)
    np.testing.assert_allclose(layout(flat, 2.0), flat, atol=1e-6)
    point = np.zeros((1, 41, 41), np.float32)
    point[0, 20, 20] = 1.0
    blurred = layout(point, 3.0)[0]
    assert blurred.sum() == pytest.approx(1.0, abs=1e-4)
    spread = np.sqrt((blurred.sum(axis=0) * (np.arange(41) - 20.0) ** 2).sum())
    assert spread == pytest.approx(3.0, rel=0.02)
    frame = np.random.default_rng(0).random((3, 9, 14), dtype=np.float32)
    radius = 6  # ceil(3 sigma) for sigma 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 2.0) ** 2)
    taps /= taps.sum()
    padded = pad_mirrored(frame, radius)
    by_hand = sum(w * padded[:, dy:dy + 9, radius:-radius] for dy, w in enumerate(taps))
    by_hand = sum(w * np.pad(by_hand, ((0, 0), (0, 0), (radius, radius)), mode="reflect")[:, :, dx:dx + 14]
                  for dx, w in enumerate(taps))
    np.testing.assert_allclose(layout(frame, 2.0), by_hand, atol=1e-5)
    np.testing.assert_allclose(layout(torch.from_numpy(frame), 2.0).numpy(), layout(frame, 2.0), atol=1e-6)


def test_the_layout_pull_is_held_where_the_clip_holds_still():
    """Each pixel's pull: the bundle's where the clip's layout does not change, none where its
    spread over the clip reaches layout_motion, linear between; layout_motion 0 holds every pixel
    alike."""
    clip = np.full((6, 20, 30, 3), 100, np.uint8)
    for t in range(6):  # a bright square crossing the left half; the right half stands still
        clip[t, 8:12, 2 + 2 * t:6 + 2 * t] = 250
    weights = S.layout_weights(clip, 0.2, 1.5, 0.05)
    assert weights.shape == (20, 30) and weights.dtype == np.float32
    assert weights[:, 22:].min() == pytest.approx(0.2)  # still: held
    assert weights[10, 6:12].max() == 0.0  # the square's path: free
    assert 0 < weights[6, 8] < 0.2 or 0 < weights[5, 8] < 0.2  # its blurred edge: in between
    np.testing.assert_array_equal(S.layout_weights(clip, 0.2, 1.5, 0.0), np.full((20, 30), 0.2, np.float32))


def test_nearest_layout_takes_each_pixel_from_the_clip_frame_that_looks_most_like_it():
    """Each pixel comes from the clip layout with the least squared difference summed over the
    window around it (mirrored past the edges), the same on host and device; a frame near one of
    the clip's takes that one whole, and a frame half one and half another takes each half."""
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((5, 3, 9, 11)).astype(np.float32)
    near = clip[2] + 0.01 * rng.standard_normal((3, 9, 11)).astype(np.float32)
    np.testing.assert_array_equal(nearest_layout(near, clip, 2), clip[2])
    halves = np.concatenate([clip[1][:, :, :5], clip[4][:, :, 5:]], axis=2)
    held = nearest_layout(halves, clip, 1)
    np.testing.assert_array_equal(held[:, :, :4], clip[1][:, :, :4])
    np.testing.assert_array_equal(held[:, :, 6:], clip[4][:, :, 6:])
    own = rng.standard_normal((3, 9, 11)).astype(np.float32)
    errors = np.pad(((clip - own[None]) ** 2).sum(1), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    summed = sum(errors[:, i:i + 9, j:j + 11] for i in range(3) for j in range(3))
    best = summed.argmin(0)
    expected = clip[best, :, np.arange(9)[:, None], np.arange(11)[None]].transpose(2, 0, 1)
    np.testing.assert_array_equal(nearest_layout(own, clip, 1), expected)
    on_device = nearest_layout(torch.from_numpy(own), torch.from_numpy(clip), 1)
    np.testing.assert_array_equal(on_device.numpy(), expected)
    # A first candidate is the clip with it in front, first of equals, without the copy
    first = clip[3] + 0.5 * rng.standard_normal((3, 9, 11)).astype(np.float32)
    joined = np.concatenate([first[None], clip])
    expected = nearest_layout(own, joined, 1)
    assert (expected == first).any() and (expected != first).any()  # both kinds of pixel
    np.testing.assert_array_equal(nearest_layout(own, clip, 1, first=first), expected)
    np.testing.assert_array_equal(nearest_layout(clip[3], clip, 1, first=clip[3]), clip[3])
    on_device = nearest_layout(*(torch.from_numpy(a) for a in (own, clip)), 1,
                               first=torch.from_numpy(first))
    np.testing.assert_array_equal(on_device.numpy(), expected)


def test_a_long_clip_is_held_to_evenly_spaced_layouts():
    """The layouts a stream is held to: every frame of a short clip, MAX_HELD_LAYOUTS of a long
    one, its first and last among them."""
    clip = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 6, 3), np.uint8)
    layouts = S.clip_layouts(clip, 0.6)
    assert layouts.shape == (S.MAX_HELD_LAYOUTS, 3, 4, 6) and layouts.dtype == np.float32
    picked = np.round((layouts[:, 0, 0, 0] + 1) * 127.5).astype(int)
    assert picked[0] == 0 and picked[-1] == 99 and (np.diff(picked) > 0).all()
    assert S.clip_layouts(clip[:10], 0.6).shape[0] == 10


def test_manifest_records_the_layout_hold(tiny_bundle):
    """Written and read back, with each pixel's pull made from the bundle's clip; older manifests
    hold no layout (the paper's); a pull outside [0, 1), a pull without a blur or a motion outside
    [0, 2] is refused with the field named."""
    path = tiny_bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    assert (data["layout_pull"], data["layout_sigma"], data["layout_motion"]) == (0.0, 0.0, 0.0)
    assert tiny_bundle.sampling().layout_weights is None
    data.update(layout_pull=0.1, layout_sigma=2.5, layout_motion=0.05)
    path.write_text(json.dumps(data))
    bundle = Bundle.open(tiny_bundle.path)
    sampling = bundle.sampling()
    assert (sampling.layout_pull, sampling.layout_sigma, sampling.layout_motion) == (0.1, 2.5, 0.05)
    np.testing.assert_array_equal(sampling.layout_weights,
                                  S.layout_weights(bundle.frames(), 0.1, 2.5, 0.05))
    assert sampling.layout_window == 0 and sampling.clip_layouts is None  # the start frame's
    data.update(layout_window=3)
    path.write_text(json.dumps(data))
    sampling = Bundle.open(tiny_bundle.path).sampling()
    assert sampling.layout_window == 3
    np.testing.assert_array_equal(sampling.clip_layouts, S.clip_layouts(bundle.frames(), 2.5))
    for field in ("layout_pull", "layout_sigma", "layout_motion", "layout_window"):
        del data[field]
    path.write_text(json.dumps(data))
    assert Bundle.open(tiny_bundle.path).sampling().layout_pull == 0.0
    for values, message in (({"layout_pull": 1.0, "layout_sigma": 2.0}, r"layout_pull must be in \[0, 1\), got 1.0"),
                            ({"layout_pull": 0.1}, r"layout_sigma must be in \(0, 64\] px"),
                            ({"layout_motion": -1}, r"layout_motion must be in \[0, 2\]"),
                            ({"layout_window": 17}, r"layout_window must be in \[0, 16\] px, got 17")):
        path.write_text(json.dumps({**data, **values}))
        with pytest.raises(BundleError, match=message):
            Bundle.open(tiny_bundle.path)


def _half_corrected(sampling, frame, denoiser):
    """`frame` after half of a Projector correction at level 1 (the draws of seed 2), by hand: what
    `correct` holds to a layout next."""
    rng, rs = np.random.default_rng(2), sampling["projector"]
    raw = S.run_to_value(S.denoise("projector", rs, S.noise_to_level(frame, rs.schedule, 1, rng), rng,
                                   start=1), denoiser)
    return frame + 0.5 * (raw - frame)


def test_a_stream_holds_its_start_frames_layout(tiny_bundle):
    """After the passes at T_corr, a frame of a stream moves each pixel's layout pull of the way
    from its own layout to the start frame's, then takes the start frame's colours; frames
    corrected without a stream's anchor (the Interpolator's) and uncorrected ones are held to
    nothing. Over a stream the frames' layouts stay nearer the start frame's than without the hold."""
    frames = tiny_bundle.frames().astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    pulls = np.linspace(0.2, 0.6, frames[0, 0].size, dtype=np.float32).reshape(frames.shape[2:])
    sampling = dataclasses.replace(tiny_bundle.sampling(), correction_weight=0.5, layout_pull=0.6,
                                   layout_sigma=2.0, layout_weights=pulls)
    options = S.SamplingOptions(steps=2, method="ddim", correction_steps=1)
    anchor = S.stream_anchor(sampling, options, frames[0])
    np.testing.assert_array_equal(anchor.layout, layout(frames[0], 2.0))
    on_device = anchor.on_side_of(torch.from_numpy(frames[1]))  # a device runtime's frames
    assert isinstance(on_device.layout, torch.Tensor) and isinstance(on_device.weights, torch.Tensor)
    np.testing.assert_array_equal(on_device.weights.numpy(), pulls)
    assert on_device.on_side_of(torch.from_numpy(frames[2])) is on_device  # copied across once
    assert anchor.on_side_of(frames[2]) is anchor
    eager = TorchDenoiser(tiny_bundle)
    out = S.run_to_value(S.correct(sampling, frames[3], np.random.default_rng(2), options, anchor), eager)
    x = _half_corrected(sampling, frames[3], eager)
    held = x + pulls * (anchor.layout - layout(x, 2.0))
    np.testing.assert_allclose(out, keep_colours(held, colours_of(frames[0])), atol=1e-5)
    unheld = S.run_to_value(S.correct(sampling, frames[3], np.random.default_rng(2), options), eager)
    np.testing.assert_allclose(unheld, keep_colours(x, colours_of(frames[3])), atol=1e-5)
    assert S.stream_anchor(sampling, dataclasses.replace(options, correction_steps=0), frames[0]) is None
    assert S.stream_anchor(tiny_bundle.sampling(), options, frames[0]).layout is None
    record = S.options_record(options, sampling)
    assert (record["layout_pull"], record["layout_sigma"], record["layout_motion"]) == (0.6, 2.0, 0.0)
    assert "layout_pull" not in S.options_record(options, tiny_bundle.sampling())

    def drift(pull):
        held = dataclasses.replace(sampling, layout_pull=pull, layout_weights=None if pull == 0 else
                                   np.full(frames.shape[2:], pull, np.float32))
        loop = S.extrapolate(held, frames[0], 6, 1, np.random.default_rng(0), options)
        return [np.abs(layout(f.image, 2.0) - anchor.layout).mean() for f in S.run(loop, eager)]

    free, kept = drift(0.0), drift(0.4)
    assert kept[-1] < 0.8 * free[-1], (free, kept)


def test_a_stream_held_to_the_clip_takes_each_pixel_from_its_nearest_clip_layout(tiny_bundle):
    """With a layout window, a frame of a stream moves each pixel's pull of the way from its own
    layout to the clip's nearest (`nearest_layout`), not to the start frame's, on host and device
    alike, then takes the start frame's colours; the measurement records the window."""
    frames = tiny_bundle.frames().astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    clip = np.stack([layout(f, 1.0) for f in frames[4:8]])
    sampling = dataclasses.replace(tiny_bundle.sampling(), correction_weight=0.5, layout_pull=0.3,
                                   layout_sigma=1.0, layout_window=2, clip_layouts=clip,
                                   layout_weights=np.full(frames.shape[2:], 0.3, np.float32))
    options = S.SamplingOptions(steps=2, method="ddim", correction_steps=1)
    anchor = S.stream_anchor(sampling, options, frames[0])
    start = layout(frames[0], 1.0)  # an unseen start frame's picture is held to as well, first
    np.testing.assert_array_equal(anchor.layout, start)
    assert anchor.clip is clip  # the bundle's, shared by its streams: not copied
    # so a frame that looks like its start frame stays there, where the clip's alone moves it
    assert np.abs(nearest_layout(start, clip, 2) - start).max() > 0.1
    np.testing.assert_array_equal(nearest_layout(start, clip, 2, first=start), start)
    eager = TorchDenoiser(tiny_bundle)
    out = S.run_to_value(S.correct(sampling, frames[3], np.random.default_rng(2), options, anchor), eager)
    x = _half_corrected(sampling, frames[3], eager)
    own = layout(x, 1.0)
    held = x + 0.3 * (nearest_layout(own, np.concatenate([start[None], clip]), 2) - own)
    np.testing.assert_allclose(out, keep_colours(held, colours_of(frames[0])), atol=1e-5)
    on_device = anchor.on_side_of(torch.from_numpy(frames[1]))  # the device runtime's: its test
    assert isinstance(on_device.clip, torch.Tensor) and isinstance(on_device.layout, torch.Tensor)
    other = S.stream_anchor(sampling, options, frames[2]).on_side_of(torch.from_numpy(frames[1]))
    assert other.clip is on_device.clip  # one device copy of the bundle's clip for its streams
    assert S.options_record(options, sampling)["layout_window"] == 2


def test_a_shared_device_copy_lives_as_long_as_its_host_array():
    import gc

    from sinfusion import arrays

    host, device = np.ones((2, 3), np.float32), torch.zeros(1)
    copy = arrays.shared_like(host, device)
    assert isinstance(copy, torch.Tensor) and arrays.shared_like(host, device) is copy
    assert arrays.shared_like(host, np.zeros(1)) is host  # next to a host array: itself
    key = (id(host), str(device.device))
    assert key in arrays._SHARED_COPIES
    del host
    gc.collect()
    assert key not in arrays._SHARED_COPIES
