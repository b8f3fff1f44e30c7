"""The peer for mace-ase in MLIPAudit: mlip's own ASE calculator on the same weights.

    MACE_ASE_MLIPAUDIT_MODEL=... mlipaudit benchmark -m benchmarks/mlipaudit/mlip_peer.py ...

The model is loaded by mace-ase (same names, paths and licence gate as model.py), saved as an
mlip v1 archive in a temporary folder, and loaded by mlip (``mlip.models_v1.Mace``) into
``MLIPForceFieldASECalculator``: same weights, same benchmark code path (MLIPAudit's external
ASE calculator), another implementation. Where the two disagree, the calculator is the cause.
``timings`` counts calls and seconds like MaceCalculator's, for benchmarks/mlipaudit/run.py.
"""

import os
import tempfile
import time
from pathlib import Path

from ase import Atoms
from mlip.models.model_io import load_model_from_zip
from mlip.models_v1 import Mace
from mlip.simulation.ase.mlip_ase_calculator import MLIPForceFieldASECalculator

from mace_ase.archive import save_archive
from mace_ase.weights import load_model

_model = load_model(
    os.environ.get("MACE_ASE_MLIPAUDIT_MODEL") or None,
    accept_license=os.environ.get("MACE_ASE_MLIPAUDIT_ACCEPT_LICENSE") == "1" or None,
)
with tempfile.TemporaryDirectory() as _folder:
    _archive = save_archive(_model, Path(_folder) / "model.zip")
    _force_field = load_model_from_zip(Mace, _archive)


class CountedMLIPCalculator(MLIPForceFieldASECalculator):
    """mlip's calculator, counting model calls and their seconds."""

    def calculate(self, atoms=None, properties=None, system_changes=None, **kwargs):
        start = time.perf_counter()
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)
        self.timings["calls"] += 1
        self.timings["model"] += time.perf_counter() - start


# mlip's calculator sizes itself on a first structure; any later size is accepted (capacities grow).
mlipaudit_external_model = CountedMLIPCalculator(
    Atoms([_model.config.atomic_numbers[0]], positions=[[0.0, 0.0, 0.0]]), 1.25, _force_field,
    allow_nodes_to_change=True,
)
mlipaudit_external_model.timings = {"calls": 0, "model": 0.0}
mlipaudit_external_model.cutoff = float(_model.cutoff)  # what MLIPAudit's inference_speed reports
