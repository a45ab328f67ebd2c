"""Trainer: crop batches, curriculum, learning rate, real training steps of tiny nets, bundle, resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sinfusion import sampling
from sinfusion.bundle import Bundle, BundleError, load_tensors
from sinfusion.frames import to_model
from sinfusion.runtimes.torch_runtime import TorchDenoiser
from sinfusion.trainer.loop import TrainingInterrupted, lr_at, noise_levels
from sinfusion.trainer.presets import PaperPreset, TinyPreset, TrainConfig, get_preset
from sinfusion.trainer.crops import MIRRORED_K, ClipCrops, crop_size, k_limit
from sinfusion.trainer.training import TrainerError, train_bundle
from tests.conftest import make_tiny_bundle, tiny_clip


def coded_clip(n: int = 6, h: int = 16, w: int = 24) -> np.ndarray:
    """Pixel (y, x) of frame i holds (i, y, x): every crop tells where it came from."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = np.arange(n)[:, None, None]
    frames[..., 1] = np.arange(h)[None, :, None]
    frames[..., 2] = np.arange(w)[None, None, :]
    return frames


def decode(crops: torch.Tensor) -> np.ndarray:
    """(B, 3, h, w) in [-1, 1] -> uint8 codes (B, 3, h, w)."""
    return np.rint((crops.numpy() + 1.0) * 127.5).astype(int)


def clip_crops(frames: np.ndarray, fraction: float = 0.75, seed: int = 0) -> ClipCrops:
    return ClipCrops(frames, fraction, "cpu", torch.Generator().manual_seed(seed))


def tiny_config(steps: int = 4, **kw) -> TrainConfig:
    base = dict(channels=8, blocks=2, batch_size=1, checkpoint_every=2, preview_every=0, seed=0,
                preview_steps=4)
    base.update(kw)
    return get_preset("tiny", **base).with_steps(steps)


# --- crops ---------------------------------------------------------------------------------------

def test_crop_size_is_about_95_percent_and_bounded():
    assert crop_size(144, 256, 0.95) == (137, 243)
    assert crop_size(16, 24, 0.95) == (15, 23)
    assert crop_size(8, 8, 0.5) == (8, 8)  # never below 8 px nor above the frame


def test_single_crops_are_aligned_slices_within_bounds():
    s = clip_crops(coded_clip())
    crops = s.single(32)
    assert crops.shape == (32, 3, 12, 18) and crops.dtype == torch.float32
    codes = decode(crops)
    for c in codes:
        assert len(np.unique(c[0])) == 1  # one frame per crop
        top, left = c[1, 0, 0], c[2, 0, 0]
        assert 0 <= top <= 16 - 12 and 0 <= left <= 24 - 18
        np.testing.assert_array_equal(c[1], np.arange(top, top + 12)[:, None].repeat(18, 1))
        np.testing.assert_array_equal(c[2], np.arange(left, left + 18)[None, :].repeat(12, 0))
    # offsets and frames vary: it samples the whole clip, not one window
    assert len({(c[0, 0, 0], c[1, 0, 0], c[2, 0, 0]) for c in codes}) > 10


def test_pairs_share_the_window_and_are_k_apart():
    s = clip_crops(coded_clip(n=6))
    cond, target, k = s.pair(64, k_max=3)
    cc, tc = decode(cond), decode(target)
    assert cond.shape == target.shape == (64, 3, 12, 18)
    np.testing.assert_array_equal(cc[:, 1:], tc[:, 1:])  # same crop window
    n, m = cc[:, 0, 0, 0], tc[:, 0, 0, 0]
    np.testing.assert_array_equal(m - n, k.numpy())
    assert set(np.abs(k.numpy())) <= {1, 2, 3} and (k < 0).any() and (k > 0).any()
    assert (m >= 0).all() and (m < 6).all()


