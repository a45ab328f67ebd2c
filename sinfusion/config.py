"""Torch-free configuration of the networks: roles, prediction targets and network shapes.

Kept apart from sinfusion.network so that bundles can be read (by the server, by export tools) without
importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ROLES = ("predictor", "projector", "interpolator")
TARGETS = ("eps", "x0")
# Conditioning channels each role concatenates in front of the noisy frame.
COND_CHANNELS = {"predictor": 3, "projector": 0, "interpolator": 6}


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of one role's network. Stored in the bundle manifest so a bundle rebuilds its own model."""

    cond_channels: int = 0  # conditioning frames' channels (predictor 3, interpolator 6, projector 0)
    channels: int = 64  # width of every block (paper: 64)
    blocks: int = 16  # ConvNeXt blocks; depth sets the receptive field (paper: 16)
    expansion: int = 4  # inverted-bottleneck width multiplier inside a block
    kernel_size: int = 7  # depthwise kernel of each block
    embed_dim: int = 64  # sinusoidal features per embedded scalar (t, and k when used)
    use_k: bool = False  # embed the frame step k (Predictor only)
    # Anchored output (x0 targets with conditioning frames only): the network predicts the change from
    # its anchor, the mean of its conditioning frames (the Predictor's previous frame, the
    # Interpolator's two neighbours' blend), through a zero-initialised head. An untrained network
    # therefore starts at the copy (blend) baseline instead of at a grey frame. The change keeps each
    # channel's mean, and for the Predictor its contrast (std), so that an extrapolation cannot drift
    # in exposure frame after frame. See docs/training.md.
    anchored: bool = False

    def __post_init__(self) -> None:
        if self.blocks < 2 or self.blocks % 2:
            raise ValueError(f"blocks must be an even number >= 2, got {self.blocks}")
        if self.channels < 4 or self.kernel_size % 2 == 0:
            raise ValueError("channels must be >= 4 and kernel_size odd")
        if self.anchored and (self.cond_channels == 0 or self.cond_channels % 3):
            raise ValueError("an anchored network needs conditioning frames (3 channels each)")

    @property
    def in_channels(self) -> int:
        return self.cond_channels + 3

    @property
    def receptive_field(self) -> int:
        """Receptive field in pixels: stem 3x3, one kxk per block, head 3x3."""
        return 1 + 2 + self.blocks * (self.kernel_size - 1) + 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        return cls(**data)


def default_config(role: str, channels: int = 64, blocks: int = 16, **overrides) -> NetworkConfig:
    """The network config of a role at a given size."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    return NetworkConfig(
        cond_channels=COND_CHANNELS[role],
        channels=channels,
        blocks=blocks,
        use_k=(role == "predictor"),
        **overrides,
    )
