"""matplotlib figures of the quality results: written atomically as PNG, no display needed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sinfusion.bundle import atomic_write_bytes

from .nnf import NNFResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _result_for_k(run: dict, k: int) -> dict | None:
    return next((r for r in run["results"] if r["k"] == k), None)


def plot_nextframe(runs: list[dict], path: str | Path, by: str = "n", title: str = "") -> Path:
    """Paper figure 8 from `nextframe` result files.

    by="n": mean MSE at k=1 against the number of training frames (speed-1 runs), model vs copy.
    by="speed": mean MSE against the speed S, one model line and one copy line per k.
    A second panel always shows the per-pair MSE of every run and k (what the means hide).
    """
    if by not in ("n", "speed"):
        raise ValueError(f"by must be 'n' or 'speed', got {by!r}")
    if not runs:
        raise ValueError("no result files to plot")
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if by == "n":
        chosen = sorted((r for r in runs if r["speed"] == 1 and _result_for_k(r, 1)),
                        key=lambda r: r["n"])
        if not chosen:
            raise ValueError("by=n needs speed-1 runs with k=1 results")
        xs = [r["n"] for r in chosen]
        for key, style, label in (("model_mse", "o-", "model (Predictor sample)"),
                                  ("copy_mse", "s--", "copy current frame")):
            ax.plot(xs, [_result_for_k(r, 1)[key] for r in chosen], style, label=label)
        ax.set_xlabel("training frames n (speed 1, k = 1)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
    else:
        ks = sorted({res["k"] for r in runs for res in r["results"]})
        for k in ks:
            chosen = sorted((r for r in runs if _result_for_k(r, k)), key=lambda r: r["speed"])
            xs = [r["speed"] for r in chosen]
            line = ax.plot(xs, [_result_for_k(r, k)["model_mse"] for r in chosen], "o-",
                           label=f"model, k={k}")[0]
            ax.plot(xs, [_result_for_k(r, k)["copy_mse"] for r in chosen], "s--",
                    color=line.get_color(), alpha=0.6, label=f"copy, k={k}")
        ax.set_xlabel("speed S (temporal subsampling)")
        ax.set_xticks(sorted({r["speed"] for r in runs}))
    ax.set_yscale("log")
    ax.set_ylabel("mean MSE on unseen pairs ([0,1] pixels)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or f"next-frame prediction vs {by}")

    for r in sorted(runs, key=lambda r: (r["speed"], r["n"])):
        for res in r["results"]:
            if by == "n" and res["k"] != 1:
                continue
            pairs = res["pairs"]
            x = [p["frame"] for p in pairs]
            line = ax2.plot(x, [p["model_mse"] for p in pairs], ".-",
                            label=f"model n={r['n']} S={r['speed']} k={res['k']}")[0]
            ax2.plot(x, [p["copy_mse"] for p in pairs], "--", color=line.get_color(), alpha=0.5)
    ax2.set_yscale("log")
    ax2.set_xlabel("test frame i (predicting i + k*S); dashed = copy baseline")
    ax2.set_ylabel("MSE per pair")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    ax2.set_title("per test pair")
    return _save(fig, path)


def plot_stability(report: dict, path: str | Path) -> Path:
    """NNFDIST per extrapolated frame (top) and colour statistics against the original's range."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    dist = np.asarray(report["per_frame_nnfdist"])
    frames = np.arange(1, len(dist) + 1)
    generated = report.get("mode") == "generate"
    made = "generated" if generated else "extrapolated"
    ax.plot(frames, dist, lw=0.8, label=f"{made} frame vs original clip")
    if len(dist) >= 9:
        smooth = np.convolve(dist, np.ones(9) / 9, mode="valid")
        ax.plot(frames[4:-4], smooth, lw=2, label="running mean (9 frames)")
    holdout = report.get("holdout", {}).get("nnfdist")
    if holdout:
        ax.axhline(holdout, color="k", ls="--", lw=1,
                   label="real frames of the clip's 2nd half vs its 1st half")
    ax.set_yscale("log")
    ax.set_ylabel("NNFDIST per frame")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    origin = "generated (Generate)" if generated else f"from clip frame {report['start']}"
    ax.set_title(f"long-run stability: {report['frames']} frames {origin}, k={report['k']}")
    colour = report["colour"]
    for key, label in (("mean", "brightness"), ("std", "contrast (std)"),
                       ("saturation", "saturation")):
        values = np.asarray(colour["extrapolated"][key])
        line = ax2.plot(np.arange(len(values)), values, label=label)[0]
        orig = np.asarray(colour["original"][key])
        ax2.axhspan(orig.min(), orig.max(), color=line.get_color(), alpha=0.15)
    ax2.set_xlabel("generated frame (0 = the varied clip frame it starts from)" if generated
                   else "extrapolated frame (0 = the real start frame)")
    ax2.set_ylabel("[0, 1]; bands = original's range")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return _save(fig, path)