def test_hflip_mirrors_whole_samples_and_keeps_their_window():
    frames = coded_clip(n=6)
    plain = clip_crops(frames).pair(64, k_max=3)
    mirrored = ClipCrops(frames, 0.75, "cpu", torch.Generator().manual_seed(0), hflip=True)
    cond, target, k = mirrored.pair(64, k_max=3)
    cc, tc = decode(cond), decode(target)
    np.testing.assert_array_equal(cc[:, 1:], tc[:, 1:])  # both frames: same window, same mirroring
    np.testing.assert_array_equal(tc[:, 0, 0, 0] - cc[:, 0, 0, 0], k.numpy())
    # a mirrored crop is a crop of the frame read right to left: columns descend
    cols = cc[:, 2, 0, :]  # channel 2 codes the column
    flipped = (np.diff(cols, axis=1) < 0).all(axis=1)
    assert flipped.any() and (~flipped).any() and (np.diff(cols[~flipped], axis=1) > 0).all()
    assert plain[0].shape == cond.shape


def test_labelled_mirrors_carry_their_own_frame_step_code():
    frames = coded_clip(n=6)
    labelled = ClipCrops(frames, 0.75, "cpu", torch.Generator().manual_seed(0), hflip=True,
                         label_mirrors=True)
    cond, target, code = labelled.pair(64, k_max=3)
    cc, tc = decode(cond), decode(target)
    flipped = (np.diff(cc[:, 2, 0, :], axis=1) < 0).all(axis=1)
    k = tc[:, 0, 0, 0] - cc[:, 0, 0, 0]  # the real frame step, read from the frame codes
    np.testing.assert_array_equal(code.numpy(), np.where(flipped, k + MIRRORED_K, k))
    assert flipped.any() and (~flipped).any()
    # the same draws unlabelled: the same samples, the plain k
    plain = ClipCrops(frames, 0.75, "cpu", torch.Generator().manual_seed(0), hflip=True)
    np.testing.assert_array_equal(plain.pair(64, k_max=3)[2].numpy(), k)


def test_the_small_presets_label_mirrors_and_older_run_records_do_not():
    assert get_preset("cpu").mirror_labelled and get_preset("tiny").mirror_labelled
    assert not get_preset("paper").mirror_labelled and not get_preset("paper").hflip
    # a run recorded before the field resumes as it was trained: mirrored samples unlabelled
    recorded = {k: v for k, v in get_preset("cpu").to_dict().items() if k != "mirror_labelled"}
    assert TrainConfig.from_dict(recorded).mirror_labelled is False


def test_triplets_are_n_n_plus_2_and_the_middle():
    s = clip_crops(coded_clip(n=5))
    before, after, middle = s.triplet(16)
    b, a, m = (decode(x)[:, 0, 0, 0] for x in (before, after, middle))
    np.testing.assert_array_equal(a - b, 2)
    np.testing.assert_array_equal(m - b, 1)


def test_k_curriculum_grows_from_1_to_3_over_the_ramp():
    limits = [k_limit(step / 1000, 3, 0.5) for step in range(0, 1001, 50)]
    assert limits[0] == 1 and limits[-1] == 3
    assert limits == sorted(limits)  # never shrinks
    assert k_limit(0.499, 3, 0.5) == 3 and k_limit(0.1, 3, 0.5) == 1
    assert k_limit(0.0, 3, 0.0) == 3  # no ramp: full range from the start
    s = clip_crops(coded_clip(n=6))
    assert set(s.sample_k(200, 1).tolist()) == {-1, 1}  # early training: +-1, both directions
    assert set(s.sample_k(400, 3).tolist()) == {-3, -2, -1, 1, 2, 3}
    assert set(clip_crops(coded_clip(n=2)).sample_k(50, 3).tolist()) == {-1, 1}  # clip too short


def test_crops_are_reproducible_from_their_generator():
    a, b = clip_crops(coded_clip(), seed=3), clip_crops(coded_clip(), seed=3)
    assert torch.equal(a.pair(4, 3)[0], b.pair(4, 3)[0])


# --- configs ----------------------------------------------------------------------------------------

