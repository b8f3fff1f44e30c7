"""The `mace-ase` command line: every verb on small inputs, its files, its one-line errors; the examples.

Models: tests/data/aspirin-small.zip (a small MACE fitted to rMD17 aspirin, H C N O).
Compiled programs go to a persistent compilation cache shared by the whole module
(in-process runs and the subprocess), so each program shape compiles once.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase
import ase.io
import jax
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, shared_data

from mace_ase.cli.main import main

MODEL = REPO / "tests" / "data" / "aspirin-small.zip"
EXAMPLES = REPO / "examples"
ASPIRIN = EXAMPLES / "aspirin.xyz"


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent JAX compilation cache for this module, restored afterwards.

    JAX sets its cache up once per process; reset_cache() makes it read the settings again.
    """
    from jax._src import compilation_cache

    path = tmp_path_factory.mktemp("jax-cache")
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield path
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture
def workdir(tmp_path, monkeypatch, compilation_cache):
    """Run in a fresh folder (default outputs land in the current folder)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def field(output: str, name: str) -> str:
    """The value printed after `name` at the start of a line."""
    match = re.search(rf"^{re.escape(name)}\s+(.*)$", output, re.MULTILINE)
    assert match, f"no '{name}' line in:\n{output}"
    return match.group(1)


def assert_one_line_error(result, *words):
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert sum(line.startswith("Error") for line in lines) == 1 and "Traceback" not in result.output
    for word in words:
        assert word.lower() in lines[-1].lower(), lines[-1]


# ------------------------------------------------------------------ relax


def test_relax_writes_relaxed_structure_and_trajectory(workdir):
    result = cli("relax", ASPIRIN, "--model", MODEL, "--fmax", "0.05", "--trajectory", "relax.traj")
    energy = float(field(result.stdout, "energy").split()[0])
    steps = int(field(result.stdout, "steps"))
    assert field(result.stdout, "converged").startswith("yes")

    relaxed = ase.io.read(workdir / "aspirin-relaxed.xyz")  # default name, current folder
    assert len(relaxed) == 21 and relaxed.get_forces().shape == (21, 3)
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.05
    assert relaxed.get_potential_energy() == pytest.approx(energy, abs=1e-5)
    assert relaxed.info["relax_converged"] and relaxed.info["relax_steps"] == steps

    frames = ase.io.read(workdir / "relax.traj", ":")
    assert len(frames) == steps + 1  # the start, then every step
    assert frames[-1].get_potential_energy() == pytest.approx(energy, abs=1e-5)
    assert energy < frames[0].get_potential_energy() - 0.5  # it went downhill
    assert np.allclose(frames[-1].positions, relaxed.positions)


def test_relax_cell_not_converged_writes_and_exits_3(workdir):
    atoms = ase.io.read(ASPIRIN)
    atoms.cell, atoms.pbc = np.diag([12.0, 12.5, 13.0]), True
    atoms.center()
    atoms.write(workdir / "boxed.xyz")
    result = cli("relax", "boxed.xyz", "--model", MODEL, "--cell", "--steps", "3", "--optimizer", "FIRE",
                 "-o", "out.xyz", expect=3)
    assert field(result.stdout, "converged").startswith("no") and int(field(result.stdout, "steps")) == 3
    assert "GPa" in field(result.stdout, "max stress")
    assert "not converged" in result.stderr
    out = ase.io.read(workdir / "out.xyz")
    assert out.get_stress().shape == (6,)
    assert not np.allclose(out.cell.array, atoms.cell.array)  # the cell moved


def test_relax_cell_refuses_a_molecule(workdir):
    result = cli("relax", ASPIRIN, "--model", MODEL, "--cell", expect=1)
    assert_one_line_error(result, "--cell", "periodic")
    assert not (workdir / "aspirin-relaxed.xyz").exists()


# --------------------------------------------------------------------- md


def test_md_nve_writes_trajectory_log_and_plot(workdir):
    result = cli("md", ASPIRIN, "--model", MODEL, "--ensemble", "nve", "--steps", "20", "--interval", "5",
                 "--timestep", "0.5", "--temperature", "300", "--seed", "1",
                 "--trajectory", "run.traj", "--log", "run.log")
    log = np.loadtxt(workdir / "run.log")
    assert log.shape == (5, 5)  # steps 0, 5, 10, 15, 20; time Epot Ekin Etot T
    time_ps, epot, ekin, etot, temperature = log.T
    assert np.allclose(time_ps, [0, 0.0025, 0.005, 0.0075, 0.01])
    assert np.allclose(epot + ekin, etot, atol=2e-6)
    assert np.ptp(etot) < 0.1 * np.ptp(epot) + 1e-3  # NVE: the total is (nearly) conserved
    assert 100 < temperature[0] < 500

    frames = ase.io.read(workdir / "run.traj", ":")
    assert len(frames) == 5
    assert [f.get_potential_energy() for f in frames] == pytest.approx(epot, abs=1e-5)
    assert frames[-1].get_momenta().shape == (21, 3) and frames[-1].get_forces().shape == (21, 3)
    assert (workdir / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "run.png" in field(result.stdout, "plot") and "(5 frames)" in field(result.stdout, "trajectory")


def test_md_console_script_ctrl_c_keeps_the_files(workdir, compilation_cache):
    """The installed `mace-ase` script: Langevin MD interrupted by SIGINT stops cleanly (exit 130)."""
    script = Path(sys.executable).with_name("mace-ase")
    assert script.exists(), "the console script is not installed in this environment"
    # x64 on, as in this test process, so that the programs compiled here come from the shared cache.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(compilation_cache), JAX_ENABLE_X64="1")
    process = subprocess.Popen(
        [str(script), "md", str(ASPIRIN), "--model", str(MODEL), "--steps", "100000", "--interval", "1"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = workdir / "aspirin-md.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and sum(not line.startswith("#") for line in log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Stopped by Ctrl-C" in stderr and "Traceback" not in stderr

    data = np.loadtxt(log, ndmin=2)
    frames = ase.io.read(workdir / "aspirin-md.xyz", ":")
    assert len(data) >= 5 and len(frames) == len(data)  # every logged step has its frame
    assert frames[-1].get_potential_energy() == pytest.approx(data[-1, 1], abs=1e-5)
    assert (workdir / "aspirin-md.png").stat().st_size > 1000
    assert f"({len(frames)} frames)" in stdout


# ------------------------------------------------------------------- eval


def independent_errors(frames, ref_energies, ref_forces):
    """MAE (meV) of energy (total, per atom) and forces from one MaceCalculator call per frame."""
    from mace_ase.calculator import MaceCalculator

    calc = MaceCalculator(MODEL, dtype="float32")
    de, de_atom, df, predictions = [], [], [], []
    for atoms, ref_energy, ref_force in zip(frames, ref_energies, ref_forces):
        atoms = ase.Atoms(atoms.numbers, atoms.positions)
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        predictions.append((energy, forces))
        de.append(energy - ref_energy)
        de_atom.append(de[-1] / len(atoms))
        df.append((forces - ref_force).ravel())
    mae = lambda x: 1e3 * float(np.abs(np.concatenate([np.ravel(v) for v in x])).mean())  # noqa: E731
    return {"energy": mae(de), "energy_per_atom": mae(de_atom), "forces": mae(df)}, predictions


def printed_mae(output: str, name: str) -> float:
    return float(field(output, name).split()[1])


def test_eval_custom_keys_prints_the_right_errors(workdir):
    data = shared_data("solvent_xtb", "solvent_xtb_test.xyz")
    result = cli("eval", data, "--index", ":4", "--model", MODEL, "--energy-key", "energy_xtb",
                 "--forces-key", "forces_xtb", "--batch-size", "3", "-o", "pred.xyz")
    frames = ase.io.read(data, ":4")
    written = ase.io.read(workdir / "pred.xyz", ":")
    assert len(written) == 4 and field(result.stdout, "frames").startswith("4 (")
    for atoms, original in zip(written, frames):
        assert atoms.info["energy_xtb"] == original.info["energy_xtb"]  # labels kept
        assert np.array_equal(atoms.numbers, original.numbers) and atoms.arrays["MACE_forces"].shape == (len(atoms), 3)

    # The errors again, from the written predictions and the raw labels (predictions themselves are
    # checked against direct calculator calls in the next test).
    de = np.array([w.info["MACE_energy"] - f.info["energy_xtb"] for w, f in zip(written, frames)])
    df = np.concatenate([(w.arrays["MACE_forces"] - f.arrays["forces_xtb"]).ravel() for w, f in zip(written, frames)])
    natoms = np.array([len(f) for f in frames])
    expected = {"energy": np.abs(de).mean(), "energy_per_atom": np.abs(de / natoms).mean(), "forces": np.abs(df).mean()}
    for name, value in expected.items():
        assert printed_mae(result.stdout, name) == pytest.approx(1e3 * value, rel=1e-5), name
    rmse = float(field(result.stdout, "forces").split()[4])
    assert rmse == pytest.approx(1e3 * np.sqrt((df**2).mean()), rel=1e-5)


def test_eval_reads_labels_from_the_calculator_results(workdir):
    """Default keys: energy/forces as ASE's extxyz reader attaches them (a SinglePointCalculator)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import kcal, mol

    npz = np.load(shared_data("rmd17", "rmd17_aspirin_test_01.npz"))
    energies, forces = npz["energies"][:3] * kcal / mol, npz["forces"][:3] * kcal / mol
    frames = []
    for k in range(3):
        atoms = ase.Atoms(numbers=npz["nuclear_charges"], positions=npz["coords"][k])
        atoms.calc = SinglePointCalculator(atoms, energy=energies[k], forces=forces[k])
        frames.append(atoms)
    ase.io.write(workdir / "labelled.xyz", frames)
    ase.io.write(workdir / "plain.xyz", [ase.Atoms(a.numbers, a.positions) for a in frames])

    result = cli("eval", "labelled.xyz", "--model", MODEL)
    expected, predictions = independent_errors(frames, energies, forces)
    for name, value in expected.items():
        assert printed_mae(result.stdout, name) == pytest.approx(value, rel=1e-4), name
    assert expected["forces"] < 500  # a model fitted to aspirin: forces within 0.5 eV/Å on average
    written = ase.io.read(workdir / "labelled-eval.xyz", ":")
    assert len(written) == 3
    for atoms, (energy, forces_k), reference in zip(written, predictions, energies):
        assert atoms.info["MACE_energy"] == pytest.approx(energy, abs=1e-3)
        assert atoms.arrays["MACE_forces"] == pytest.approx(forces_k, abs=1e-3)
        assert atoms.get_potential_energy() == pytest.approx(reference)  # the labels stay the labels

    unlabelled = cli("eval", "plain.xyz", "--model", MODEL)
    assert "no reference labels" in unlabelled.stdout and "MAE" not in unlabelled.stdout
    assert ase.io.read(workdir / "plain-eval.xyz", ":")[2].arrays["MACE_forces"].shape == (21, 3)


