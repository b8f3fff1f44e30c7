"""Small random mace-torch models, one per family mace-ase imports, and mace-torch's own numbers.

Used by the live tests (tests/test_torch_live.py) and by tests/data/make_torch_golden.py;
importing this module needs torch and mace-torch (the test extra).

Each model is built by mace-torch 0.3.16 itself (``mace.modules``), with its random
initialisation, then the product-basis weights of correlation order nu are multiplied by
PRODUCT_GAIN[nu], so that the second and third orders change the forces by percents, far
more than the tolerances (mace-torch initialises them at ~1/K, where the third order moves
forces by ~1e-4 relative on these small models). Models are built in float64
(torch's default dtype switched for the build only) and evaluated by
``mace.calculators.MACECalculator(default_dtype="float64")`` with torch's global default back at
float32, as in a fresh process that loads a saved model: mace-torch's float32-rounded ZBL
prefactor is part of what mace-ase must reproduce.
"""

from __future__ import annotations

import contextlib

import mace.calculators  # noqa: F401  (first: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for e3nn's constants)
import numpy as np
import torch
from ase import Atoms
from ase.build import molecule
from e3nn import o3
from mace import modules

PRODUCT_GAIN = {1: 6.0, 2: 40.0, 3: 500.0}

# name -> mace-torch constructor arguments (on top of COMMON) and the elements
FAMILIES = {
    # MACE-OFF23-like: first RealAgnosticInteractionBlock, then residual; L = 1 hidden features
    "off_l1": dict(model="ScaleShiftMACE", first="RealAgnosticInteractionBlock", rest="RealAgnosticResidualInteractionBlock",
                   hidden="6x0e+6x1o", max_ell=2, correlation=3, elements=(1, 6, 7, 8), scale=1.3, shift=0.0),
    # ... and L = 2 hidden features
    "off_l2": dict(model="ScaleShiftMACE", first="RealAgnosticInteractionBlock", rest="RealAgnosticResidualInteractionBlock",
                   hidden="4x0e+4x1o+4x2e", max_ell=2, correlation=3, elements=(1, 6, 8), scale=0.8, shift=0.0),
    # MACE-MP-0a-like: residual first layer, shift != 0, a soft distance transform, correlation 2,
    # elements listed out of order (the importer sorts them)
    "residual_first": dict(model="ScaleShiftMACE", first="RealAgnosticResidualInteractionBlock",
                           rest="RealAgnosticResidualInteractionBlock", hidden="6x0e+6x1o", max_ell=2, correlation=2,
                           elements=(8, 1, 6, 14), scale=1.1, shift=-0.3, distance_transform="Soft"),
    # MACE-MP-0b-like: plain MACE class, ZBL + Agnesi
    "zbl_agnesi": dict(model="MACE", first="RealAgnosticInteractionBlock", rest="RealAgnosticResidualInteractionBlock",
                       hidden="6x0e+6x1o", max_ell=2, correlation=3, elements=(1, 6, 8, 14),
                       pair_repulsion=True, distance_transform="Agnesi"),
    # MACE-MP-0b3 / MPA-0 / OMAT-0-like: density normalisation + ZBL + Agnesi, more elements
    "density_zbl_agnesi": dict(model="ScaleShiftMACE", first="RealAgnosticDensityInteractionBlock",
                               rest="RealAgnosticDensityResidualInteractionBlock", hidden="6x0e+6x1o", max_ell=2,
                               correlation=3, elements=(1, 3, 6, 7, 8, 9, 11, 14, 16, 17, 26, 29), scale=1.7, shift=0.1,
                               pair_repulsion=True, distance_transform="Agnesi", num_bessel=10),
    # a fine-tuned multi-head model: the pre-training head and one more, correlation 1
    "two_heads": dict(model="ScaleShiftMACE", first="RealAgnosticResidualInteractionBlock",
                      rest="RealAgnosticResidualInteractionBlock", hidden="6x0e+6x1o", max_ell=2, correlation=1,
                      elements=(1, 6, 8), scale=(1.2, 0.7), shift=(0.05, -0.2), heads=("pt_head", "dft")),
}


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# MACE-MP-0's 89 elements: H to Bi, then Ac to Pu.
MP_ELEMENTS = tuple(range(1, 84)) + tuple(range(89, 95))