def test_presets_and_config_validation():
    paper = PaperPreset()
    assert (paper.blocks, paper.channels) == (16, 64)
    assert (paper.predictor_steps, paper.projector_steps, paper.interpolator_steps) == (
        200_000, 100_000, 50_000)
    assert (paper.predictor_target, paper.projector_target) == ("eps", "x0")
    assert TinyPreset().blocks < paper.blocks
    with pytest.raises(ValueError, match="valid presets: cpu, tiny, paper"):
        get_preset("huge")
    with pytest.raises(ValueError, match="projector_target must be one of eps, x0"):
        TrainConfig(projector_target="v")
    with pytest.raises(ValueError, match="blocks must be an even number"):
        TrainConfig(blocks=3)
    with pytest.raises(ValueError, match="projector_correction_share must be in"):
        TrainConfig(projector_correction_share=1.5)
    with pytest.raises(ValueError, match=r"correction_weight must be in \(0, 1\]"):
        TrainConfig(correction_weight=0.0)
    with pytest.raises(ValueError, match=r"correction_passes must be in \[1, 8\]"):
        TrainConfig(correction_passes=0)
    with pytest.raises(ValueError, match=r"predictor_margin must be in \[0, 64\] px"):
        TrainConfig(predictor_margin=65)
    with pytest.raises(ValueError, match=r"coarse_correction_level must be in \[0, 50\]"):
        TrainConfig(coarse_correction_level=51)
    with pytest.raises(ValueError, match=r"coarse_correction_weight must be in \(0, 1\]"):
        TrainConfig(coarse_correction_weight=0)
    with pytest.raises(ValueError, match=r"layout_pull must be in \[0, 1\)"):
        TrainConfig(layout_pull=1.0, layout_sigma=2.0)
    with pytest.raises(ValueError, match=r"layout_sigma must be in \(0, 64\] px"):
        TrainConfig(layout_pull=0.1)
    with pytest.raises(ValueError, match=r"layout_check_frames must be >= 40, got 39"):
        TrainConfig(layout_check_frames=39)


def test_the_projector_trains_a_share_at_the_correction_levels():
    """The cpu preset serves correction at level 1, keeping half of it, after 15% of a coarse one
    at level 3, and draws half the
    Projector's levels there; the other roles, and the paper, draw every level alike."""
    cpu = get_preset("cpu")
    assert (cpu.correction_steps, cpu.projector_correction_share, cpu.correction_weight,
            cpu.correction_passes) == (1, 0.5, 0.5, 1)
    assert (cpu.coarse_correction_level, cpu.coarse_correction_weight) == (3, 0.15)
    assert PaperPreset().coarse_correction_level == 0 == get_preset("tiny").coarse_correction_level
    assert (cpu.layout_pull, cpu.layout_sigma, cpu.layout_motion, cpu.layout_window) == (0.3, 0.6, 0.0, 3)
    assert PaperPreset().layout_pull == 0 == get_preset("tiny").layout_pull  # no hold, no check
    paper = PaperPreset()
    assert (paper.projector_correction_share, paper.correction_weight, paper.correction_passes) == (0, 1, 1)
    assert (cpu.predictor_margin, get_preset("tiny").predictor_margin, paper.predictor_margin) == (8, 0, 0)
    cpu_time = {r: cpu.time_for(r, ["predictor", "projector", "interpolator"])
                for r in ("predictor", "projector", "interpolator")}
    assert cpu_time == pytest.approx({"predictor": 360, "projector": 360, "interpolator": 180})

    def levels(config, role):
        g = torch.Generator().manual_seed(0)
        return noise_levels(config, role, 4000, 50, g, torch.device("cpu"))

    t = levels(cpu, "projector")
    assert int(t.min()) >= 1 and int(t.max()) == 50
    assert 0.48 < float((t == 1).float().mean()) < 0.54  # half, plus 1/50 of the uniform half
    for config, role in ((cpu, "predictor"), (cpu, "interpolator"), (PaperPreset(), "projector"),
                         (get_preset("cpu", correction_steps=0), "projector")):
        assert float((levels(config, role) == 1).float().mean()) < 0.04, (role, config)
    three = levels(get_preset("cpu", correction_steps=3, projector_correction_share=1.0), "projector")
    assert set(three.tolist()) == {1, 2, 3}