def test_eval_writes_the_format_the_extension_says(workdir):
    """-o pred.traj is an ASE trajectory whose frames carry the predictions; -o pred.xyz extended XYZ.

    (The predictions themselves are checked against direct calculator calls above.)
    """
    npz = np.load(shared_data("rmd17", "rmd17_aspirin_test_01.npz"))  # the frames (shapes) of the test above
    frames = [ase.Atoms(numbers=npz["nuclear_charges"], positions=npz["coords"][k]) for k in range(3)]
    ase.io.write(workdir / "three.xyz", frames)
    cli("eval", "three.xyz", "--model", MODEL, "-o", "pred.traj")
    cli("eval", "three.xyz", "--model", MODEL, "-o", "pred.xyz")
    assert (workdir / "pred.traj").read_bytes()[:8] == b"- of Ulm"  # ASE's trajectory format, not text
    assert (workdir / "pred.xyz").read_text().startswith("21\n")
    traj, xyz = ase.io.read(workdir / "pred.traj", ":"), ase.io.read(workdir / "pred.xyz", ":")
    assert len(traj) == len(xyz) == 3
    for atoms, text in zip(traj, xyz):
        np.testing.assert_allclose(atoms.positions, text.positions, atol=1e-7)
        assert atoms.get_potential_energy() == pytest.approx(text.info["MACE_energy"], abs=1e-6)
        assert atoms.info["MACE_energy"] == atoms.get_potential_energy()
        np.testing.assert_allclose(atoms.get_forces(), text.arrays["MACE_forces"], atol=1e-6)
    assert traj[0].get_potential_energy() != pytest.approx(traj[1].get_potential_energy(), abs=1e-3)
    assert_one_line_error(cli("eval", "three.xyz", "--model", MODEL, "-o", "pred.vasp", expect=1), "3 frames", "pred.vasp")


