"""mace-ase as an MLIPAudit external model.

    mlipaudit benchmark -m benchmarks/mlipaudit/model.py -i INPUTS -o OUT -rm dev

MLIPAudit runs this file and benchmarks the ASE calculator bound to
``mlipaudit_external_model`` (it reads ``allowed_atomic_numbers`` to skip benchmarks with
elements the model lacks). Which model, from the environment:

- ``MACE_ASE_MLIPAUDIT_MODEL``: a registered name or an archive path (unset or empty: the
  bundled model);
- ``MACE_ASE_MLIPAUDIT_DTYPE``: ``float32`` (default) or ``float64``;
- ``MACE_ASE_MLIPAUDIT_ACCEPT_LICENSE=1``: accept the model's licence (non-commercial models refuse
  to load otherwise; ``MACE_ASE_ACCEPT_LICENSE`` and ``mace-ase fetch --accept-license`` work too).

MLIPAudit names its output folder after this file's stem: copy the file under another name
(``benchmarks/mlipaudit/run.py`` does) to keep the results of several models apart.
"""

import os

from mace_ase import MaceCalculator

mlipaudit_external_model = MaceCalculator(
    os.environ.get("MACE_ASE_MLIPAUDIT_MODEL") or None,
    dtype=os.environ.get("MACE_ASE_MLIPAUDIT_DTYPE") or "float32",
    accept_license=os.environ.get("MACE_ASE_MLIPAUDIT_ACCEPT_LICENSE") == "1" or None,
)
