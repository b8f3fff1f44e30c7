"""Build mlip's own v2 MACE (``mlip.models.mace.Mace``) with perturbed random weights (needs mlip).

Used by test_archive_mlip_v2.py and tests/data/make_golden_mlip_v2.py. Structures and the
evaluator (mlip's graph construction, batching and predictor) come from mlip_reference.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlip.data import DatasetInfo
from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init
from mlip.models import ForceField
from mlip.models.mace.network import Mace
from mlip.typing.properties import Properties

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


def dataset_info(atomic_energies: dict[int, float], **overrides) -> DatasetInfo:
    """Dataset statistics no float rounds exactly: a wrong normalisation anywhere shows."""
    settings = dict(
        atomic_energies_map=atomic_energies,
        graph_cutoff_angstrom=5.0,
        avg_num_neighbors=14.3,
        avg_r_min_angstrom=None,
        scaling_mean=-0.05,
        scaling_stdev=0.8,
    )
    settings.update(overrides)
    return DatasetInfo(**settings)


def predictor(config: dict, info: DatasetInfo):
    """mlip's predictor for energy, forces and stress, built as ForceField.from_mlip_network builds it."""
    network = Mace(config=Mace.Config(**config), dataset_info=info)
    properties = Properties(stress=True)
    predictor_class = ForceField.get_predictor_class(properties, network.config)
    head = ForceField.get_energy_head(network.config, properties, network)
    return predictor_class(mlip_network=network, required_properties=properties, energy_head=head)


def random_params(predictor, seed: int):
    """Unit normals in mlip's parameter tree, the product weights scaled as mlip initialises them.

    Shapes come from tracing mlip's init (running it eagerly takes tens of seconds).
    """
    shapes = jax.eval_shape(predictor.init, jax.random.key(seed), get_dummy_graph_for_model_init())
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        std = 1.0
        if "symmetric_contraction" in name and leaf.size:
            # e3j: [S, C, 1, m] with std 1/sqrt(m); e3nn backends: [S, m, C] with std 1/sqrt(m)
            std = (leaf.shape[-1] if "LinearIndexwise" in name else leaf.shape[-2]) ** -0.5
        return std * rng.standard_normal(leaf.shape)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def perturb(params, seed: int, readout_gain: float, num_layers: int):
    """Scale every entry by U(0.6, 1.6), add noise, and amplify the readouts' last kernels.

    The gain makes the energy surface steep (eV between conformers), so a wrong coefficient
    anywhere shows. Returns float32 leaves (exactly representable in float64).
    """
    rng = np.random.default_rng(seed)
    last_layer = f"'layers_{num_layers - 1}'"

    def change(path, value):
        name = jax.tree_util.keystr(path)
        v = np.asarray(value, np.float64)
        v = v * rng.uniform(0.6, 1.6, size=v.shape) + 0.3 * (np.std(v) + 1e-3) * rng.standard_normal(v.shape)
        energy_linear = "'readout_block'" in name and ("'Linear_1'" in name or last_layer not in name)
        if energy_linear:
            v = v * readout_gain
        return jnp.asarray(v.astype(np.float32))

    return jax.tree_util.tree_map_with_path(change, params)


def build_force_field(config: dict, info: DatasetInfo, seed: int = 0, readout_gain: float = 40.0) -> ForceField:
    """mlip's v2 MACE with perturbed random float32 parameters."""
    p = predictor(config, info)
    num_layers = Mace.Config(**config).num_layers
    return ForceField(p, perturb(random_params(p, seed), seed + 1, readout_gain, num_layers))
