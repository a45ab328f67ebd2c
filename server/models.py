"""The served models: every bundle of the --models folder with its runtime, loaded once at startup."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sinfusion.bundle import MANIFEST, Bundle, BundleError
from sinfusion.sampling import Models

from .config import ConfigError
from .runtimes import LoadedRuntime, select_runtime

log = logging.getLogger("sinfusion.server")

MAX_STEP = 3  # largest |k| of the Predictor (paper appendix D: k in [-3, 3])


@dataclass
class ServedModel:
    """One bundle ready to serve: manifest facts, its runtime and the sampling facts of served roles."""

    bundle: Bundle
    runtime: LoadedRuntime
    models: Models  # only the roles the runtime has engines for
    clip: np.ndarray  # the training clip, uint8 (N, H, W, 3): start frames of Extrapolate
    scheduler: object = field(default=None, repr=False)  # server.scheduler.Scheduler, set by serve()

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def roles(self) -> list[str]:
        return list(self.models.roles)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model's frames."""
        return self.bundle.manifest.height, self.bundle.manifest.width

    @property
    def schedule_steps(self) -> int:
        """T: the longest schedule among served roles (upper bound of steps and correction_steps)."""
        return max(rs.schedule.steps for rs in self.models.roles.values())

    def steps_bound(self, role: str) -> int:
        return self.models[role].schedule.steps

    @property
    def capabilities(self) -> list[str]:
        caps = []
        if "predictor" in self.models.roles and self.bundle.manifest.mode == "video":
            caps.append("extrapolate")
        if "projector" in self.models.roles:
            caps.append("generate")
        if "interpolator" in self.models.roles:
            caps.append("upsample")
        return caps

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({s for sizes in self.runtime.batch_sizes.values() for s in sizes})


def bundle_dirs(models_dir: Path) -> list[Path]:
    """The bundle folders of --models: its subfolders with a manifest, or the folder itself."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ConfigError(f"--models {models_dir}: no such folder")
    if (models_dir / MANIFEST).is_file():
        return [models_dir]
    found = sorted(p for p in models_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    if not found:
        raise ConfigError(f"--models {models_dir}: no bundles (subfolders with {MANIFEST}) found")
    return found


def load_model(path: Path, runtime: str, max_batch: int) -> ServedModel:
    try:
        bundle = Bundle.open(path)
        if not bundle.roles:
            raise ConfigError(f"bundle {path}: no trained roles")
        clip = bundle.frames()
        loaded = select_runtime(bundle, runtime, max_batch)
    except BundleError as exc:
        raise ConfigError(f"bundle {path}: {exc}") from None
    served = {r: rs for r, rs in bundle.models().roles.items() if r in loaded.batch_sizes}
    return ServedModel(bundle, loaded, Models(served), clip)


def load_models(models_dir: Path, runtime: str = "auto", max_batch: int = 8) -> dict[str, ServedModel]:
    """Every bundle under models_dir, by manifest name. Raises ConfigError with one line."""
    served: dict[str, ServedModel] = {}
    for path in bundle_dirs(models_dir):
        model = load_model(path, runtime, max_batch)
        if model.name in served:
            raise ConfigError(f"two bundles are named {model.name!r}: {served[model.name].bundle.path} "
                              f"and {path}")
        served[model.name] = model
        log.info("serving %s from %s: %dx%d, roles %s, runtime %s", model.name, path,
                 model.size[1], model.size[0], ",".join(model.roles), model.runtime.name)
    return served