# ----------------------------------------------------------------- errors


def test_one_line_errors(workdir):
    (workdir / "garbage.xyz").write_text("this is\nnot an xyz file\n")
    (workdir / "data.unknownext").write_text("1\n\nH 0 0 0\n")
    ase.Atoms("SiH4", positions=np.eye(5, 3) * 1.5).write(workdir / "silane.xyz")

    missing = cli("relax", "missing.xyz", "--model", MODEL, expect=2)
    assert_one_line_error(missing, "missing.xyz", "does not exist")
    assert_one_line_error(cli("eval", "garbage.xyz", "--model", MODEL, expect=1), "cannot read", "garbage.xyz")
    assert_one_line_error(cli("md", "data.unknownext", "--model", MODEL, expect=1), "cannot read")
    assert_one_line_error(cli("relax", ASPIRIN, "--format", "nosuchformat", expect=1), "nosuchformat")
    assert_one_line_error(cli("relax", "silane.xyz", "--model", MODEL, expect=1), "Si")
    assert_one_line_error(cli("eval", ASPIRIN, "--model", "no-such-model", expect=1), "no-such-model")
    assert_one_line_error(cli("relax", ASPIRIN, "--optimizer", "NEWTON", expect=2), "optimizer")
    assert_one_line_error(cli("relax", ASPIRIN, "--model", MODEL, "-o", "out.foo", expect=1), "out.foo")
    assert_one_line_error(cli("md", ASPIRIN, "--model", MODEL, "--trajectory", "t.png", expect=1), "trajectory")


