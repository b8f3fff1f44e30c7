"""mlip's own v2 MACE (``mlip.models.mace.Mace``) with perturbed random weights.

Used by test_archive_mlip_v2.py and tests/data/make_golden_mlip_v2.py. The weights are drawn
by NumPy alone from the parameter names and shapes (``draw_weights``), so the golden test can
rebuild the exact weights mlip evaluated without mlip; everything else here needs mlip.
Structures and the evaluator (mlip's graph construction, batching and predictor) come from
mlip_reference.py.
"""

from __future__ import annotations

import numpy as np

# The card architecture (mace-organics: 2 layers, 128 channels, l_max 3, correlation 2) in v2's field names.
CARD_CONFIG_V2 = dict(
    num_layers=2,
    num_channels=128,
    l_max=3,
    node_symmetry=3,
    correlation=2,
    readout_irreps=("16x0e", "0e"),
    num_readout_heads=1,
    num_rbf=8,
    activation="silu",
    radial_envelope="polynomial_envelope",
)
# Dataset statistics no float rounds exactly, so a wrong normalisation anywhere shows.
STATISTICS = dict(graph_cutoff_angstrom=5.0, avg_num_neighbors=14.3, avg_r_min_angstrom=None,
                  scaling_mean=-0.05, scaling_stdev=0.8)


def draw_weights(shapes: dict[str, tuple], seed: int, readout_gain: float, num_layers: int) -> dict[str, np.ndarray]:
    """Perturbed random float32 weights for mlip's '#'-joined parameter names (NumPy only).

    Unit normals (product weights with mlip's 1/sqrt(multiplicity)), then every entry scaled by
    U(0.6, 1.6) plus noise, and the readouts' last kernels amplified: the energy surface gets
    steep (eV between conformers) and no block sits near a trivial value, so a wrong coefficient
    anywhere shows. Drawn in the order JAX flattens mlip's parameter tree.
    """
    keys = sorted(shapes, key=lambda k: tuple(k.split("#")))
    rng = np.random.default_rng(seed)
    drawn = {}
    for key in keys:
        shape = tuple(shapes[key])
        std = 1.0
        if "#symmetric_contraction#" in key and np.prod(shape, dtype=int):
            # e3j: [S, C, 1, m]; e3nn backends: [S, m, C]
            std = (shape[-1] if "#LinearIndexwise_" in key else shape[-2]) ** -0.5
        drawn[key] = std * rng.standard_normal(shape)
    rng = np.random.default_rng(seed + 1)
    last_layer = f"#layers_{num_layers - 1}#"
    out = {}
    for key in keys:
        v = drawn[key]
        v = v * rng.uniform(0.6, 1.6, size=v.shape) + 0.3 * (np.std(v) + 1e-3) * rng.standard_normal(v.shape)
        if "#readout_block#" in key and ("#Linear_1#" in key or last_layer not in key):
            v = v * readout_gain  # the energy is linear in these
        out[key] = v.astype(np.float32)
    return out


def digest(flat: dict[str, np.ndarray]) -> str:
    """SHA-256 of the parameters (names, dtypes, shapes, bytes), independent of the zip's metadata."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(flat):
        value = np.ascontiguousarray(flat[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ with mlip


def dataset_info(atomic_energies: dict[int, float], **overrides):
    from mlip.data import DatasetInfo

    return DatasetInfo(**{**STATISTICS, "atomic_energies_map": atomic_energies, **overrides})


def predictor(config: dict, info):
    """mlip's energy, forces and stress predictor, built as ForceField.from_mlip_network builds it."""
    from mlip.models import ForceField
    from mlip.models.mace.network import Mace
    from mlip.typing.properties import Properties

    network = Mace(config=Mace.Config(**config), dataset_info=info)
    properties = Properties(stress=True)
    predictor_class = ForceField.get_predictor_class(properties, network.config)
    head = ForceField.get_energy_head(network.config, properties, network)
    return predictor_class(mlip_network=network, required_properties=properties, energy_head=head)


def parameter_shapes(predictor) -> dict[str, tuple]:
    """mlip's parameter names ('#'-joined, as in params.npz) and shapes, from tracing its init."""
    import jax
    from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init

    shapes = jax.eval_shape(predictor.init, jax.random.key(0), get_dummy_graph_for_model_init())
    return {"#".join(k.key for k in path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}


def build_force_field(config: dict, info, seed: int = 0, readout_gain: float = 40.0):
    """mlip's v2 MACE with perturbed random float32 parameters (energy, forces, stress)."""
    import jax.numpy as jnp
    from mlip.models import ForceField
    from mlip.models.mace.network import Mace
    from mlip.utils.dict_flatten import unflatten_dict

    p = predictor(config, info)
    flat = draw_weights(parameter_shapes(p), seed, readout_gain, Mace.Config(**config).num_layers)
    params = unflatten_dict({tuple(k.split("#")): jnp.asarray(v) for k, v in flat.items()})
    return ForceField(p, params)
