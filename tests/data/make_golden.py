"""Write golden parity fixtures with InstaDeep's mlip, for tests that must run without mlip.

For each of two small configurations (the card architecture at 16 channels, and a variant with
node_symmetry < l_max, correlation 3, two readout heads, soft envelope and tanh) this builds
mlip's own v1 MACE for the ten SPICE2 elements with perturbed random weights, saves it with
``mlip.models.model_io.save_model_to_zip`` and records mlip's float64 energies, forces and
(periodic) stresses for: two rMD17 aspirin frames, xtb_druglike molecules holding all ten
elements, a periodic box of 8 waters (cell < 2 x cutoff: many images) and, for card16, a
periodic box of 125 waters with more than 20,000 edges (jax 0.10.2 miscompiles vmapped
matrix-vector products over more than ~16k rows on CPU: a release that does so fails here).
Dataset statistics are not representable in float32 (avg_num_neighbors, scaling, avg_r_min),
so no constant can hide in float32 rounding. mlip defines the radial scale of models with
avg_r_min by a float32 computation whose last bits depend on the XLA version; the value used
here is stored in the .npz (``radial_scale``) so the check does not depend on the JAX that runs it.

    python tests/data/make_golden.py   # needs mlip 0.2.5 and ../shared/data; ~2 min

writes tests/data/golden/<name>.zip (mlip archive) and <name>.npz (structures + expected).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mlip  # noqa: E402
import mlip_reference as ref  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from mlip.models.model_io import save_model_to_zip  # noqa: E402

from mace_ase.model.radial import embedding_scale  # noqa: E402

OUT = HERE / "golden"
CONFIGS = {  # name: (mlip MaceConfig, readout gain giving forces of a few eV/Å, dataset statistics)
    "card16": (dict(ref.CARD_CONFIG, num_channels=16), 40.0,
               dict(avg_num_neighbors=14.3, scaling_mean=-0.05, scaling_stdev=0.8, avg_r_min_angstrom=1.0)),
    "variant8": (dict(ref.CARD_CONFIG, num_channels=8, l_max=2, node_symmetry=1, correlation=3,
                     num_readout_heads=2, radial_envelope="soft_envelope", activation="tanh",
                     readout_irreps=("8x0e", "0e")), 3.0,
                 dict(avg_num_neighbors=17.3, scaling_mean=-0.02, scaling_stdev=0.8, avg_r_min_angstrom=0.93)),
}


def structures(name):
    molecules = ref.aspirin_frames(SHARED_DATA, indices=(0, 450)) + ref.druglike_covering_all_elements(SHARED_DATA)
    boxes = [ref.water_box(2, seed=1)] + ([ref.water_box(5, seed=2)] if name == "card16" else [])
    return molecules + boxes


def main():
    OUT.mkdir(exist_ok=True)
    e0 = ref.xtb_atomic_energies(SHARED_DATA)
    for seed, (name, (config, gain, statistics)) in enumerate(CONFIGS.items()):
        systems = structures(name)
        info = ref.dataset_info(e0, **statistics)
        force_field = ref.build_force_field(config, info, seed=10 + seed, readout_gain=gain)
        save_model_to_zip(OUT / f"{name}.zip", force_field)
        results = ref.Evaluator(force_field)(force_field.params, systems, dtype=np.float64)
        radial_scale = embedding_scale(config["num_bessel"], info.graph_cutoff_angstrom,
                                       config["radial_envelope"], info.avg_r_min_angstrom)
        arrays = {"mlip_version": np.array(mlip.__version__), "jax_version": np.array(jax.__version__),
                  "radial_scale": np.array(radial_scale)}
        for k, (atoms, result) in enumerate(zip(systems, results)):
            arrays[f"{k}/numbers"] = atoms.numbers
            arrays[f"{k}/positions"] = atoms.positions
            arrays[f"{k}/cell"] = atoms.cell.array
            arrays[f"{k}/pbc"] = atoms.pbc
            arrays[f"{k}/energy"] = np.array(result["energy"])
            arrays[f"{k}/forces"] = result["forces"]
            if atoms.pbc.all():
                arrays[f"{k}/stress"] = result["stress"]
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        print(name, "energies", [round(r["energy"], 4) for r in results],
              "max |F|", round(max(np.abs(r["forces"]).max() for r in results), 3))


if __name__ == "__main__":
    main()