def test_learning_rate_decays_from_2e4_to_2e5():
    paper = PaperPreset()
    assert lr_at(paper, 0, 200_000) == 2e-4
    assert lr_at(paper, 99_999, 200_000) == 2e-4 and lr_at(paper, 100_000, 200_000) == 2e-5
    cos = TrainConfig(lr_decay="cosine", lr_decay_at=0.0)
    assert lr_at(cos, 0, 100) == pytest.approx(2e-4)
    assert lr_at(cos, 100, 100) == pytest.approx(2e-5)
    assert 2e-5 < lr_at(cos, 50, 100) < 2e-4


# --- training ---------------------------------------------------------------------------------------

def test_tiny_training_writes_a_loadable_bundle(tmp_path):
    clip = tiny_clip(6, 16, 24)
    bundle = train_bundle(clip, tmp_path / "b", tiny_config(steps=3, preview_every=2),
                          progress=False, device="cpu")
    again = Bundle.open(tmp_path / "b")
    m = again.manifest
    assert again.roles == ["predictor", "projector", "interpolator"] == bundle.roles
    assert (m.mode, m.width, m.height, m.frame_count) == ("video", 24, 16, 6)
    np.testing.assert_array_equal(again.frames(), clip)
    # tiny preset: x0 predictor, eps projector (see TinyPreset); the manifest records them
    for role, target in (("predictor", "x0"), ("projector", "eps"), ("interpolator", "x0")):
        entry = again.role(role)
        assert entry.target == target and entry.schedule == {"kind": "cosine", "steps": 50}
        assert entry.trained_steps == 3 and entry.settings["crop"] == [15, 23]
        assert (entry.network.blocks, entry.network.channels) == (2, 8)
        assert (tmp_path / "b" / "previews" / f"{role}_0000002.png").is_file()
        # served weights = the EMA, and the EMA is not the raw weights
        state = load_tensors(tmp_path / "b" / "training" / f"{role}.safetensors")
        served = again.weights(role)
        for name, value in served.items():
            np.testing.assert_array_equal(value, state[f"ema/{name}"])
        assert any(not np.array_equal(served[n], state[f"model/{n}"]) for n in served)
    # the bundle drives the core's sampling loop; outputs stay in range
    bundle_sampling = again.sampling()
    den = TorchDenoiser(again)
    opts = sampling.SamplingOptions(steps=3, method="ddim")
    frame = sampling.run_to_value(
        sampling.predict_frame(bundle_sampling, to_model(clip[0]), 1, np.random.default_rng(0), opts), den)
    assert frame.shape == (3, 16, 24) and np.abs(frame).max() <= 1.0


def test_training_reduces_the_loss(tmp_path):
    cfg = tiny_config(steps=60, checkpoint_every=0, batch_size=2, lr=3e-3, lr_min=3e-4)
    losses = []
    train_bundle(tiny_clip(6, 16, 24), tmp_path / "b", cfg, roles=["projector"], progress=False,
                 device="cpu", callback=lambda role, step, loss: losses.append(loss))
    assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:15])


def test_single_image_trains_only_the_projector_on_the_linear_schedule(tmp_path):
    image = tiny_clip(1, 16, 24)
    bundle = train_bundle(image, tmp_path / "img", tiny_config(steps=2, projector_target="x0",
                                                               layout_pull=0.15, layout_sigma=2.5),
                          progress=False, device="cpu")
    assert bundle.manifest.mode == "image" and bundle.roles == ["projector"]
    assert bundle.manifest.layout_pull == 0.0  # one image makes no streams to hold
    assert bundle.role("projector").schedule["kind"] == "linear"
    assert bundle.role("projector").target == "x0"  # the configured target, recorded
    with pytest.raises(TrainerError, match="only the projector"):
        train_bundle(image, tmp_path / "img2", tiny_config(steps=2), roles=["predictor"],
                     progress=False)


def test_roles_the_clip_cannot_support_are_refused(tmp_path):
    with pytest.raises(TrainerError, match="interpolator needs a clip of at least 3 frames"):
        train_bundle(tiny_clip(2, 16, 24), tmp_path / "b", tiny_config(), roles=["interpolator"],
                     progress=False)
    with pytest.raises(TrainerError, match="valid roles"):
        train_bundle(tiny_clip(4, 16, 24), tmp_path / "c", tiny_config(), roles=["painter"],
                     progress=False)


