"""mlip's v1 MACE archives (``mlip.models_v1.mace``, mlip 0.2.5): read and written.

An archive is a zip holding ``hyperparams.json`` (``config``, ``dataset_info``, ``version``,
...) and ``params.npz`` (flax parameters keyed by their module path joined with '#', under
MLIP_PREFIX; archives trained with pmap keep a leading device axis of length 1). mace-ase
adds an optional ``mace_ase.json`` member with provenance and licence metadata; mlip ignores
members it does not know, so archives written here load in mlip and the other way round.

Two conventions of mlip live here and nowhere else:

* the storage keys (``mlip_keys``), one per leaf of mace-ase's parameter layout;
* the edge vector: mlip v1 sends r = x_sender - x_receiver, the negative of the ASE vector
  mace-ase's model uses. Harmonics of odd l change sign with r, so the radial weights of the
  message paths through an odd harmonic are negated on the way in and out (exactly: a sign
  flip is lossless), and mlip's numbers are reproduced to the last digit.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchiveError, UnsupportedConfigError

HYPERPARAMS = "hyperparams.json"
PARAMS = "params.npz"
METADATA = "mace_ase.json"
MLIP_PREFIX = "params#mlip_network#MaceBlock_0#"
MLIP_VERSION_WRITTEN = "0.2.5"
# mace_ase.json key for MaceConfig fields that mlip's hyperparams.json has no place for.
CONFIG_KEY = "mace_ase_config"
MLIP_RADIAL_MLP_HIDDEN = (64, 64, 64)  # mlip v1's fixed radial MLP
# mlip MaceConfig fields that change nothing numerically.
_IGNORED_MLIP_FIELDS = {"deterministic_scatter_ops"}


# ---------------------------------------------------------------- what mlip v1 can express


def unexpressible(config) -> list[str]:
    """The MaceConfig fields (with their values) that mlip v1's MACE has no equivalent for."""
    from ..model.config import MaceConfig

    defaults = MaceConfig(atomic_numbers=(1,), atomic_energies=(0.0,))
    mlip_fields = {
        "atomic_numbers", "atomic_energies", "cutoff", "num_layers", "num_channels", "l_max", "node_symmetry",
        "correlation", "readout_irreps", "num_readout_heads", "include_pseudotensors", "num_bessel", "activation",
        "radial_envelope", "symmetric_tensor_product_basis", "avg_num_neighbors", "avg_r_min", "scaling_mean",
        "scaling_std",
        "radial_mlp_hidden",  # not an mlip hyper-parameter, but kept in mace_ase.json and read off the shapes
    }
    problems = [
        f"{name}={getattr(config, name)!r}"
        for name in config.to_dict()
        if name not in mlip_fields | {"radial_scale"} and getattr(config, name) != getattr(defaults, name)
    ]
    if config.avg_r_min is None and config.radial_scale != 1.0:
        # With avg_r_min the constant is kept in mace_ase.json (mlip recomputes it); without, mlip has none.
        problems.append(f"radial_scale={config.radial_scale!r} without avg_r_min")
    return problems


# ---------------------------------------------------------------- storage keys


def _linear_keys(path, module, irreps_in, irreps_out, mul_in, mul_out) -> dict:
    """e3nn Linear: one weight per irrep present on both sides, keyed w[i_in,i_out]."""
    keys = {}
    for i_out, ir in enumerate(irreps_out):
        if ir in irreps_in:
            i_in = irreps_in.index(ir)
            m_in = mul_in[ir] if isinstance(mul_in, dict) else mul_in
            keys[path + (str(ir),)] = f"{module}#w[{i_in},{i_out}] {m_in}x{ir},{mul_out}x{ir}"
    return keys


def _species_linear_keys(path, module, irreps_in, irreps_out, channels, num_species) -> dict:
    """mlip's FullyConnectedTensorProduct(x, one_hot(species)): w[i_in,0,i_out]."""
    keys = {}
    for i_out, ir in enumerate(irreps_out):
        if ir in irreps_in:
            i_in = irreps_in.index(ir)
            keys[path + (str(ir),)] = f"{module}#w[{i_in},0,{i_out}] {channels}x{ir},{num_species}x0e,{channels}x{ir}"
    return keys


