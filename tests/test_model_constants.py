"""Model constants are fixed once, in float64, whatever precision the caller runs in.

The activation normalisation (e3nn-jax's second-moment constant) evaluated inside a float32
trace is off by 1.6e-6 for silu; the radial-basis scale of models with avg_r_min is defined
by a float32 computation whose last bits depend on the XLA that runs it. Both are computed
once and cast at use; the radial scale travels in the archives mace-ase writes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from conftest import REPO, small_model

from mace_ase.archive import load_archive, save_archive
from mace_ase.calculator import MaceCalculator
from mace_ase.model.mace import ACTIVATION_FUNCTIONS, second_moment_scale

# Small enough to compile in seconds; silu radial MLP and readout, a radial scale from avg_r_min.
TINY = dict(num_channels=4, l_max=1, node_symmetry=1, readout_irreps=("4x0e", "0e"), radial_mlp_hidden=(8,))


@pytest.mark.parametrize("name", ["silu", "tanh", "elu", "sigmoid", "relu"])
def test_activation_scale_is_e3nn_jax_constant_in_float64_from_any_mode(name):
    phi = ACTIVATION_FUNCTIONS[name]
    with jax.enable_x64(True):
        reference = float(e3nn.normalize_function(phi)(jnp.float64(1.0)) / phi(jnp.float64(1.0)))
    second_moment_scale.cache_clear()
    from_float32_mode = second_moment_scale(name)  # this test runs with x64 off
    assert from_float32_mode == pytest.approx(reference, rel=1e-14)
    with jax.enable_x64(False):
        float32_constant = float(e3nn.normalize_function(phi)(jnp.float32(1.0)) / phi(jnp.float32(1.0)))
    assert abs(float32_constant / reference - 1) > 1e-8  # what the float32 mode would have used


def test_float64_numbers_do_not_depend_on_an_earlier_float32_run():
    """float32 first, then float64 in the same process == float64 in a fresh process, bit for bit."""
    model = small_model(avg_r_min=0.9, seed=3, **TINY)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    MaceCalculator(model, dtype="float32").get_potential_energy(atoms)
    after_float32 = MaceCalculator(model, dtype="float64").get_forces(atoms)

    script = textwrap.dedent("""
        import sys, numpy as np
        sys.path.insert(0, "tests")
        from ase.build import molecule
        from conftest import small_model
        from mace_ase.calculator import MaceCalculator
        atoms = molecule("CH3CH2OH"); atoms.rattle(0.05, seed=2)
        model = small_model(avg_r_min=0.9, seed=3, num_channels=4, l_max=1, node_symmetry=1,
                            readout_irreps=("4x0e", "0e"), radial_mlp_hidden=(8,))
        np.save(sys.stdout.buffer, MaceCalculator(model, dtype="float64").get_forces(atoms))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, check=True)
    import io

    fresh = np.load(io.BytesIO(out.stdout))
    assert np.abs(fresh).max() > 1e-3
    np.testing.assert_array_equal(after_float32, fresh)


def test_radial_scale_travels_with_the_archive(tmp_path):
    """A saved model keeps its radial scale, even where this JAX would compute another one."""
    model = small_model(avg_r_min=0.9, seed=4, **TINY)
    computed = model.config.radial_scale
    assert computed != 1.0
    other = type(model)(model.config.replace(radial_scale=computed * (1 + 1e-6)), model.params, model.metadata)
    loaded = load_archive(save_archive(other, tmp_path / "m.zip"))
    assert loaded.config.radial_scale == other.config.radial_scale
    # The scale really is used: energies differ where the scales differ.
    atoms = molecule("CH3OH")
    e_saved = MaceCalculator(loaded, dtype="float64").get_potential_energy(atoms)
    e_computed = MaceCalculator(model, dtype="float64").get_potential_energy(atoms)
    assert e_saved != e_computed
    # Changing what the scale derives from recomputes it; it never goes stale.
    assert model.config.replace(avg_r_min=1.2).radial_scale != computed
    assert model.config.replace(scaling_std=2.0).radial_scale == computed
