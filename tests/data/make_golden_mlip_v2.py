"""Write golden parity fixtures for mlip's v2 MACE, for tests that must run without mlip.

For each configuration below this builds mlip's own v2 MACE (``mlip.models.mace.Mace``) for
the ten SPICE2 elements with perturbed random float32 weights (drawn by NumPy from the
parameter names and a seed: tests/mlip_v2_reference.draw_weights), saves it with
``mlip.models.model_io.save_model_to_zip``, reads the archive back and records:

* its hyperparams.json, its parameter names and shapes, and a SHA-256 of its parameters (the
  test redraws the weights from the seed and checks them against this digest, so the archive
  itself, 6.9 MB for the card, need not be stored);
* mlip's float64 energies, forces and stresses for rMD17 aspirin frames, xtb_druglike molecules
  holding all ten elements, and a periodic water box; and mlip's float32 numbers, the yardstick
  for mace-ase's float32 (both round the positions to float32, which on this steep surface
  alone moves energies by ~1e-5 eV/atom).

    python tests/data/make_golden_mlip_v2.py   # needs mlip 0.2.5 and ../shared/data; ~2 min

writes tests/data/golden/<name>.npz.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mlip  # noqa: E402
import mlip_reference as ref  # noqa: E402
import mlip_v2_reference as ref2  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from mlip.models.model_io import save_model_to_zip  # noqa: E402

OUT = HERE / "golden"
CONFIGS = {  # name: (mlip v2 MaceConfig, dataset_info overrides, seed, readout gain, structures)
    # The card architecture (128 channels, l_max 3, correlation 2), mlip's default e3j product.
    "v2card": (ref2.CARD_CONFIG_V2, {}, 20, 40.0, "card"),
    # e3j product at correlation 3, node_symmetry < l_max, soft envelope, tanh everywhere, own
    # radial MLP widths, avg_r_min, no E0s added, and config copies of the neighbour statistics
    # that mlip ignores (dataset_info decides).
    "v2variant": (dict(num_layers=2, num_channels=8, l_max=2, node_symmetry=1, correlation=3, num_rbf=6,
                       readout_irreps=("8x0e", "0e"), activation="tanh", radial_mlp_activation="tanh",
                       radial_envelope="soft_envelope", radial_mlp_hidden=[32, 16], add_atomic_energies=False,
                       avg_num_neighbors=3.0, avg_r_min=2.0),
                  dict(avg_r_min_angstrom=0.93, graph_cutoff_angstrom=4.5), 21, 10.0, "small"),
    # v1's contraction with a symmetric basis (backend e3nn_symmetric), one layer, elu.
    "v2symmetric": (dict(num_layers=1, num_channels=8, l_max=2, correlation=3, activation="elu",
                         radial_mlp_activation="elu", symmetric_contraction_backend="e3nn_symmetric"),
                    {}, 22, 10.0, "small"),
}


def structures(kind: str):
    if kind == "card":
        molecules = ref.aspirin_frames(SHARED_DATA, indices=(0, 450)) + ref.druglike_covering_all_elements(SHARED_DATA)
        return molecules + [ref.water_box(3, seed=2)]  # 27 waters: cell < 2 x cutoff, images
    molecules = ref.aspirin_frames(SHARED_DATA, indices=(100,)) + ref.druglike_covering_all_elements(SHARED_DATA)
    return molecules + [ref.water_box(2, seed=3)]  # 8 waters: cell < 2 x cutoff, many images


def main():
    OUT.mkdir(exist_ok=True)
    e0 = ref.xtb_atomic_energies(SHARED_DATA)
    for name, (config, info_overrides, seed, gain, kind) in CONFIGS.items():
        force_field = ref2.build_force_field(config, ref2.dataset_info(e0, **info_overrides), seed=seed, readout_gain=gain)
        buffer = io.BytesIO()
        save_model_to_zip(buffer, force_field)
        with zipfile.ZipFile(buffer) as archive:
            hyperparams = archive.read("hyperparams.json").decode()
            with np.load(io.BytesIO(archive.read("params.npz"))) as npz:
                flat = {key: npz[key] for key in npz.files}
        systems = structures(kind)
        evaluator = ref.Evaluator(force_field)
        results = evaluator(force_field.params, systems, dtype=np.float64)
        with jax.enable_x64(False):  # what users run: JAX's default float32 mode
            results32 = evaluator(force_field.params, systems, dtype=np.float32)
        arrays = {
            "mlip_version": np.array(mlip.__version__),
            "hyperparams": np.array(hyperparams),
            "shapes": np.array(json.dumps({key: list(value.shape) for key, value in flat.items()})),
            "seed": np.array(seed),
            "readout_gain": np.array(gain),
            "num_layers": np.array(json.loads(hyperparams)["config"]["num_layers"]),
            "sha256": np.array(ref2.digest(flat)),
        }
        for k, (atoms, result) in enumerate(zip(systems, results)):
            arrays[f"{k}/numbers"] = atoms.numbers
            arrays[f"{k}/positions"] = atoms.positions
            arrays[f"{k}/cell"] = atoms.cell.array
            arrays[f"{k}/pbc"] = atoms.pbc
            arrays[f"{k}/energy"] = np.array(result["energy"])
            arrays[f"{k}/forces"] = result["forces"]
            arrays[f"{k}/float32/energy"] = np.array(results32[k]["energy"])
            arrays[f"{k}/float32/forces"] = results32[k]["forces"]
            if atoms.pbc.all():
                arrays[f"{k}/stress"] = result["stress"]
                arrays[f"{k}/float32/stress"] = results32[k]["stress"]
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        print(name, "energies", [round(r["energy"], 4) for r in results],
              "max |F|", round(max(np.abs(r["forces"]).max() for r in results), 3))


if __name__ == "__main__":
    main()
