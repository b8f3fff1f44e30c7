"""MLIPAudit (InstaDeep's benchmark suite, the test extra) as a client of MaceCalculator.

The calculator is loaded the way ``mlipaudit benchmark -m benchmarks/mlipaudit/model.py``
loads it (MLIPAudit's own loader), and three small benchmarks run through MLIPAudit's own
API on the offline input subsets. The energies MLIPAudit records must be the energies of the
structures it was given: checked against a float64 calculator evaluated here, structure by
structure, from the input files read independently of MLIPAudit. A change to the calculator
contract (``allowed_atomic_numbers``, per-Atoms results, units) fails here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from ase import Atoms, units
from conftest import REPO, require, shared_data

from mace_ase import MaceCalculator

require("mlipaudit")

MODEL_FILE = REPO / "benchmarks" / "mlipaudit" / "model.py"
BENCHMARKS = ("tautomers", "reactivity", "noncovalent_interactions")
KCAL_MOL = units.kcal / units.mol  # eV
# float32 pipeline against float64 reference: the reference energies E0 are added in float64
# on the host, so only the interaction part (tens of eV) carries float32 rounding.
ENERGY_TOLERANCE = 1e-3  # eV


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The three benchmarks' folders of the MLIPAudit 0.1.8 input subsets, copied (MLIPAudit reads
    `<input dir>/<benchmark>/`; it would download a missing folder, so HF_HUB_OFFLINE is set too)."""
    source = shared_data("mlipaudit_inputs_0.1.8")
    destination = tmp_path_factory.mktemp("mlipaudit-inputs")
    for name in BENCHMARKS:
        shutil.copytree(source / name, destination / name)
    return destination


def load_through_mlipaudit(model: str | None = None):
    """The object `mlipaudit benchmark -m benchmarks/mlipaudit/model.py` benchmarks."""
    from mlipaudit.benchmarks_cli import load_force_field

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MACE_ASE_MLIPAUDIT_MODEL", model or "")
        patch.delenv("MACE_ASE_MLIPAUDIT_DTYPE", raising=False)
        return load_force_field(str(MODEL_FILE))


@pytest.fixture(scope="module")
def calculator():
    return load_through_mlipaudit()


def dev_structures(inputs) -> dict[tuple, Atoms]:
    """The structures of the dev run mode, read from the input files (not through MLIPAudit)."""
    structures = {}
    tautomers = read_json(inputs, "tautomers", "tautobase_2792.json")
    for structure_id in list(tautomers)[:2]:  # dev: the first two pairs
        entry = tautomers[structure_id]
        for j in range(2):
            structures["tautomers", structure_id, j] = Atoms(entry["atom_symbols"][j], positions=entry["coordinates"][j])
    reactions = read_json(inputs, "reactivity", "grambow_dataset.json")
    for reaction_id in list(reactions)[:2]:  # dev: the first two reactions
        for state in ("reactants", "products", "transition_state"):
            entry = reactions[reaction_id][state]
            structures["reactivity", reaction_id, state] = Atoms(entry["atom_symbols"], positions=entry["coordinates"])
    dimers = read_json(inputs, "noncovalent_interactions", "NCI_Atlas.json")
    for system_id in ("1.03.03", "1.01.01"):  # dev: these two dimers
        entry = dimers[system_id]
        for k, xyz in enumerate(entry["coords"]):
            structures["noncovalent_interactions", system_id, k] = Atoms(entry["atom_symbols"], positions=xyz)
    return structures


@pytest.fixture(scope="module")
def reference(inputs) -> dict[tuple, float]:
    """Energies (eV) of those structures by a separate float64 calculator, in one batched call."""
    structures = dev_structures(inputs)
    results = MaceCalculator(dtype="float64").calculate_batch(list(structures.values()), ["energy"])
    return {key: r["energy"] for key, r in zip(structures, results)}


def read_json(inputs, name, filename):
    return json.loads((inputs / name / filename).read_text())


def run(benchmark_class, calculator, inputs):
    benchmark = benchmark_class(calculator, data_input_dir=inputs, run_mode="dev")
    benchmark.run_model()
    return benchmark, benchmark.analyze()


def test_model_file_gives_mlipaudit_a_mace_calculator_for_every_benchmark(calculator):
    from mlipaudit.benchmarks import BENCHMARKS as ALL
    from mlipaudit.benchmarks_cli import fetch_missing_elements

    assert isinstance(calculator, MaceCalculator)
    # The bundled model covers the ten SPICE elements: MLIPAudit skips none of its benchmarks.
    assert set(calculator.allowed_atomic_numbers) == {1, 6, 7, 8, 9, 15, 16, 17, 35, 53}
    assert {b.name: fetch_missing_elements(b, calculator) for b in ALL} == {b.name: set() for b in ALL}


