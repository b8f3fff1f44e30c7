"""ASE plugin: makes MaceCalculator discoverable by ASE's plugin system.

Registered in pyproject.toml under the ``ase.plugins`` entry-point group;
ASE reads ``__ase_plugins__`` from this module. The calculator class is named
by its import path, so listing plugins (``ase info --plugins``) does not import JAX.
"""

try:  # ASE's plugin API is still marked experimental (ase._4).
    from ase._4.plugins.plugin import CalculatorPlugin
except ImportError:  # pragma: no cover - other ASE versions
    __ase_plugins__ = set()
else:
    __ase_plugins__ = {
        CalculatorPlugin(
            "MaceCalculator",
            implementation="mace_ase.calculator.MaceCalculator",
            citation="Batatia et al., MACE, NeurIPS 2022; mace-ase (JAX + e3nn-jax)",
        )
    }