def mlip_keys(config) -> dict[tuple, str]:
    """mace-ase parameter path -> key in mlip's params.npz, for every leaf of the layout."""
    import e3nn_jax as e3nn

    from ..model.mace import input_irreps, interaction_irreps, message_paths, node_irreps, product_basis, product_keep

    C, S = config.num_channels, config.num_species
    keys = {("embedding",): "LinearNodeEmbeddingBlock_0#embeddings"}
    for layer in range(config.num_layers):
        last = layer == config.num_layers - 1
        p, m = ("layers", layer), f"layer_{layer}#"
        block = m + "InteractionBlock_0#"
        x_in = input_irreps(config, layer)
        targets = interaction_irreps(config)
        keys.update(_linear_keys(p + ("linear_up",), block + "linear_up", x_in, x_in, C, C))
        for i in range(len(config.radial_mlp_hidden) + 1):
            keys[p + ("radial_mlp", i)] = f"{block}MessagePassingConvolution_0#MultiLayerPerceptron_0#Dense_{i}#kernel"
        paths = message_paths(config, layer)
        keys.update(_linear_keys(p + ("linear_down",), block + "linear_down", tuple(paths), targets,
                                 {ir: len(ps) * C for ir, ps in paths.items()}, C))
        outs = node_irreps(config, layer)
        if layer == 0:
            keys.update(_species_linear_keys(p + ("selector",), m + "FullyConnectedTensorProduct_0", targets, targets, C, S))
        else:
            keys.update(_species_linear_keys(p + ("skip",), m + "FullyConnectedTensorProduct_0", x_in, outs, C, S))
        product = m + "EquivariantProductBasisBlock_0#"
        keep = product_keep(config, layer)
        product_out = set()
        for order in range(config.correlation, 0, -1):
            for ir, _, _ in product_basis(config, order, keep):
                keys[p + ("product", f"w{order}_{ir}")] = f"{product}SymmetricContraction_0#w{order}_{ir}"
                product_out.add(ir)
        keys.update(_linear_keys(p + ("product_linear",), product + "Linear_0", tuple(sorted(product_out)), outs, C, C))
        scalar = (e3nn.Irrep("0e"),)
        for head in range(config.num_readout_heads):
            r = p + ("readout", head)
            if not last:
                keys.update(_linear_keys(r, f"{m}LinearReadoutBlock_{head}#Linear_0", outs, scalar, C, 1))
            else:
                hidden = e3nn.Irreps(config.readout_irreps[0]).simplify().num_irreps
                module = f"{m}NonLinearReadoutBlock_{head}#"
                keys.update(_linear_keys(r + ("hidden",), module + "Linear_0", outs, scalar, C, hidden))
                keys.update(_linear_keys(r + ("output",), module + "Linear_1", scalar, scalar, hidden, 1))
    return {path: MLIP_PREFIX + key for path, key in keys.items()}


# ---------------------------------------------------------------- the edge-vector sign


def odd_harmonic_columns(config, layer: int) -> np.ndarray:
    """Column indices of the last radial-MLP layer that weight paths through an odd harmonic."""
    from ..model.mace import message_paths

    columns, index = [], 0
    for ir_paths in message_paths(config, layer).values():
        for path in ir_paths:
            if len(path) == 2 and path[1].l % 2 == 1:
                columns.extend(range(index * config.num_channels, (index + 1) * config.num_channels))
            index += 1
    return np.asarray(columns, dtype=np.int64)


def flip_edge_vector(config, params) -> dict:
    """The same model for the opposite edge-vector convention (its own inverse)."""
    layers = []
    for layer, layer_params in enumerate(params["layers"]):
        layer_params = dict(layer_params)
        mlp = list(layer_params["radial_mlp"])
        last = np.array(mlp[-1], copy=True)
        last[:, odd_harmonic_columns(config, layer)] *= -1
        mlp[-1] = last
        layer_params["radial_mlp"] = mlp
        layers.append(layer_params)
    return {**params, "layers": layers}


# ---------------------------------------------------------------- hyper-parameters


