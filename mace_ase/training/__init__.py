"""Training MACE with the mace-organics recipe."""
