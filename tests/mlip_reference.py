"""Helpers that build and evaluate models with InstaDeep's mlip (the reference implementation).

Used by test_parity_mlip.py and tests/data/make_golden.py; importing this module needs mlip.
Every model built here is mlip's own v1 MACE (``mlip.models_v1.mace.Mace``) with random
parameters in mlip's parameter tree, perturbed so that no block sits at a near-trivial value
and the energy surface is steep, and is evaluated through mlip's own graph construction
(``Graph.from_chemical_system``), batching and predictor.
"""

from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase.build import molecule

from mlip.data import DatasetInfo
from mlip.data.chemical_system import ChemicalSystem
from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init
from mlip.data.helpers.dynamically_batch import dynamically_batch
from mlip.graph import Graph
from mlip.models import ForceField
from mlip.models_v1.mace.models import Mace
from mlip.models_v1.predictor_v1 import ForceFieldPredictorV1
from mlip.typing.properties import Properties

SPICE2_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)  # H C N O F P S Cl Br I

# The target model card (mace-organics): the architecture mace-ase must reproduce.
CARD_CONFIG = dict(
    num_layers=2,
    num_channels=128,
    l_max=3,
    node_symmetry=3,
    correlation=2,
    readout_irreps=("16x0e", "0e"),
    num_readout_heads=1,
    include_pseudotensors=False,
    num_bessel=8,
    activation="silu",
    radial_envelope="polynomial_envelope",
    symmetric_tensor_product_basis=False,
    atomic_energies="average",
)


def xtb_atomic_energies(data_dir: Path) -> dict[int, float]:
    """GFN2-xTB isolated-atom energies (eV) of the ten SPICE2 elements: realistic E0s."""
    atoms = ase.io.read(data_dir / "xtb_druglike" / "xtb_isolated_atoms.xyz", ":")
    return {int(a.numbers[0]): float(a.get_potential_energy()) for a in atoms}


def dataset_info(atomic_energies: dict[int, float], **overrides) -> DatasetInfo:
    settings = dict(
        atomic_energies_map=atomic_energies,
        graph_cutoff_angstrom=5.0,
        # Ordinary statistics, none of them a float32 number (1.0 is, but the radial
        # normalisation mlip derives from it is not): a constant rounded to float32 on one
        # side shows as ~1e-9 eV/atom.
        avg_num_neighbors=14.3,
        avg_r_min_angstrom=1.0,
        scaling_mean=-0.05,
        scaling_stdev=0.8,
    )
    settings.update(overrides)
    return DatasetInfo(**settings)


def random_params(predictor, seed: int):
    """Random parameters in mlip's own tree (shapes from tracing mlip's init, not running it).

    Unit normals, with the symmetric-contraction weights scaled by 1/sqrt(multiplicity) as
    mlip's initialiser does; running mlip's eager init instead takes ~40 s for the card model.
    """
    shapes = jax.eval_shape(predictor.init, jax.random.key(seed), get_dummy_graph_for_model_init())
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        std = leaf.shape[-2] ** -0.5 if "SymmetricContraction" in jax.tree_util.keystr(path) else 1.0
        return std * rng.standard_normal(leaf.shape)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def perturb(params, seed: int, readout_gain: float):
    """Scale every entry by U(0.6, 1.6), add noise, and amplify the readouts.

    Random MACE readouts give energies that hardly change between conformers; the readout
    gain makes the energy surface steep (eV between conformers, forces of several eV/Å), so a
    wrong coefficient anywhere shows. Returns float32 leaves (exactly representable in float64).
    """
    rng = np.random.default_rng(seed)

    def change(path, value):
        name = jax.tree_util.keystr(path)
        v = np.asarray(value, np.float64)
        v = v * rng.uniform(0.6, 1.6, size=v.shape) + 0.3 * (np.std(v) + 1e-3) * rng.standard_normal(v.shape)
        last_linear = "'NonLinearReadoutBlock_" in name and "'Linear_1'" in name
        if last_linear or "'LinearReadoutBlock_" in name:  # energy is linear in these
            v = v * readout_gain
        return jnp.asarray(v.astype(np.float32))

    return jax.tree_util.tree_map_with_path(change, params)


def build_force_field(config: dict, info: DatasetInfo, seed: int = 0, readout_gain: float = 40.0) -> ForceField:
    """mlip's v1 MACE with perturbed random float32 parameters (energy, forces, stress)."""
    network = Mace(config=Mace.Config(**config), dataset_info=info)
    predictor = ForceFieldPredictorV1(mlip_network=network, required_properties=Properties(stress=True))
    return ForceField(predictor, perturb(random_params(predictor, seed), seed + 1, readout_gain))