def _losses(role_losses):
    return lambda role, step, loss: role_losses.append((role, step, loss))


def test_resume_continues_where_ctrl_c_stopped(tmp_path):
    clip = tiny_clip(6, 16, 24)
    cfg = tiny_config(steps=6, checkpoint_every=4)
    straight = []
    train_bundle(clip, tmp_path / "a", cfg, roles=["predictor", "projector"], progress=False,
                 device="cpu", callback=_losses(straight))

    first = []

    def stop_at_3(role, step, loss):
        first.append((role, step, loss))
        if role == "predictor" and step == 3:
            raise KeyboardInterrupt  # what Ctrl-C does, at a step boundary

    with pytest.raises(TrainingInterrupted) as info:
        train_bundle(clip, tmp_path / "b", cfg, roles=["predictor", "projector"], progress=False,
                     device="cpu", callback=stop_at_3)
    assert (info.value.role, info.value.step) == ("predictor", 3)
    state = json.loads((tmp_path / "b" / "training" / "predictor.json").read_text())
    assert state["step"] == 3 and state["total_steps"] == 6
    interrupted = Bundle.open(tmp_path / "b")  # resumable and already servable
    assert interrupted.role("predictor").trained_steps == 3
    TorchDenoiser(interrupted)

    rest = []
    train_bundle(clip, tmp_path / "b", cfg, roles=["predictor", "projector"], resume=True,
                 progress=False, device="cpu", callback=_losses(rest))
    assert [s for r, s, _ in rest if r == "predictor"] == [4, 5, 6]  # the step counter continues
    # ... and so does the loss curve, number for number (same data, noise, weights and Adam state)
    assert [(r, s) for r, s, _ in first + rest] == [(r, s) for r, s, _ in straight]
    np.testing.assert_allclose([x for *_, x in first + rest], [x for *_, x in straight], rtol=1e-5)
    a, b = Bundle.open(tmp_path / "a"), Bundle.open(tmp_path / "b")
    for role in ("predictor", "projector"):
        for name, value in a.weights(role).items():
            np.testing.assert_allclose(b.weights(role)[name], value, rtol=1e-5, atol=1e-7)

    # resuming a finished run trains nothing more
    more = []
    train_bundle(clip, tmp_path / "b", cfg, roles=["predictor", "projector"], resume=True,
                 progress=False, callback=_losses(more))
    assert more == []


def test_resume_refuses_other_frames_and_missing_bundles(tmp_path):
    cfg = tiny_config(steps=2)
    train_bundle(tiny_clip(4, 16, 24), tmp_path / "b", cfg, roles=["projector"], progress=False)
    with pytest.raises(TrainerError, match="trained on other frames"):
        train_bundle(tiny_clip(4, 16, 24, seed=1), tmp_path / "b", cfg, roles=["projector"],
                     resume=True, progress=False)
    with pytest.raises(TrainerError, match="nothing to resume"):
        train_bundle(tiny_clip(4, 16, 24), tmp_path / "none", cfg, resume=True, progress=False)
    with pytest.raises(TrainerError, match="already holds a bundle"):
        train_bundle(tiny_clip(4, 16, 24), tmp_path / "b", cfg, progress=False)
    # a checkpoint whose two halves disagree is detected, not silently mixed
    path = tmp_path / "b" / "training" / "projector.json"
    state = json.loads(path.read_text())
    state["step"] = 1
    path.write_text(json.dumps(state))
    with pytest.raises(BundleError, match="interrupted mid-write"):
        train_bundle(tiny_clip(4, 16, 24), tmp_path / "b", cfg, roles=["projector"], resume=True,
                     progress=False)


