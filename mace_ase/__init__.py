"""mace-ase: the MACE interatomic potential in JAX, as an ASE calculator."""

__version__ = "0.1.0"

__all__ = ["MaceCalculator", "__version__"]


def __getattr__(name):
    # Lazy, so that `import mace_ase` (the CLI, the ASE plugin scan) does not import JAX.
    if name == "MaceCalculator":
        from .calculator import MaceCalculator

        return MaceCalculator
    raise AttributeError(f"module 'mace_ase' has no attribute {name!r}")
