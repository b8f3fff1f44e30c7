"""Hyper-parameters of a MACE model, as one frozen (hashable) dataclass.

The config is a static argument of every jitted function: two models with the
same config share compiled code, and the config never changes inside a trace.
Field names follow mlip's ``MaceConfig`` where they mean the same thing; the
dataset-derived numbers (elements, reference energies, neighbour count,
scaling) live here too, so that a config plus a params pytree is a whole model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import UnsupportedConfigError  # re-exported by mace_ase.model

ACTIVATIONS = ("silu", "swish", "tanh", "relu", "elu", "sigmoid", "none")
RADIAL_ENVELOPES = ("polynomial_envelope", "soft_envelope")


_RADIAL_SCALE_INPUTS = {"num_bessel", "cutoff", "radial_envelope", "avg_r_min"}


@dataclass(frozen=True)
class MaceConfig:
    # Chemistry: species index i means element atomic_numbers[i] (sorted).
    atomic_numbers: tuple[int, ...]
    atomic_energies: tuple[float, ...]  # eV, one per element, added per atom
    cutoff: float = 5.0  # Å
    # Architecture (mlip MaceConfig names)
    num_layers: int = 2
    num_channels: int = 128
    l_max: int = 3
    node_symmetry: int = 3
    correlation: int = 2
    readout_irreps: tuple[str, str] = ("16x0e", "0e")
    num_readout_heads: int = 1
    include_pseudotensors: bool = False
    num_bessel: int = 8
    activation: str = "silu"
    radial_envelope: str = "polynomial_envelope"
    symmetric_tensor_product_basis: bool = False
    radial_mlp_hidden: tuple[int, ...] = (64, 64, 64)
    # Dataset statistics
    avg_num_neighbors: float = 1.0
    avg_r_min: float | None = None
    scaling_mean: float = 0.0
    scaling_std: float = 1.0
    # Model constants, fixed once in float64 and cast at use (never recomputed in a run's dtype).
    # radial_scale multiplies the radial basis: 1/RMS of the basis on [avg_r_min, cutoff] (mlip's
    # definition), filled in from avg_r_min when a config is made and stored in archives, so a
    # saved model evaluates identically on every JAX version; 1.0 without avg_r_min.
    radial_scale: float | None = None
    # activation_scale multiplies the non-linearity; None: e3nn-jax's second-moment
    # normalisation of `activation`, computed in float64 (mlip's definition).
    activation_scale: float | None = None
    # Free-form provenance that must not affect the numbers (kept out of hash).
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "atomic_numbers", tuple(int(z) for z in self.atomic_numbers))
        object.__setattr__(self, "atomic_energies", tuple(float(e) for e in self.atomic_energies))
        object.__setattr__(self, "readout_irreps", tuple(str(r) for r in self.readout_irreps))
        object.__setattr__(self, "radial_mlp_hidden", tuple(int(h) for h in self.radial_mlp_hidden))
        validate(self)
        if self.radial_scale is None:
            from .radial import embedding_scale

            scale = embedding_scale(self.num_bessel, self.cutoff, self.radial_envelope, self.avg_r_min)
            object.__setattr__(self, "radial_scale", scale)
        object.__setattr__(self, "radial_scale", float(self.radial_scale))
        if self.activation_scale is not None:
            object.__setattr__(self, "activation_scale", float(self.activation_scale))

    @property
    def num_species(self) -> int:
        return len(self.atomic_numbers)

    def replace(self, **changes) -> "MaceConfig":
        if "radial_scale" not in changes and _RADIAL_SCALE_INPUTS & set(changes):
            changes["radial_scale"] = None  # derived from these: recomputed, never stale
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MaceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnsupportedConfigError(f"unknown MaceConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def validate(config: MaceConfig) -> None:
    """Refuse, by name, every value the model code does not implement."""

    def refuse(name, value, why):
        raise UnsupportedConfigError(f"unsupported MACE config: {name}={value!r} ({why})")

    zs = config.atomic_numbers
    if len(zs) == 0:
        refuse("atomic_numbers", zs, "a model needs at least one element")
    if list(zs) != sorted(set(zs)) or not all(1 <= z <= 118 for z in zs):
        refuse("atomic_numbers", zs, "must be distinct atomic numbers in increasing order")
    if len(config.atomic_energies) != len(zs):
        refuse("atomic_energies", config.atomic_energies, f"need one per element ({len(zs)})")
    if not config.cutoff > 0:
        refuse("cutoff", config.cutoff, "must be positive")
    if config.num_layers < 1:
        refuse("num_layers", config.num_layers, "at least one layer")
    if config.num_channels < 1:
        refuse("num_channels", config.num_channels, "at least one channel")
    if not 0 <= config.l_max <= 6:
        refuse("l_max", config.l_max, "supported range is 0..6")
    if not 0 <= config.node_symmetry <= config.l_max:
        refuse("node_symmetry", config.node_symmetry, f"must be between 0 and l_max={config.l_max}")
    if not 1 <= config.correlation <= 4:
        refuse("correlation", config.correlation, "supported range is 1..4")
    if config.num_readout_heads < 1:
        refuse("num_readout_heads", config.num_readout_heads, "at least one head")
    if config.num_bessel < 1:
        refuse("num_bessel", config.num_bessel, "at least one Bessel function")
    if config.activation not in ACTIVATIONS:
        refuse("activation", config.activation, f"choose one of {', '.join(ACTIVATIONS)}")
    if config.radial_envelope not in RADIAL_ENVELOPES:
        refuse("radial_envelope", config.radial_envelope, f"choose one of {', '.join(RADIAL_ENVELOPES)}")
    if len(config.readout_irreps) != 2:
        refuse("readout_irreps", config.readout_irreps, "exactly two entries: hidden irreps and output irreps")
    hidden, out = config.readout_irreps
    if out.replace(" ", "") not in ("0e", "1x0e"):
        refuse("readout_irreps", config.readout_irreps, "the output irreps must be a single scalar '0e' (the energy)")
    _check_scalar_irreps(hidden, refuse)
    if not config.avg_num_neighbors > 0:
        refuse("avg_num_neighbors", config.avg_num_neighbors, "must be positive")
    if config.avg_r_min is not None and not 0 <= config.avg_r_min < config.cutoff:
        refuse("avg_r_min", config.avg_r_min, "must lie in [0, cutoff)")
    for name in ("radial_scale", "activation_scale"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            refuse(name, value, "must be a positive finite number")


def _check_scalar_irreps(irreps: str, refuse) -> None:
    import e3nn_jax as e3nn

    try:
        parsed = e3nn.Irreps(irreps)
    except Exception as error:  # e3nn raises bare ValueErrors with terse text
        refuse("readout_irreps", irreps, f"not an irreps string: {error}")
    if not all(ir.l == 0 and ir.p == 1 for _, ir in parsed) or parsed.num_irreps < 1:
        refuse("readout_irreps", irreps, "the hidden readout layer must be made of even scalars, e.g. '16x0e'")