def test_cuda_fast_path_channels_last_and_bf16_autocast_resume_exactly(tmp_path):
    """The CUDA path's memory format and autocast, forced on the CPU: it trains, checkpoints, resumes."""
    from sinfusion.bundle import Manifest
    from sinfusion.schedule import make_schedule
    from sinfusion.trainer import checkpoint
    from sinfusion.trainer.loop import build_run, resume_run, train_role

    clip = tiny_clip(6, 16, 24)
    cfg = tiny_config(steps=5, checkpoint_every=0)
    schedule = make_schedule("cosine", 50)
    dev = torch.device("cpu")

    def run_in(path, callback=None, resume=False, amp=torch.bfloat16):
        bundle = Bundle.create(path, Manifest("t", "video", 24, 16, 12.0, 6), clip)
        run = build_run("predictor", cfg, schedule, dev, {}, channels_last=True, amp_dtype=amp)
        if resume:
            resume_run(run, path, checkpoint.load_state(path, "predictor"))
        assert run.net.stem.weight.is_contiguous(memory_format=torch.channels_last)
        train_role(run, bundle, clip, progress=False, callback=callback)
        return run

    fp32 = []
    run_in(tmp_path / "f", lambda r, s, loss: fp32.append(loss), amp=None)

    straight = []
    run_in(tmp_path / "a", lambda r, s, loss: straight.append(loss))
    parts = []

    def stop(role, step, loss):
        parts.append(loss)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        run_in(tmp_path / "b", stop)
    run = run_in(tmp_path / "b", lambda r, s, loss: parts.append(loss), resume=True)
    assert run.state.step == 5
    np.testing.assert_allclose(parts, straight, rtol=1e-5)
    assert not np.allclose(straight, fp32, rtol=1e-5)  # autocast did run the forward in bfloat16
    served = Bundle.open(tmp_path / "b")
    TorchDenoiser(served)  # the channels-last EMA was saved as plain arrays that load anywhere
    for name, value in served.weights("predictor").items():
        np.testing.assert_allclose(value, Bundle.open(tmp_path / "a").weights("predictor")[name],
                                   rtol=1e-5, atol=1e-7)


