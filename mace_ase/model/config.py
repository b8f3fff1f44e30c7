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
MESSAGE_NORMALIZATIONS = ("avg_num_neighbors", "density")
# name -> number of parameters
DISTANCE_TRANSFORMS = {"agnesi": 3, "soft": 1}
PAIR_REPULSIONS = {"zbl": 7}


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
    # Further physics (mace-torch's model family). The defaults are mlip v1's MACE.
    bessel_frequencies: tuple[float, ...] | None = None  # 1/Å, one per Bessel function; None: n pi / cutoff
    bessel_prefactor: float | None = None  # None: sqrt(2 / cutoff)
    envelope_p: int = 5  # exponent of the polynomial envelope
    first_layer_residual: bool = False  # layer 0: element-wise skip from the embedding instead of a selector
    message_normalization: str = "avg_num_neighbors"  # or "density": divide by 1 + a learned neighbour density
    distance_transform: str | None = None  # "agnesi" or "soft": the Bessel functions see T(r), not r
    distance_transform_params: tuple[float, ...] = ()  # agnesi: (q, p, a); soft: (alpha,)
    covalent_radii: tuple[float, ...] | None = None  # Å, one per element (distance transform, pair repulsion)
    pair_repulsion: str | None = None  # "zbl": screened nuclear repulsion, added to the readouts before scaling
    pair_repulsion_params: tuple[float, ...] = ()  # zbl: (c1, c2, c3, c4, a_exp, a_prefactor, envelope p)
    pair_repulsion_prefactor_float32: bool = False  # zbl: 14.3996 Z_u Z_v rounded to float32, as mace-torch has it
    stored_product_basis: bool = False  # the product basis' coupling tensors are params (u{order}_{irrep}), frozen
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
    # normalisation of `activation`, computed in float64 (mlip's definition). A model may carry
    # its own (mace-torch's: e3nn-torch's Monte-Carlo estimate, 0.16 % off for silu).
    activation_scale: float | None = None
    # Free-form provenance that must not affect the numbers (kept out of hash).
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "atomic_numbers", tuple(int(z) for z in self.atomic_numbers))
        object.__setattr__(self, "atomic_energies", tuple(float(e) for e in self.atomic_energies))
        object.__setattr__(self, "readout_irreps", tuple(str(r) for r in self.readout_irreps))
        object.__setattr__(self, "radial_mlp_hidden", tuple(int(h) for h in self.radial_mlp_hidden))
        for name in ("bessel_frequencies", "covalent_radii"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        for name in ("distance_transform_params", "pair_repulsion_params"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
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
    if config.bessel_frequencies is not None and len(config.bessel_frequencies) != config.num_bessel:
        refuse("bessel_frequencies", config.bessel_frequencies, f"need one per Bessel function ({config.num_bessel})")
    if config.bessel_prefactor is not None and not config.bessel_prefactor > 0:
        refuse("bessel_prefactor", config.bessel_prefactor, "must be positive")
    if config.envelope_p < 1:
        refuse("envelope_p", config.envelope_p, "at least 1")
    if config.message_normalization not in MESSAGE_NORMALIZATIONS:
        refuse("message_normalization", config.message_normalization, f"choose one of {', '.join(MESSAGE_NORMALIZATIONS)}")
    if config.distance_transform is not None:
        if config.distance_transform not in DISTANCE_TRANSFORMS:
            refuse("distance_transform", config.distance_transform, f"choose None or one of {', '.join(DISTANCE_TRANSFORMS)}")
        if len(config.distance_transform_params) != DISTANCE_TRANSFORMS[config.distance_transform]:
            refuse("distance_transform_params", config.distance_transform_params,
                   f"{config.distance_transform} takes {DISTANCE_TRANSFORMS[config.distance_transform]} numbers")
    if config.pair_repulsion is not None:
        if config.pair_repulsion not in PAIR_REPULSIONS:
            refuse("pair_repulsion", config.pair_repulsion, f"choose None or one of {', '.join(PAIR_REPULSIONS)}")
        if len(config.pair_repulsion_params) != PAIR_REPULSIONS[config.pair_repulsion]:
            refuse("pair_repulsion_params", config.pair_repulsion_params,
                   f"{config.pair_repulsion} takes {PAIR_REPULSIONS[config.pair_repulsion]} numbers")
    needs_radii = config.distance_transform is not None or config.pair_repulsion is not None
    if needs_radii and (config.covalent_radii is None or len(config.covalent_radii) != len(zs)):
        refuse("covalent_radii", config.covalent_radii, f"the distance transform and pair repulsion need one radius per element ({len(zs)})")
    if config.covalent_radii is not None and not all(r > 0 for r in config.covalent_radii):
        refuse("covalent_radii", config.covalent_radii, "radii must be positive")
    custom_radial = (config.distance_transform is not None or config.bessel_frequencies is not None
                     or config.bessel_prefactor is not None or config.envelope_p != 5)
    if custom_radial and (config.radial_envelope != "polynomial_envelope" or config.avg_r_min is not None):
        refuse("radial_envelope", config.radial_envelope,
               "Bessel frequencies, envelope_p and distance transforms go with the polynomial envelope and avg_r_min=None")
    if config.stored_product_basis and config.symmetric_tensor_product_basis:
        refuse("stored_product_basis", True, "a stored basis replaces the symmetric one; set one of the two")


def _check_scalar_irreps(irreps: str, refuse) -> None:
    import e3nn_jax as e3nn

    try:
        parsed = e3nn.Irreps(irreps)
    except Exception as error:  # e3nn raises bare ValueErrors with terse text
        refuse("readout_irreps", irreps, f"not an irreps string: {error}")
    if not all(ir.l == 0 and ir.p == 1 for _, ir in parsed) or parsed.num_irreps < 1:
        refuse("readout_irreps", irreps, "the hidden readout layer must be made of even scalars, e.g. '16x0e'")
