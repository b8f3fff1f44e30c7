"""MACE in JAX: config, parameters, and pure energy functions."""

from ..deferred_imports import defer_unused_imports

defer_unused_imports()  # before e3nn-jax is imported: what it imports and MACE never uses waits

from .config import MaceConfig, UnsupportedConfigError
from .graph import Graph, single_graph
from .mace import invariant_descriptors, node_energies, node_features
from .params import init_params, parameter_layout
from .predict import energy_forces_stress

__all__ = [
    "Graph",
    "MaceConfig",
    "UnsupportedConfigError",
    "energy_forces_stress",
    "init_params",
    "invariant_descriptors",
    "node_energies",
    "node_features",
    "parameter_layout",
    "single_graph",
]