def test_memory_layout_is_only_a_speed_choice():
    """Channels-last, the default on every device (faster on the CPU too), trains the same numbers
    as NCHW tensors, so a run's results do not depend on the layout it happened to use."""
    from sinfusion.schedule import make_schedule
    from sinfusion.trainer.crops import ClipCrops
    from sinfusion.trainer.loop import build_run, train_step

    clip = tiny_clip(6, 16, 24)
    cfg = tiny_config(steps=5, checkpoint_every=0)
    schedule = make_schedule("cosine", 50)
    dev = torch.device("cpu")
    tables = tuple(torch.tensor(a, dtype=torch.float32)
                   for a in (schedule.sqrt_alpha_bars, schedule.sqrt_one_minus_alpha_bars))
    losses = {}
    assert build_run("predictor", cfg, schedule, dev, {}).channels_last  # the default, on the CPU too
    for layout in (True, False):
        run = build_run("predictor", cfg, schedule, dev, {}, channels_last=layout)
        assert run.net.stem.weight.is_contiguous(
            memory_format=torch.channels_last if layout else torch.contiguous_format)
        crops = ClipCrops(clip, cfg.crop_fraction, dev, run.generator)
        losses[layout] = [float(train_step(run, crops, tables)) for _ in range(5)]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_a_checkpoint_written_in_nchw_resumes_channels_last(tmp_path, monkeypatch):
    """Checkpoints hold plain arrays: a run interrupted while the CPU trained NCHW tensors (before
    channels-last was the default) resumes with today's layout and finishes."""
    import functools

    from sinfusion.trainer import training
    from sinfusion.trainer.loop import build_run

    clip = tiny_clip(6, 16, 24)
    cfg = tiny_config(steps=4)
    monkeypatch.setattr(training, "build_run", functools.partial(build_run, channels_last=False))

    def stop(role, step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_bundle(clip, tmp_path / "b", cfg, roles=["predictor"], progress=False, callback=stop)
    monkeypatch.setattr(training, "build_run", build_run)
    losses = []
    bundle = train_bundle(clip, tmp_path / "b", cfg, roles=["predictor"], resume=True,
                          progress=False, callback=lambda r, s, loss: losses.append(loss))
    assert bundle.role("predictor").trained_steps == 4 and len(losses) == 2
    assert np.isfinite(losses).all()



def test_the_trainer_measures_the_layout_hold_and_keeps_it_only_where_it_drifts_less(tmp_path, monkeypatch):
    """With a layout pull, once the Predictor and the Projector are trained the trainer extrapolates
    from the clip's first and last frames with the hold and without it; the manifest records the
    drifts and keeps the pull only where the held streams' worse start drifts less than the free's. No role gives up its share of the time
    for it; presets without a pull (tiny, paper) measure nothing."""
    from sinfusion.trainer import layout_check, training

    measured, asked = [], []  # 8 frames instead of the config's: a test's tiny clip

    def check(bundle, frames, **kwargs):
        asked.append(frames)
        measured.append(layout_check.check_layout_hold(bundle, frames=8, **kwargs))
        return measured[-1]

    monkeypatch.setattr(training, "check_layout_hold", check)
    budgets = {}
    real_train_role = training.train_role

    def train_role(run, *args, **kwargs):
        budgets[run.role] = run.time_budget_s
        return real_train_role(run, *args, **kwargs)

    monkeypatch.setattr(training, "train_role", train_role)
    config = tiny_config(steps=2, layout_pull=0.2, layout_sigma=1.5, time_budget_s=3600.0,
                         layout_check_frames=60)
    bundle = train_bundle(tiny_clip(8, 16, 24), tmp_path / "b", config, progress=False, device="cpu")
    record = bundle.manifest.quality["layout"]
    assert [record] == measured and asked == [60]  # --check-frames
    assert record["frames"] == 8 and record["seed"] == 0 and record["seconds"] > 0
    assert record["starts"] == [0, 7]
    assert (record["held_ratio"], record["free_ratio"]) == (max(record["held_ratios"]),
                                                            max(record["free_ratios"]))
    assert record["held"] == (record["held_ratio"] < record["free_ratio"])
    assert Bundle.open(bundle.path).manifest.layout_pull == (0.2 if record["held"] else 0.0)
    assert budgets == {role: config.time_for(role, ["predictor", "projector", "interpolator"])
                       for role in ("predictor", "projector", "interpolator")}
    measured.clear()
    plain = train_bundle(tiny_clip(8, 16, 24), tmp_path / "p", tiny_config(steps=2), progress=False,
                         device="cpu")
    assert "layout" not in plain.manifest.quality and not measured


def test_ctrl_c_in_the_layout_check_keeps_the_trained_roles_and_resume_measures_again(
        tmp_path, monkeypatch):
    """The check comes once the Predictor and the Projector are saved: Ctrl-C there says so, and
    --resume trains neither again but measures the hold, then trains the Interpolator."""
    from sinfusion.trainer import layout_check, training

    calls = []

    def check(bundle, frames, **kwargs):
        calls.append(bundle.path)
        if len(calls) == 1:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of the streams
        return layout_check.check_layout_hold(bundle, frames=8, **kwargs)

    monkeypatch.setattr(training, "check_layout_hold", check)
    config = tiny_config(steps=2, layout_pull=0.2, layout_sigma=1.5, time_budget_s=3600.0)
    clip = tiny_clip(8, 16, 24)
    with pytest.raises(TrainingInterrupted, match="while measuring the layout hold"):
        train_bundle(clip, tmp_path / "b", config, progress=False, device="cpu")
    saved = Bundle.open(tmp_path / "b")
    assert {"predictor", "projector"} <= set(saved.roles) and "layout" not in saved.manifest.quality
    trained = set()
    bundle = train_bundle(clip, tmp_path / "b", config, resume=True, progress=False, device="cpu",
                          callback=lambda role, step, loss: trained.add(role))
    assert len(calls) == 2 and "layout" in bundle.manifest.quality
    assert trained == {"interpolator"} and "interpolator" in bundle.roles


@pytest.mark.parametrize("window", [0, 2])
def test_the_layout_check_scores_both_streams_as_the_stability_command_does(tmp_path, window):
    """held_ratios and free_ratios are drift_check's ratios of the streams extrapolated with and
    without the hold (to the start frame's layout, or with a window to the clip's) from the clip's
    first and last frames, held_motions and free_motions their motion_check ratios; a lost hold
    sets the manifest's pull to 0, and the bundle then serves none."""
    from sinfusion.quality.nnf import PatchMatchOptions, nearest_neighbour_field
    from sinfusion.quality.stability import drift_check, extrapolate_clip, late_count, motion_check
    from sinfusion.trainer.layout_check import check_layout_hold, layout_line

    bundle = make_tiny_bundle(tmp_path / "b", frames=6)
    bundle.manifest.layout_pull, bundle.manifest.layout_sigma = 0.3, 1.5
    bundle.manifest.layout_window = window
    bundle.save_manifest()
    held = bundle.sampling()
    assert (held.clip_layouts is not None) == (window > 0)
    record = check_layout_hold(bundle, frames=8)
    assert record["window"] == window
    options = sampling.SamplingOptions.chosen(default_correction=bundle.manifest.correction_steps)
    den = TorchDenoiser(bundle, roles=["predictor", "projector"])

    def scores(facts) -> tuple[list[float], list[float]]:
        """Each start's drift ratio and motion ratio, from one stream per start."""
        ratios, motions = [], []
        for start in (0, 5):
            stream = extrapolate_clip(bundle, start, 8, 1, options, 0, den, facts)
            field = nearest_neighbour_field(stream, bundle.frames(), PatchMatchOptions())
            drift = drift_check(field.per_frame_distance().tolist())
            ratios.append(round(drift["ratio"], 3))
            motions.append(motion_check(bundle.frames(), stream, 1, late_count(drift))["ratio"])
        return ratios, motions

    assert held.layout_weights is not None
    free = dataclasses.replace(held, layout_weights=None)
    assert (record["held_ratios"], record["held_motions"]) == scores(held)
    assert (record["free_ratios"], record["free_motions"]) == scores(free)
    kept = record["held_motions"] if record["held"] else record["free_motions"]
    assert layout_line(record).endswith(f"; their last frames change {min(kept):.0%}-{max(kept):.0%} "
                                        f"as much per frame as the clip")
    same = {**record, "held_motions": [0.471, 0.468], "free_motions": [0.471, 0.468]}
    assert layout_line(same).endswith("; their last frames change 47% as much per frame as the clip")
    again = Bundle.open(bundle.path)
    assert again.manifest.quality["layout"] == record
    assert again.manifest.layout_pull == (0.3 if record["held"] else 0.0)
    assert (again.sampling().layout_weights is None) == (not record["held"])
    assert layout_line(record).startswith("holds" if record["held"] else "does not hold")
    assert "8 frames from frames 0 and 5 drift" in layout_line(record)
    held_to = ("each pixel held to the clip frame nearest it within 2 px" if window else
               f"the clip holds still at {record['held_share']:.0%} of its pixels")
    assert f"NNFDIST, the worse start; {held_to}); their last" in layout_line(record)
    older = {k: v for k, v in record.items() if k not in
             ("starts", "held_ratios", "free_ratios", "held_motions", "free_motions", "window")}
    assert "8 frames from frame 0 drift" in layout_line(older)  # a bundle checked from frame 0 only
    assert layout_line(older).endswith("of its pixels)")  # and before motion was measured


def test_a_clip_that_moves_everywhere_has_no_layout_to_hold(tmp_path):
    """Where under a tenth of the pixels would be held at half the pull or more, no stream is made:
    the hold is dropped and the record says how much of the clip holds still."""
    from sinfusion.trainer.layout_check import MIN_HELD_SHARE, check_layout_hold, layout_line

    bundle = make_tiny_bundle(tmp_path / "b", frames=6)
    bundle.manifest.layout_pull, bundle.manifest.layout_sigma = 0.3, 1.5
    bundle.manifest.layout_motion = 0.05
    noisy = np.random.default_rng(0).integers(0, 256, (6, 16, 24, 3), dtype=np.uint8)
    bundle.frames = lambda: noisy  # every pixel changes from frame to frame
    assert (bundle.sampling().layout_weights >= 0.15).mean() < MIN_HELD_SHARE
    record = check_layout_hold(bundle)
    assert record["held"] is False and "frames" not in record and record["held_share"] < MIN_HELD_SHARE
    assert Bundle.open(bundle.path).manifest.layout_pull == 0.0
    assert "holds still at" in layout_line(record)