def build(name: str, seed: int = 0, spec: dict | None = None) -> torch.nn.Module:
    """A random mace-torch model of the family `name` (or of `spec`; float64 parameters and buffers)."""
    spec = FAMILIES[name] if spec is None else spec
    heads = list(spec.get("heads", ("Default",)))
    elements = list(spec["elements"])
    rng = np.random.default_rng(seed)
    energies = -rng.uniform(1.0, 10.0, size=(len(heads), len(elements)))
    with default_dtype(torch.float64):
        torch.manual_seed(seed)
        kwargs = dict(
            r_max=4.0,
            num_bessel=spec.get("num_bessel", 8),
            num_polynomial_cutoff=5,
            max_ell=spec["max_ell"],
            interaction_cls=modules.interaction_classes[spec["rest"]],
            interaction_cls_first=modules.interaction_classes[spec["first"]],
            num_interactions=2,
            num_elements=len(elements),
            hidden_irreps=o3.Irreps(spec["hidden"]),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=energies if len(heads) > 1 else energies[0],
            avg_num_neighbors=6.0,
            atomic_numbers=elements,
            correlation=spec["correlation"],
            gate=torch.nn.functional.silu,
            pair_repulsion=spec.get("pair_repulsion", False),
            distance_transform=spec.get("distance_transform", "None"),
            radial_MLP=[16, 16, 16],
            heads=heads,
            use_reduced_cg=False,
        )
        if spec["model"] == "ScaleShiftMACE":
            model = modules.ScaleShiftMACE(atomic_inter_scale=spec["scale"], atomic_inter_shift=spec["shift"], **kwargs)
        else:
            model = modules.MACE(**kwargs)
        with torch.no_grad():
            for product in model.products:
                for contraction in product.symmetric_contractions.contractions:
                    correlation = contraction.correlation
                    contraction.weights_max.mul_(PRODUCT_GAIN[correlation])
                    for k, w in enumerate(contraction.weights):  # orders correlation-1, ..., 1
                        w.mul_(PRODUCT_GAIN[correlation - 1 - k])
    return model.eval()


def structures() -> list[Atoms]:
    """A molecule (no cell) and a small periodic cell with many images, per family's elements."""
    return [molecule("CH3CH2OH"), periodic_cell()]


def periodic_cell(seed: int = 3) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = molecule("H2O") + molecule("CH4")
    atoms.positions[3:] += (1.9, 1.7, 1.4)
    atoms.cell = [[4.6, 0.3, 0.0], [0.2, 4.4, 0.3], [0.1, -0.2, 4.9]]
    atoms.pbc = True
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def with_elements(atoms: Atoms, elements, seed: int = 0) -> Atoms:
    """The same geometry with elements the model knows: heavy atoms cycle through its first-row
    elements (heavier ones would sit well inside each other's ZBL range at these bond lengths)."""
    atoms = atoms.copy()
    heavy = [z for z in sorted(elements) if 1 < z <= 9] or [1]
    numbers = atoms.numbers.copy()
    k = seed
    for i, z in enumerate(numbers):
        if z != 1:
            numbers[i] = heavy[k % len(heavy)]
            k += 1
    atoms.numbers = numbers
    return atoms


def family_structures(name: str) -> list[Atoms]:
    elements = FAMILIES[name]["elements"]
    return [with_elements(a, elements, seed=k) for k, a in enumerate(structures())]


def evaluate(model: torch.nn.Module, atoms_list, head: str | None = None, dtype: str = "float64") -> list[dict]:
    """mace-torch's MACECalculator: energy, forces, per-atom energies and (periodic) stress."""
    from mace.calculators import MACECalculator

    kwargs = {} if head is None else {"head": head}
    calc = MACECalculator(models=model, device="cpu", default_dtype=dtype, **kwargs)
    out = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calc
        result = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                  "energies": np.asarray(calc.results["energies"], float)}  # E0 included
        if atoms.pbc.all():
            result["stress"] = atoms.get_stress(voigt=False)
        out.append(result)
    return out