def config_from_mlip(hyperparams: dict):
    """mlip's hyperparams.json -> MaceConfig; refuses unsupported values by name."""
    from ..model.config import MaceConfig

    try:
        config = dict(hyperparams["config"])
        info = dict(hyperparams["dataset_info"])
    except (KeyError, TypeError) as error:
        raise ArchiveError(f"{HYPERPARAMS} lacks the '{error.args[0]}' section") from None

    def refuse(name, why):
        raise UnsupportedConfigError(f"unsupported MACE config: {name}={config.get(name)!r} ({why})")

    if config.get("gate_nodes"):
        refuse("gate_nodes", "node gating is not implemented in mace-ase")
    if config.get("species_embedding_dim") is not None:
        refuse("species_embedding_dim", "edge species embeddings are not implemented in mace-ase")
    if config.get("include_pseudotensors"):
        refuse("include_pseudotensors", "pseudotensor irreps are not implemented in mace-ase")
    known = {
        "num_layers", "num_channels", "l_max", "node_symmetry", "correlation", "readout_irreps",
        "num_readout_heads", "include_pseudotensors", "num_bessel", "activation", "radial_envelope",
        "symmetric_tensor_product_basis", "atomic_energies", "avg_num_neighbors", "avg_r_min",
        "num_species", "gate_nodes", "species_embedding_dim",
    } | _IGNORED_MLIP_FIELDS
    for name in config:
        if name not in known:
            refuse(name, "this field is not part of mlip's v1 MaceConfig that mace-ase reads")

    energies_map = info.get("atomic_energies_map")
    if not isinstance(energies_map, dict) or not energies_map:
        raise UnsupportedConfigError(
            "unsupported dataset_info: atomic_energies_map must be one non-empty mapping (multi-dataset models are not supported)"
        )
    energies_map = {int(z): float(e) for z, e in energies_map.items()}
    zs = tuple(sorted(energies_map))
    num_species = config.get("num_species")
    if num_species is not None and num_species != len(zs):
        refuse("num_species", f"must equal the {len(zs)} elements of the atomic energies map")

    strategy = config.get("atomic_energies")
    if strategy in (None, "average"):
        atomic_energies = [energies_map[z] for z in zs]
    elif strategy == "zero":
        atomic_energies = [0.0] * len(zs)
    elif isinstance(strategy, dict):
        # mlip v1 reads an explicit dict by species *index*, not atomic number.
        by_index = {int(k): float(v) for k, v in strategy.items()}
        atomic_energies = [by_index.get(i, 0.0) for i in range(len(zs))]
    else:
        refuse("atomic_energies", "expected 'average', 'zero', None or a mapping")

    cutoff = info.get("graph_cutoff_angstrom", info.get("cutoff_distance_angstrom"))
    if cutoff is None:
        raise ArchiveError("dataset_info lacks graph_cutoff_angstrom")
    avg_neighbors = config.get("avg_num_neighbors")
    if avg_neighbors is None:
        avg_neighbors = info.get("avg_num_neighbors", 1.0)
    avg_r_min = config.get("avg_r_min")
    if avg_r_min is None:
        avg_r_min = info.get("avg_r_min_angstrom")
    node_symmetry = config.get("node_symmetry")
    l_max = config.get("l_max", 3)
    return MaceConfig(
        atomic_numbers=zs,
        atomic_energies=atomic_energies,
        cutoff=float(cutoff),
        num_layers=config.get("num_layers", 2),
        num_channels=config.get("num_channels", 128),
        l_max=l_max,
        node_symmetry=l_max if node_symmetry is None else node_symmetry,
        correlation=config.get("correlation", 3),
        readout_irreps=tuple(config.get("readout_irreps", ("16x0e", "0e"))),
        num_readout_heads=config.get("num_readout_heads", 1),
        num_bessel=config.get("num_bessel", 8),
        activation=config.get("activation", "silu"),
        radial_envelope=config.get("radial_envelope", "polynomial_envelope"),
        symmetric_tensor_product_basis=config.get("symmetric_tensor_product_basis", False),
        avg_num_neighbors=float(avg_neighbors),
        avg_r_min=None if avg_r_min is None else float(avg_r_min),
        scaling_mean=float(info.get("scaling_mean", 0.0)),
        scaling_std=float(info.get("scaling_stdev", 1.0)),
    )


