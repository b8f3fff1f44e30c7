"""A real trained mace-torch model (shared/models/MACE_SPICE.model, 2022, float32 weights)
through MaceCalculator, against mace-torch 0.3.16's own outputs stored beside it.

Its product-basis tensors were computed by mace-torch in float32, so the importer keeps them
(``stored_product_basis``): mapped onto e3nn-jax's exact basis, forces would move by ~1e-7 eV/Å.
"""

from __future__ import annotations

import json

import ase
import numpy as np
import pytest
from conftest import shared_file

from mace_ase.calculator import MaceCalculator

# float64: energy relative, forces eV/Å, stress eV/Å^3; float32 (against the float64 reference):
# forces eV/Å and energy relative (E0 sums of 1e4 eV are added on the host in float64)
F64 = {"energy": 1e-9, "forces": 1e-10, "stress": 1e-12}
F32 = {"energy": 1e-7, "forces": 2e-5}


@pytest.fixture(scope="module")
def reference():
    return json.loads(shared_file("models", "MACE_SPICE_reference_outputs.json").read_text())["systems"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spice_model_matches_mace_torch(reference, dtype):
    calc = MaceCalculator(str(shared_file("models", "MACE_SPICE.model")), dtype=dtype)
    config = calc.model.config
    assert config.stored_product_basis and config.activation_scale == pytest.approx(1.6791767923989418, rel=1e-15)
    tolerance = F64 if dtype == "float64" else F32
    assert {"rmd17_aspirin_test01_frame0", "ase_ethanol", "water27_periodic_seed0"} == set(reference)
    for name, system in reference.items():
        atoms = ase.Atoms(numbers=system["numbers"], positions=system["positions"], cell=system["cell"], pbc=system["pbc"])
        atoms.calc = calc
        expected = system["float64"]
        energy = atoms.get_potential_energy()
        assert abs(energy - expected["energy"]) <= tolerance["energy"] * abs(expected["energy"]), (name, energy)
        assert np.abs(atoms.get_forces() - np.asarray(expected["forces"])).max() <= tolerance["forces"], name
        if atoms.pbc.all() and dtype == "float64":
            stress = atoms.get_stress()  # Voigt xx yy zz yz xz xy, as stored
            assert np.abs(stress - np.asarray(expected["stress"])).max() <= tolerance["stress"], name
        if dtype == "float64":  # mace-torch's node_energy: per-atom energies without E0
            e0 = dict(zip(config.atomic_numbers, config.atomic_energies))
            interaction = atoms.get_potential_energies() - [e0[z] for z in atoms.numbers]
            np.testing.assert_allclose(interaction, expected["node_energy"], rtol=0, atol=1e-12)