def nnf_colour_map(offsets: np.ndarray) -> np.ndarray:
    """An NNF frame (H, W, 3) of (dt, dy, dx) as RGB (paper figure 9): hue = spatial direction,
    saturation = spatial distance, brightness lowered by the temporal distance."""
    from matplotlib.colors import hsv_to_rgb

    dt, dy, dx = (offsets[..., a].astype(np.float64) for a in range(3))
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    radius = np.hypot(dy, dx)
    sat = radius / max(radius.max(), 1.0)
    val = 1.0 - 0.6 * np.abs(dt) / max(np.abs(dt).max(), 1.0)
    return (hsv_to_rgb(np.stack([hue, sat, val], axis=-1)) * 255).round().astype(np.uint8)


def plot_nnf_maps(fields: dict[str, NNFResult], clips: dict[str, np.ndarray],
                  path: str | Path, frame: int | None = None) -> Path:
    """One frame of each clip above the colour map of its nearest-neighbour field."""
    plt = _pyplot()
    names = list(fields)
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 4.4), squeeze=False)
    for c, name in enumerate(names):
        offsets = fields[name].offsets
        f = len(offsets) // 2 if frame is None else frame
        axes[0, c].imshow(clips[name][f + 1])  # patch row f is centred on frame f+1
        axes[0, c].set_title(f"{name}: frame {f + 1}", fontsize=9)
        axes[1, c].imshow(nnf_colour_map(offsets[f]))
        axes[1, c].set_title(f"NNF (NNFDIV {fields[name].nnfdiv:.3f})", fontsize=9)
        for ax in axes[:, c]:
            ax.axis("off")
    return _save(fig, path)


def plot_time_to_beat(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """bench_recipe's curves: next-frame PSNR gain over copy against Predictor training time.

    One line per clip (gain in dB on the watched unseen pairs), the 0.5 dB goal dashed, and beside
    it the share of pairs won; a falling curve after a peak is a model starting to memorise.
    """
    if not rows:
        raise ValueError("no clips to plot")
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        curve = row["curve"]
        minutes = [m["seconds"] / 60 for m in curve]
        ax.plot(minutes, [m["model_psnr"] - m["copy_psnr"] for m in curve], "o-", ms=3,
                label=row["clip"])
        ax2.plot(minutes, [m["pairs_won"] / m["pairs"] for m in curve], "o-", ms=3,
                 label=row["clip"])
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="goal: +0.5 dB")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_ylim(bottom=max(-3.0, ax.get_ylim()[0]))
    ax.set_xlabel("Predictor training, minutes")
    ax.set_ylabel("next-frame PSNR - copy PSNR (dB)")
    ax.legend(fontsize=8)
    ax2.axhline(0.5, color="grey", ls="--", lw=1)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("Predictor training, minutes")
    ax2.set_ylabel("share of unseen pairs the model wins")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
