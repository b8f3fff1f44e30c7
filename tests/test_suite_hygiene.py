"""The suite's own rules (tests/conftest.py), checked by running pytest on small test files in a
subprocess with this conftest: a missing oracle or data folder fails naming it, any skip fails
the run, and a test that leaves JAX's x64 mode on fails. Without these rules CI could pass with
part of the suite silently skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CASES = {
    "oracle": ("from conftest import require\n\ndef test_it():\n    require('an_oracle_that_is_not_installed')\n",
               "an_oracle_that_is_not_installed"),
    "data": ("from conftest import shared_data\n\ndef test_it():\n    shared_data('a_folder_that_is_not_there')\n",
             "a_folder_that_is_not_there"),
    "skip": ("import pytest\n\ndef test_it():\n    pytest.skip('for no good reason')\n",
             "skipped"),
    "x64": ("import jax\n\ndef test_it():\n    jax.config.update('jax_enable_x64', True)\n",
            "x64"),
}


def run_suite(tmp_path: Path, source: str, **env) -> subprocess.CompletedProcess:
    # The real conftest beside the test file; `shared` resolves next to this repository as usual.
    folder = tmp_path / "tests"
    folder.mkdir()
    shutil.copy(TESTS / "conftest.py", folder / "conftest.py")
    (folder / "test_case.py").write_text(textwrap.dedent(source))
    environment = {key: value for key, value in os.environ.items() if key != "MACE_ASE_ALLOW_SKIPS"} | env
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(folder)],
        cwd=TESTS.parent, env=environment, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_ci_must_not_pass_fails_the_run_by_name(tmp_path, case):
    source, name = CASES[case]
    result = run_suite(tmp_path, source)
    assert result.returncode != 0, result.stdout
    assert name in result.stdout, result.stdout[-3000:]


def test_skips_are_allowed_only_when_asked(tmp_path):
    result = run_suite(tmp_path, CASES["oracle"][0], MACE_ASE_ALLOW_SKIPS="1")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout
