"""Errors of the bundled default model on the xtb_druglike molecules it did not train on.

The training (weights/train-default.json) holds out whole molecules (split by mol_name,
seed 0, 15 %): acetone, aspirin, benzoic acid, sulfamethoxazole, triphenylphosphine oxide.
Per molecule this prints the energy MAE, the energy MAE once the molecule's mean offset is
removed (the error on relative, conformational energies, which is what MD and relaxations
feel), and the force MAE.

    python benchmarks/bundled_model_errors.py [archive]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "xtb_druglike" / "xtb_druglike_train.xyz"


def main(archive=None):
    import ase

    from mace_ase.calculator import MaceCalculator
    from mace_ase.training.data import read_frames, split_frames

    settings = json.loads((REPO / "weights" / "train-default.json").read_text())
    frames = read_frames(DATA)
    train, valid = split_frames(frames, settings["valid_fraction"], settings["seed"], settings["group_key"])
    calc = MaceCalculator(archive)  # None: the bundled default
    rows, all_de, all_rel, all_df = [], [], [], []
    for name in sorted({f.info["mol_name"] for f in valid}):
        mine = [f for f in valid if f.info["mol_name"] == name]
        de, df = [], []
        for f in mine:
            atoms = ase.Atoms(numbers=f.numbers, positions=f.positions)
            atoms.calc = calc
            de.append(atoms.get_potential_energy() - f.energy)
            df.append(atoms.get_forces() - f.forces)
        de = np.array(de)
        rel = de - de.mean()
        n = len(mine[0])
        rows.append((name, n, len(mine), 1000 * np.mean(np.abs(de)) / n, 1000 * de.mean(), 1000 * np.mean(np.abs(rel)),
                     1000 * np.mean(np.abs(np.concatenate(df)))))
        all_de += list(de / n)
        all_rel += list(rel)
        all_df.append(np.concatenate(df))
    print("| molecule | atoms | frames | E MAE (meV/atom) | mean offset (meV) | E MAE, offset removed (meV) | F MAE (meV/Å) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.0f} | {r[5]:.1f} | {r[6]:.0f} |")
    print(f"| all held-out | | {len(valid)} | {1000 * np.mean(np.abs(all_de)):.1f} | | {1000 * np.mean(np.abs(all_rel)):.1f} | "
          f"{1000 * np.mean(np.abs(np.concatenate(all_df))):.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
