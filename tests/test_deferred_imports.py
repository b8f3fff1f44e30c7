"""mace_ase.deferred_imports: what e3nn-jax imports and MACE never uses waits for its first use,
and then works as if imported normally (a fresh interpreter each: the suite's own process has
scipy.signal imported already)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import json, sys
from mace_ase.calculator import MaceCalculator

kind = lambda name: type(sys.modules[name]).__name__
report = {"after import": [kind("scipy.signal"), kind("scipy.spatial")]}
from ase.build import molecule  # ASE's own import of scipy.spatial gets the real module
from conftest import small_model

atoms = molecule("CH3CH2OH")
atoms.calc = MaceCalculator(small_model(), compilation_cache=False)
forces = atoms.get_forces()
report["after a force call"] = [kind("scipy.signal"), kind("scipy.spatial")]

import scipy
import scipy.signal
import e3nn_jax._src.s2grid as s2grid  # e3nn-jax's own user of scipy.signal
from scipy.signal import windows
from scipy.spatial import distance

report.update(
    peaks=scipy.signal.find_peaks([0.0, 1.0, 0.0, 2.0, 0.0])[0].tolist(),
    through_e3nn=s2grid.scipy.signal.find_peaks([0.0, 3.0, 0.0])[0].tolist(),
    hann=windows.hann(3).tolist(),
    distance=float(distance.euclidean([0.0, 0.0], [3.0, 4.0])),
    after_use=[kind("scipy.signal"), kind("scipy.spatial")],
    same=scipy.signal is sys.modules["scipy.signal"] and s2grid.scipy.signal is sys.modules["scipy.signal"],
)
print(json.dumps(report))
"""


def test_unused_modules_wait_and_then_work():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["after import"] == ["DeferredModule", "DeferredModule"]
    assert report["after a force call"] == ["DeferredModule", "module"]
    assert report["peaks"] == [1, 3] and report["through_e3nn"] == [1]
    assert report["hann"] == [0.0, 1.0, 0.0] and report["distance"] == 5.0
    assert report["after_use"] == ["module", "module"] and report["same"] is True
