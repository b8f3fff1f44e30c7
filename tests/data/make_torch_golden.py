"""Write golden files for the mace-torch import: small random models built by mace-torch, and
mace-torch's own numbers for them, so that parity stays checked where torch is absent.

For each family of tests/torch_reference.py (OFF-like L=1 and L=2, residual first layer,
ZBL + Agnesi, density + ZBL + Agnesi, two heads) this writes

    tests/data/golden_torch/<family>.model   the torch.save'd model (zip re-compressed with deflate,
                                             which torch.load reads too: ~150 kB instead of ~1 MB)
    tests/data/golden_torch/<family>.npz     structures and mace-torch's float64 energies, forces,
                                             per-atom energies and stresses (every head)

and one model as a state_dict with its hyper-parameters (<family>.pt + <family>.json), the other
way mace-torch users keep weights.

    python tests/data/make_torch_golden.py   # needs torch==2.13.0 and mace-torch==0.3.16; ~1 min
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mace  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_reference as ref  # noqa: E402
from mace.tools.scripts_utils import extract_config_mace_model  # noqa: E402

OUT = HERE / "golden_torch"
STATE_DICT_FAMILY = "density_zbl_agnesi"


def deflated(path: Path) -> None:
    """Re-compress torch's stored (uncompressed) zip in place."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    tmp.replace(path)


def jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, type):
        return value.__name__
    if callable(value):
        return value.__name__
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value).tolist()
    return str(value)


def hyperparameters(model) -> dict:
    """extract_config_mace_model's dict, JSON-able (classes, irreps and the gate by name)."""
    config = jsonable(extract_config_mace_model(model))
    config["model_class"] = type(model).__name__
    return config


def main():
    OUT.mkdir(exist_ok=True)
    for seed, name in enumerate(ref.FAMILIES):
        model = ref.build(name, seed=seed)
        path = OUT / f"{name}.model"
        torch.save(model, path)
        deflated(path)
        systems = ref.family_structures(name)
        heads = list(ref.FAMILIES[name].get("heads", ("Default",)))
        arrays = {"mace_torch_version": np.array(mace.__version__), "torch_version": np.array(torch.__version__),
                  "heads": np.array(heads)}
        for k, atoms in enumerate(systems):
            arrays[f"{k}/numbers"] = atoms.numbers
            arrays[f"{k}/positions"] = atoms.positions
            arrays[f"{k}/cell"] = atoms.cell.array
            arrays[f"{k}/pbc"] = atoms.pbc
        for head in heads:
            results = ref.evaluate(model, systems, head=head if len(heads) > 1 else None)
            for k, result in enumerate(results):
                for key, value in result.items():
                    arrays[f"{head}/{k}/{key}"] = np.asarray(value)
            print(name, head, "energies", [round(r["energy"], 4) for r in results],
                  "max |F|", round(max(np.abs(r["forces"]).max() for r in results), 3))
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        if name == STATE_DICT_FAMILY:
            state_path = OUT / f"{name}.pt"
            torch.save(model.state_dict(), state_path)
            deflated(state_path)
            (OUT / f"{name}.json").write_text(json.dumps(hyperparameters(model), indent=1) + "\n")


if __name__ == "__main__":
    main()