def dataset_info(config) -> dict:
    """mlip's ``dataset_info`` section (the same in its v1 and v2 archives)."""
    return {
        "dataset_name": None,
        "num_graphs": None,
        "atomic_energies_map": {str(z): e for z, e in zip(config.atomic_numbers, config.atomic_energies)},
        "total_charge_set": None,
        "graph_cutoff_angstrom": config.cutoff,
        "long_range_cutoff_angstrom": None,
        "avg_num_neighbors": config.avg_num_neighbors,
        "avg_r_min_angstrom": config.avg_r_min,
        "scaling_mean": config.scaling_mean,
        "scaling_stdev": config.scaling_std,
        "atomic_energies_removed": False,
    }


def config_to_mlip(config) -> dict:
    """MaceConfig -> the ``config`` and ``dataset_info`` sections mlip expects."""
    if config.activation_scale is not None:
        raise UnsupportedConfigError(
            f"activation_scale={config.activation_scale!r} has no place in an mlip archive "
            "(mlip always uses e3nn-jax's normalisation)"
        )
    if config.avg_r_min is None and config.radial_scale != 1.0:
        raise UnsupportedConfigError(
            f"radial_scale={config.radial_scale!r} without avg_r_min has no place in an mlip archive"
        )
    return {
        "config": {
            "num_layers": config.num_layers,
            "num_channels": config.num_channels,
            "l_max": config.l_max,
            "node_symmetry": config.node_symmetry,
            "correlation": config.correlation,
            "readout_irreps": list(config.readout_irreps),
            "num_readout_heads": config.num_readout_heads,
            "include_pseudotensors": False,
            "num_bessel": config.num_bessel,
            "activation": config.activation,
            "radial_envelope": config.radial_envelope,
            "symmetric_tensor_product_basis": config.symmetric_tensor_product_basis,
            "atomic_energies": "average",
            "avg_num_neighbors": config.avg_num_neighbors,
            "avg_r_min": config.avg_r_min,
            "num_species": None,
            "gate_nodes": False,
            "species_embedding_dim": None,
            "deterministic_scatter_ops": False,
        },
        "dataset_info": dataset_info(config),
        "available_properties": {"energy": True, "forces": True, "partial_charges": False, "hessian": False, "stress": True},
    }


# ---------------------------------------------------------------- files


