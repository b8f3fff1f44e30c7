"""mlip's v2 MACE (``mlip.models.mace``) has another parameter layout: refused by name, not misread."""

from __future__ import annotations

import pytest
from conftest import require

from mace_ase.archive import load_archive
from mace_ase.errors import UnsupportedConfigError

mlip = require("mlip")
pytestmark = pytest.mark.mlip


def test_mlip_v2_archive_is_refused_with_a_clear_message(tmp_path):
    from mlip.data import DatasetInfo
    from mlip.models import ForceField
    from mlip.models.mace.network import Mace
    from mlip.models.model_io import save_model_to_zip

    info = DatasetInfo(atomic_energies_map={1: -13.6, 8: -2041.0}, graph_cutoff_angstrom=5.0,
                       avg_num_neighbors=5.0, scaling_mean=0.0, scaling_stdev=1.0)
    network = Mace(config=Mace.Config(num_layers=1, num_channels=4, l_max=1, correlation=1), dataset_info=info)
    path = tmp_path / "v2.zip"
    save_model_to_zip(path, ForceField.from_mlip_network(network, seed=0))
    with pytest.raises(UnsupportedConfigError, match="v2"):
        load_archive(path)
