"""The served bundles: every bundle of the --models folder with its runtime, loaded once at startup."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sinfusion.bundle import MANIFEST, Bundle, BundleError
from sinfusion.io.cli import EXIT_INPUT
from sinfusion.nextframe import summary_line
from sinfusion.sampling import BundleSampling

from .config import ConfigError
from .runtimes import LoadedRuntime, select_runtime
from .scheduler import Scheduler

log = logging.getLogger("sinfusion.server")

MAX_STEP = 3  # largest |k| of the Predictor (paper appendix D: k in [-3, 3])


@dataclass
class ServedModel:
    """One bundle ready to serve: manifest facts, its runtime and the sampling facts of served roles."""

    bundle: Bundle
    runtime: LoadedRuntime
    sampling: BundleSampling  # only the roles the runtime has engines for
    clip: np.ndarray  # the training clip, uint8 (N, H, W, 3): start frames of Extrapolate
    scheduler: Scheduler | None = field(default=None, repr=False)  # set by server.app.serve

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def roles(self) -> list[str]:
        return list(self.sampling.roles)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model's frames."""
        return self.bundle.manifest.height, self.bundle.manifest.width

    @property
    def schedule_steps(self) -> int:
        """T: the longest schedule among served roles (upper bound of steps and correction_steps)."""
        return max(rs.schedule.steps for rs in self.sampling.roles.values())

    def steps_bound(self, role: str) -> int:
        return self.sampling[role].schedule.steps

    @property
    def capabilities(self) -> list[str]:
        caps = []
        if "predictor" in self.sampling.roles and self.bundle.manifest.mode == "video":
            caps.append("extrapolate")
        if "projector" in self.sampling.roles:
            caps.append("generate")
        if "interpolator" in self.sampling.roles:
            caps.append("upsample")
        return caps

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({s for sizes in self.runtime.batch_sizes.values() for s in sizes})


def bundle_dirs(models_dir: Path) -> list[Path]:
    """The bundle folders of --models: its subfolders with a manifest, or the folder itself."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ConfigError(f"--models {models_dir}: no such folder", EXIT_INPUT)
    if (models_dir / MANIFEST).is_file():
        return [models_dir]
    found = sorted(p for p in models_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    if not found:
        raise ConfigError(f"--models {models_dir}: no bundles (subfolders with {MANIFEST}) found",
                          EXIT_INPUT)
    return found


@dataclass
class RefusedBundle:
    """A bundle found under --models that is not served, and why (the log and health say so too)."""

    name: str  # the manifest's name, or the folder's when the manifest cannot be read
    path: Path
    reason: str

    @property
    def public_reason(self) -> str:
        """The reason for clients: paths relative to --models (the server's layout is not theirs)."""
        reason = self.reason.replace(str(self.path.parent) + "/", "")
        return reason if len(reason) <= 300 else reason[:300] + "..."


class BundleRefused(Exception):
    """load_model's refusal: the reason, without the path (the caller adds it)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


def load_model(path: Path, runtime: str, max_batch: int, compile_cache: Path | None = None
               ) -> ServedModel:
    """One bundle, every file it serves from checksum-verified; BundleRefused says why not."""
    name = path.name
    try:
        bundle = Bundle.open(path)
        name = bundle.name
        if not bundle.roles:
            raise BundleRefused(name, "no trained roles")
        clip = bundle.frames()
        loaded = select_runtime(bundle, runtime, max_batch, compile_cache=compile_cache)
    except (BundleError, ConfigError) as exc:
        raise BundleRefused(name, str(exc)) from None
    bundle_sampling = bundle.sampling()
    served = {r: rs for r, rs in bundle_sampling.roles.items() if r in loaded.batch_sizes}
    if not loaded.name.startswith("torch"):
        # Engines do not read the weights, but a damaged weights file means damaged storage and a
        # later fallback to PyTorch would refuse it: say so now rather than at the next restart.
        for role in served:
            try:
                bundle.verify_weights(role)
            except BundleError as exc:
                log.warning("bundle %s: %s (not used by %s, whose engines are verified; restore or "
                            "re-train the bundle)", name, exc, loaded.name)
    unverifiable = bundle.unverifiable()
    if unverifiable:
        log.warning("bundle %s: the manifest records no checksum for %s, so damage there cannot be "
                    "detected (written by an older version; re-train or re-export to add them)",
                    name, ", ".join(unverifiable))
    return ServedModel(bundle, loaded, replace(bundle_sampling, roles=served), clip)


def load_models(models_dir: Path, runtime: str = "auto", max_batch: int = 8, strict: bool = False,
                compile_cache: Path | None = None
                ) -> tuple[dict[str, ServedModel], list[RefusedBundle]]:
    """Every bundle under models_dir: (served by manifest name, refused with reasons).

    A bundle that cannot be served is logged as an ERROR and refused; the others are served. With
    `strict`, or when no bundle can be served, that is a ConfigError (one line) instead.
    """
    served: dict[str, ServedModel] = {}
    refused: list[RefusedBundle] = []
    for path in bundle_dirs(models_dir):
        try:
            model = load_model(path, runtime, max_batch, compile_cache)
            if model.name in served:
                raise BundleRefused(model.name, f"another bundle has the name {model.name!r}: "
                                                f"{served[model.name].bundle.path}")
        except BundleRefused as exc:
            if strict:
                raise ConfigError(f"bundle {path}: {exc.reason}", EXIT_INPUT) from None
            refused.append(RefusedBundle(exc.name, path, exc.reason))
            continue
        served[model.name] = model
        log.info("serving %s from %s: %dx%d, roles %s, runtime %s; %s", model.name, path,
                 model.size[1], model.size[0], ",".join(model.roles), model.runtime.name,
                 summary_line(model.bundle.manifest.quality))
    if not served:  # one line, the exit's: nothing to serve
        raise ConfigError("no bundle can be served: " + "; ".join(
            f"bundle {r.path}: {r.reason}" for r in refused), EXIT_INPUT)
    for r in refused:
        log.error("bundle %s refused (model %s not served): %s", r.path, short(r.name), r.reason)
    return served, refused


def short(text: str, limit: int = 64) -> str:
    """repr() of a string cut to `limit` characters: client- or file-supplied names in messages."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