def read_members(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Raw contents (hyperparams, flat params, metadata), with errors that say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"model archive not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for required in (HYPERPARAMS, PARAMS):
                if required not in names:
                    raise ArchiveError(f"{path} is not an mlip/mace-ase model archive: it has no {required}")
            hyperparams = json.loads(archive.read(HYPERPARAMS))
            with np.load(io.BytesIO(archive.read(PARAMS)), allow_pickle=False) as npz:
                flat = {key: npz[key] for key in npz.files}
            metadata = json.loads(archive.read(METADATA)) if METADATA in names else {}
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise ArchiveError(f"{path} is truncated or corrupt and cannot be read as a model archive ({error})") from None
    return hyperparams, flat, metadata


_RADIAL_KERNEL = MLIP_PREFIX + "layer_0#InteractionBlock_0#MessagePassingConvolution_0#MultiLayerPerceptron_0#Dense_{}#kernel"


def _radial_mlp_hidden(flat: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Hidden widths of the radial MLP, read off the kernels' shapes (mlip itself fixes 64,64,64).

    Empty when the archive has no such kernels (params_from_flat then names what is missing).
    """
    shapes = []
    while _RADIAL_KERNEL.format(len(shapes)) in flat:
        shapes.append(np.shape(flat[_RADIAL_KERNEL.format(len(shapes))]))
    return tuple(int(shape[-1]) for shape in shapes[:-1])


def is_mlip_v1(flat_keys) -> bool:
    return any(key.startswith(MLIP_PREFIX) for key in flat_keys)


def params_from_flat(config, flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """mlip's flat '#'-keyed arrays -> mace-ase params (mlip's edge convention still applied).

    Raises KeyError/ValueError naming the leaf.
    """
    from ..model.params import checked_leaf, parameter_layout, set_leaf

    keys = mlip_keys(config)
    params: dict[str, Any] = {}
    for leaf in parameter_layout(config):
        key = keys[leaf.path]
        if key not in flat:
            raise KeyError(f"parameter '{key}' is missing from the archive")
        array = np.asarray(flat[key])
        if array.shape == (1,) + leaf.shape:  # archives trained with pmap keep a device axis
            array = array[0]
        set_leaf(params, leaf.path, checked_leaf(key, array, leaf.shape))
    return params


def params_to_flat(config, params) -> dict[str, np.ndarray]:
    from ..model.params import get_leaf, parameter_layout

    keys = mlip_keys(config)
    return {keys[leaf.path]: np.asarray(get_leaf(params, leaf.path)) for leaf in parameter_layout(config)}


def read(path: str | os.PathLike):
    """An mlip v1 MACE archive (or one mace-ase wrote in that format) -> MaceModel."""
    from ..archive import MaceModel

    hyperparams, flat, metadata = read_members(path)
    if not is_mlip_v1(flat):
        raise UnsupportedConfigError(
            f"{path}: the parameters are not those of mlip's v1 MACE (mlip.models_v1.mace)"
        )
    config = config_from_mlip(hyperparams)
    metadata = dict(metadata)
    stored = metadata.pop(CONFIG_KEY, {}) or {}
    hidden = _radial_mlp_hidden(flat)
    if "radial_mlp_hidden" in stored and tuple(stored["radial_mlp_hidden"]) != hidden:
        raise ArchiveError(
            f"{path}: {METADATA} says radial_mlp_hidden={tuple(stored['radial_mlp_hidden'])} "
            f"but the radial MLP parameters have hidden sizes {hidden}"
        )
    if hidden:
        config = config.replace(radial_mlp_hidden=hidden)
    if stored.get("radial_scale") is not None:
        # The constant this model was saved with (mlip recomputes it, in float32, on its XLA).
        config = config.replace(radial_scale=float(stored["radial_scale"]))
    try:
        params = params_from_flat(config, flat)
    except (KeyError, ValueError) as error:
        raise ArchiveError(f"{path}: {error.args[0]}") from None
    metadata = {"mlip_version": hyperparams.get("version"), **metadata}
    return MaceModel(config=config, params=flip_edge_vector(config, params), metadata=metadata)


def write(model, path: str | os.PathLike) -> Path:
    """Write `model` so that both mace-ase and ``mlip.models.model_io`` load it (atomic replace)."""
    problems = unexpressible(model.config)
    if problems:
        raise UnsupportedConfigError(f"mlip v1 archives cannot hold {', '.join(problems)}")
    hyperparams = config_to_mlip(model.config)
    hyperparams["version"] = MLIP_VERSION_WRITTEN
    flat = params_to_flat(model.config, flip_edge_vector(model.config, model.params))
    metadata = {k: v for k, v in model.metadata.items() if k not in ("mlip_version", CONFIG_KEY)}
    stored = {}
    if model.config.radial_mlp_hidden != MLIP_RADIAL_MLP_HIDDEN:
        # Not an mlip hyper-parameter (mlip fixes 64,64,64): kept where mlip does not look.
        stored["radial_mlp_hidden"] = list(model.config.radial_mlp_hidden)
    if model.config.avg_r_min is not None:
        stored["radial_scale"] = model.config.radial_scale  # fixed once, see MaceConfig
    if stored:
        metadata[CONFIG_KEY] = stored
    return write_members(path, hyperparams, flat, metadata)


def write_members(path: str | os.PathLike, hyperparams: dict, flat: dict[str, np.ndarray], metadata: dict) -> Path:
    """The zip ``read_members`` reads (hyperparams.json, params.npz, mace_ase.json), replaced atomically."""
    from ..fileio import atomic_save

    buffer = io.BytesIO()
    np.savez(buffer, **flat)

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(HYPERPARAMS, json.dumps(hyperparams))
            archive.writestr(PARAMS, buffer.getvalue())
            if metadata:
                archive.writestr(METADATA, json.dumps(metadata, indent=1))

    return atomic_save(path, write_zip)
