"""mace-ase: the MACE interatomic potential in JAX, as an ASE calculator."""

__version__ = "0.1.0"