def test_model_given_by_path_and_mlipaudit_skips_by_element():
    """`MACE_ASE_MLIPAUDIT_MODEL=path`: MLIPAudit sees that model's elements (atomic numbers)."""
    from mlipaudit.benchmarks import TautomersBenchmark, WaterRadialDistributionBenchmark

    calculator = load_through_mlipaudit(str(REPO / "tests" / "data" / "aspirin-small.zip"))  # H C N O
    assert set(calculator.allowed_atomic_numbers) == {1, 6, 7, 8}
    assert TautomersBenchmark.get_missing_element_types(calculator) == {"F", "S", "Cl", "Br", "I"}
    assert WaterRadialDistributionBenchmark.check_can_run_model(calculator)


def test_tautomers(calculator, inputs, reference):
    from mlipaudit.benchmarks import TautomersBenchmark

    benchmark, result = run(TautomersBenchmark, calculator, inputs)
    ids = sorted({key[1] for key in reference if key[0] == "tautomers"})
    assert sorted(benchmark.model_output.structure_ids) == ids
    assert not result.failed and not any(m.failed for m in result.molecules)
    for structure_id, predicted, molecule in zip(
        benchmark.model_output.structure_ids, benchmark.model_output.predictions, result.molecules
    ):
        expected = [reference["tautomers", structure_id, j] for j in range(2)]
        np.testing.assert_allclose(predicted, expected, rtol=0, atol=ENERGY_TOLERANCE)
        np.testing.assert_allclose(molecule.predicted_energy_diff, (expected[1] - expected[0]) / KCAL_MOL,
                                   rtol=0, atol=2 * ENERGY_TOLERANCE / KCAL_MOL)
    assert 0.0 <= result.score <= 1.0


def test_reactivity(calculator, inputs, reference):
    from mlipaudit.benchmarks import ReactivityBenchmark

    benchmark, result = run(ReactivityBenchmark, calculator, inputs)
    ids = sorted({key[1] for key in reference if key[0] == "reactivity"})
    assert sorted(benchmark.model_output.reaction_ids) == ids and not result.failed_reactions
    for reaction_id, predicted in zip(benchmark.model_output.reaction_ids, benchmark.model_output.energy_predictions):
        expected = [reference["reactivity", reaction_id, s] / KCAL_MOL for s in ("reactants", "products", "transition_state")]
        got = [predicted.reactants_energy, predicted.products_energy, predicted.transition_state_energy]
        np.testing.assert_allclose(got, expected, rtol=0, atol=ENERGY_TOLERANCE / KCAL_MOL)
        np.testing.assert_allclose(result.reaction_results[reaction_id].activation_energy_pred,
                                   expected[2] - expected[0], rtol=0, atol=2 * ENERGY_TOLERANCE / KCAL_MOL)
    assert 0.0 <= result.score <= 1.0


def test_noncovalent_interactions(calculator, inputs, reference):
    from mlipaudit.benchmarks import NoncovalentInteractionsBenchmark

    benchmark, result = run(NoncovalentInteractionsBenchmark, calculator, inputs)
    profiles = {s.system_id: s.energy_profile for s in benchmark.model_output.systems}
    assert sorted(profiles) == sorted({key[1] for key in reference if key[0] == "noncovalent_interactions"})
    assert result.num_failed == 0 and result.n_skipped_unallowed_elements == 0
    for system_id, profile in profiles.items():
        expected = [reference["noncovalent_interactions", system_id, k] for k in range(len(profile))]
        assert len(profile) == 10
        np.testing.assert_allclose(profile, expected, rtol=0, atol=ENERGY_TOLERANCE)
    assert 0.0 <= result.score <= 1.0


def test_forced_recompute_calls_the_model(calculator, inputs):
    """MLIPAudit's inference_speed times `calculate(atoms, ["energy", "forces"], all_changes)` on one
    unchanged Atoms: each such call must run the model (a result cache must not answer it), or the
    benchmark times a lookup. The forces must stay those of a normal call."""
    from ase.calculators.calculator import all_changes

    atoms = dev_structures(inputs)["tautomers", "1069", 0]  # a size the tests above compiled
    forces = calculator.get_forces(atoms).copy()
    calls = calculator.timings["calls"]
    for _ in range(3):
        calculator.calculate(atoms, ["energy", "forces"], all_changes)
    assert calculator.timings["calls"] == calls + 3
    np.testing.assert_array_equal(calculator.results["forces"], forces)