def test_unexpected_errors_are_one_line_unless_debug(workdir, monkeypatch):
    import mace_ase.cli.common as common

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(common, "read_frames", broken)
    assert_one_line_error(cli("relax", ASPIRIN, expect=1), "unexpected RuntimeError: boom", "--debug")
    debug = CliRunner().invoke(main, ["--debug", "relax", str(ASPIRIN)])
    assert isinstance(debug.exception, RuntimeError) and debug.exit_code == 1


def test_debug_shows_the_traceback_of_named_errors_too(workdir):
    """README: `mace-ase --debug ...` shows the traceback, also for MaceAseError and OSError."""
    from mace_ase.errors import ModelNotFoundError

    assert_one_line_error(cli("eval", ASPIRIN, "--model", "no-such-model", expect=1), "no-such-model")
    debug = CliRunner().invoke(main, ["--debug", "eval", str(ASPIRIN), "--model", "no-such-model"])
    assert isinstance(debug.exception, ModelNotFoundError) and debug.exit_code == 1
    script = Path(sys.executable).with_name("mace-ase")
    run = subprocess.run([str(script), "--debug", "info", "--no-such-option"], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr  # click's own usage errors stay one line
    env = {**os.environ, "MACE_ASE_CONFIG_DIR": str(workdir / "missing" / "config")}
    (workdir / "missing").write_text("a file where a folder is needed")
    run = subprocess.run([str(script), "--debug", "fetch", "mace-ase-small-xtb", "--accept-license"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1 and "Traceback" in run.stderr and "NotADirectoryError" in run.stderr


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """md and training draw with Figure + FigureCanvasAgg: a notebook's backend stays as it was."""
    import matplotlib

    from mace_ase.cli.md import plot_energies
    from mace_ase.training.metrics import plot_metrics

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        (tmp_path / "md.log").write_text("# header\n# columns\n0 -1 0.1 -0.9 300\n0.005 -1.05 0.15 -0.9 310\n")
        assert plot_energies(tmp_path / "md.log", tmp_path / "md.png")
        row = {"epoch": 0, "train_loss": 1.0, "valid_energy_per_atom_mae_meV": 2.0, "valid_energy_per_atom_rmse_meV": 3.0,
               "valid_forces_mae_meV_A": 4.0, "valid_forces_rmse_meV_A": 5.0}
        plot_metrics([row, {**row, "epoch": 1}], tmp_path / "metrics.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for png in ("md.png", "metrics.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------- fetch / info


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A registry with one non-commercial entry whose 'download' is the test model; config in tmp."""
    from mace_ase import weights

    monkeypatch.setenv("MACE_ASE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MACE_ASE_ACCEPT_LICENSE", raising=False)
    entry = weights.ModelEntry(
        "test-aspirin", "example/test-aspirin", "aspirin-small.zip", "v1", "Test non-commercial",
        "Testing only.", False, "the CLI test model",
    )
    monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
    calls = []

    def fetch_model(name, *, revision=None, local_files_only=None, **kwargs):
        calls.append((name, revision))
        if name != entry.name or local_files_only:
            raise weights.ModelNotFoundError(f"{name} is not cached")
        return MODEL

    monkeypatch.setattr(weights, "fetch_model", fetch_model)
    return calls


def test_fetch_prints_path_and_records_licence(registry, tmp_path):
    result = cli("fetch", "test-aspirin", "--revision", "abc123")
    assert registry == [("test-aspirin", "abc123")]
    assert field(result.stdout, "path") == str(MODEL)
    assert "NOT accepted" in field(result.stdout, "licence") and "--accept-license" in result.stderr
    assert not (tmp_path / "config" / "licenses.json").exists()

    accepted = cli("fetch", "test-aspirin", "--accept-license")
    assert "NOT" not in field(accepted.stdout, "licence") and "accepted" in field(accepted.stdout, "licence")
    recorded = json.loads((tmp_path / "config" / "licenses.json").read_text())
    assert "test-aspirin" in json.dumps(recorded)

    assert_one_line_error(cli("fetch", "no-such-model", expect=1), "no-such-model", "test-aspirin")


def test_licence_gate_on_a_command(registry, workdir):
    refused = cli("md", ASPIRIN, "--model", "test-aspirin", "--steps", "0", expect=1)
    assert_one_line_error(refused, "test-aspirin", "licence", "--accept-license")
    assert not (workdir / "aspirin-md.xyz").exists()

    accepted = cli("md", ASPIRIN, "--model", "test-aspirin", "--steps", "0", "--accept-license")
    assert "(1 frames)" in field(accepted.stdout, "trajectory")
    assert not (workdir / "config" / "licenses.json").exists()  # accepted for this run only


def test_info_lists_registry_folders_and_jax(registry, tmp_path):
    from mace_ase import weights

    before = cli("info").stdout
    assert field(before, "config folder") == str(tmp_path / "config")
    assert field(before, "HF cache") == str(tmp_path / "hf")
    assert field(before, "JAX").startswith(jax.__version__)
    assert "cpu" in field(before, "devices").lower()
    assert "float32" in field(before, "precision")
    for name in weights.REGISTRY:
        assert re.search(rf"^  {re.escape(name)}( \(default\))?$", before, re.MULTILINE), name
    block = before.split("  test-aspirin")[1]
    assert "NOT accepted" in block.splitlines()[1] and "example/test-aspirin" in block

    weights.accept_license("test-aspirin")
    after = cli("info").stdout.split("  test-aspirin")[1]
    assert "NOT" not in after.splitlines()[1] and "accepted" in after.splitlines()[1]


# --------------------------------------------------------------- examples


def run_example(name: str, *args, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [name, str(MODEL), *map(str, args)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_example_relax(workdir, monkeypatch, capsys):
    from mace_ase.calculator import MaceCalculator

    out = run_example("relax.py", "--steps", 5, monkeypatch=monkeypatch, capsys=capsys)
    initial = float(re.search(r"initial energy (\S+) eV", out).group(1))
    final = float(re.search(r"final energy (\S+) eV", out).group(1))
    relaxed = ase.io.read(workdir / "aspirin-relaxed.xyz")
    relaxed.calc = MaceCalculator(MODEL)  # the printed energy is the written structure's
    assert relaxed.get_potential_energy() == pytest.approx(final, abs=2e-4)
    start = ase.io.read(ASPIRIN)
    start.calc = relaxed.calc
    assert start.get_potential_energy() == pytest.approx(initial, abs=2e-4)
    assert final < initial - 0.05  # five BFGS steps went downhill


def test_example_md(workdir, monkeypatch, capsys):
    out = run_example("md.py", "--steps", 20, monkeypatch=monkeypatch, capsys=capsys)
    assert "compilations: 1" in out
    assert len(ase.io.read(workdir / "aspirin-md.traj", ":")) == 3  # steps 0, 10, 20


def test_example_vibrations(workdir, monkeypatch, capsys):
    out = run_example("vibrations.py", "--steps", 0, monkeypatch=monkeypatch, capsys=capsys)
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s*\d+\s", line)]
    assert [int(row[0]) for row in rows] == list(range(63))  # 3N modes of 21 atoms
    assert float(rows[-1][2]) > 2500  # C-H / O-H stretches, cm^-1