def with_dtype(params, dtype):
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), params)


class Evaluator:
    """mlip's own prediction (graph building, batching, predictor) for a list of structures.

    All structures go into one padded batch: one compile, one call. ``params`` is an
    argument, so parameters read back by mlip's loader reuse the compiled program.
    """

    def __init__(self, force_field: ForceField):
        self.cutoff = force_field.cutoff_distance
        self._apply = jax.jit(force_field.predictor.apply)

    def __call__(self, params, structures, dtype=np.float64) -> list[dict]:
        # The reference is float64 whatever mode the caller runs in (module fixtures run
        # with JAX's defaults, where float64 arrays silently become float32).
        with jax.enable_x64(True):
            return self._by_periodicity(params, structures, dtype)

    def _by_periodicity(self, params, structures, dtype) -> list[dict]:
        # mlip batches periodic and non-periodic graphs separately (their pytrees differ).
        results = [None] * len(structures)
        for periodic in (False, True):
            group = [i for i, a in enumerate(structures) if bool(np.any(a.pbc)) == periodic]
            if group:
                for i, result in zip(group, self._batch(params, [structures[i] for i in group], dtype)):
                    results[i] = result
        return results

    def _batch(self, params, structures, dtype) -> list[dict]:
        graphs = [
            Graph.from_chemical_system(ChemicalSystem.from_ase_atoms(a, get_property_fields=False), self.cutoff)
            for a in structures
        ]
        n_node = sum(len(a) for a in structures) + 1
        n_edge = sum(len(g.senders) for g in graphs) + 1
        batch = next(dynamically_batch(graphs, n_node=n_node, n_edge=n_edge, n_graph=len(graphs) + 1))
        batch = jax.tree.map(lambda x: x.astype(dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else x, batch)
        out = self._apply(with_dtype(params, dtype), batch).to_prediction()
        results, start = [], 0
        for g, atoms in enumerate(structures):
            results.append({
                "energy": float(out.energy[g]),
                "forces": np.asarray(out.forces[start : start + len(atoms)], np.float64),
                "stress": None if out.stress is None else np.asarray(out.stress[g], np.float64),
            })
            start += len(atoms)
        return results


# ------------------------------------------------------------------ structures


def aspirin_frames(data_dir: Path, indices=(0, 100, 450, 700, 900)) -> list[ase.Atoms]:
    data = np.load(data_dir / "rmd17" / "rmd17_aspirin_train_01.npz")
    return [ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][i]) for i in indices]


def druglike_covering_all_elements(data_dir: Path, elements=SPICE2_ELEMENTS) -> list[ase.Atoms]:
    """A few xtb_druglike frames (one per molecule) that together hold every element."""
    frames = ase.io.read(data_dir / "xtb_druglike" / "xtb_druglike_train.xyz", ":")
    chosen, seen, molecules = [], set(), set()
    # Rarest elements first, so few molecules are needed.
    for z in sorted(elements, key=lambda z: sum(z in f.numbers for f in frames)):
        if z in seen:
            continue
        frame = next(f for f in frames if z in f.numbers and f.info.get("mol_name") not in molecules)
        molecules.add(frame.info.get("mol_name"))
        chosen.append(ase.Atoms(numbers=frame.numbers, positions=frame.positions))
        seen |= set(int(n) for n in frame.numbers)
    return chosen


def water_box(num_per_side: int = 4, seed: int = 0) -> ase.Atoms:
    """num_per_side**3 randomly oriented waters at liquid density in a periodic cube."""
    rng = np.random.default_rng(seed)
    spacing = (29.9) ** (1 / 3)  # Å per molecule at 1 g/cm^3
    atoms = ase.Atoms()
    for i in range(num_per_side):
        for j in range(num_per_side):
            for k in range(num_per_side):
                w = molecule("H2O")
                w.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
                w.translate(spacing * (np.array([i, j, k]) + 0.5) + rng.normal(scale=0.15, size=3) - w.positions.mean(0))
                atoms += w
    side = spacing * num_per_side
    atoms.cell = [[side, 0.0, 0.0], [0.3, side * 1.01, 0.0], [-0.2, 0.4, side * 0.99]]
    atoms.pbc = True
    atoms.wrap()
    return atoms
