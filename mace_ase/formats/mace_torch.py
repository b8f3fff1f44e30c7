"""mace-torch models (``.model`` files, or a state_dict + hyper-parameters) -> MaceConfig + params.

What is read (mace-torch 0.3.x, e3nn 0.4.4):

* ``MACE`` and ``ScaleShiftMACE``; first interaction ``RealAgnostic[Density][Residual]InteractionBlock``,
  later ones the residual variant of the same normalisation; ``LinearReadoutBlock`` then one
  ``NonLinearReadoutBlock``; Bessel radial basis with a polynomial cutoff, optionally behind an
  Agnesi or soft distance transform; ZBL pair repulsion; hidden irreps ``C x (0e + 1o + ... + L)``
  with L <= 2 or more; correlation 1-3; any elements; one head of a multi-head model.
* Everything else is refused with ``UnsupportedConfigError`` naming the class or option.

How the numbers map (all checked by the parity tests against mace-torch itself):

* e3nn-torch's ``o3.Linear`` and ``FullyConnectedTensorProduct`` store one flat weight vector,
  blocks ``[mul_in, mul_out]`` (``[mul_1, mul_2, mul_out]``) in instruction order; their
  normalisation (1/sqrt(fan-in)) is mace-ase's.
* The message tensor product lists its paths per input irrep, then edge harmonic, then
  sorted by output irrep; mace-ase lists the self path (through Y_0) first. The radial MLP's
  output columns and the rows of the linear after the sum are permuted accordingly.
* The activation constant is e3nn-torch's ``normalize2mom`` (1.67918 for silu, a Monte-Carlo
  estimate stored in the file), not e3nn-jax's (1.67656): the file's value is used.
* Bessel frequencies, prefactor and envelope exponent come from the file's buffers (float32
  in float32-trained models).
* Product basis: mace-torch's coupling tensors U are a signed permutation of e3nn-jax's full
  basis (correlation <= 3). When the file's U are exact (float64 models), the weights are
  re-expressed in e3nn-jax's smaller symmetric basis (least squares, residual checked): same
  numbers, faster. When they are float32-computed, re-expressing them would move forces by
  ~1e-7 eV/Å, so the file's U are kept as model constants (``stored_product_basis``).
* Multi-head models: one head is kept; its readout slice is multiplied by 1/sqrt(heads) (the
  fan-in of mace-torch's last linear counts every head's hidden units).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchiveError, UnsupportedConfigError
from .torch_pickle import Record, module_state_dict, read_torch_file

# e3nn-torch's normalize2mom constants (mean over 1e6 torch.randn samples, seed 0, float64), for
# state_dict files, which do not carry them. Whole-model files carry their own.
E3NN_TORCH_ACTIVATION_SCALE = {"silu": 1.6791767923989418}

SUPPORTED_MODELS = ("MACE", "ScaleShiftMACE")
FIRST_INTERACTIONS = {
    "RealAgnosticInteractionBlock": (False, "avg_num_neighbors"),
    "RealAgnosticResidualInteractionBlock": (True, "avg_num_neighbors"),
    "RealAgnosticDensityInteractionBlock": (False, "density"),
    "RealAgnosticDensityResidualInteractionBlock": (True, "density"),
}
LATER_INTERACTIONS = {
    "RealAgnosticResidualInteractionBlock": "avg_num_neighbors",
    "RealAgnosticDensityResidualInteractionBlock": "density",
}
DEFAULT_HEAD_SKIPPED = "pt_head"  # mace-torch's name for the pre-training head of fine-tuned models
BASIS_EXACT_TOLERANCE = 1e-12  # |U_file - U_e3nn M|: above this the file's basis is float32-computed


# ---------------------------------------------------------------- irreps (torch conventions)


def _irrep(l: int, p: int) -> tuple[int, int]:
    return (int(l), int(p))


def _irrep_str(ir) -> str:
    return f"{ir[0]}{'e' if ir[1] == 1 else 'o'}"


def parse_irreps(value) -> list[tuple[int, tuple[int, int]]]:
    """[(mul, (l, p))] from an e3nn Irreps record, a string like '8x0e+8x1o', or a list."""
    if isinstance(value, str):
        out = []
        for term in value.replace(" ", "").split("+"):
            if not term:
                continue
            mul, _, ir = term.rpartition("x")
            l, p = int(ir[:-1]), {"e": 1, "o": -1, "y": None}[ir[-1]]
            if p is None:
                raise UnsupportedConfigError(f"unsupported irreps {value!r}: 'y' parity")
            out.append((int(mul or 1), _irrep(l, p)))
        return out
    if isinstance(value, Record) and value.name == "Irreps":
        items = value.args[0] if value.args else ()
        return [_mul_ir(item) for item in items]
    if isinstance(value, (list, tuple)):
        return [_mul_ir(item) for item in value]
    raise ArchiveError(f"cannot read irreps from {value!r}")


def _mul_ir(item) -> tuple[int, tuple[int, int]]:
    if isinstance(item, Record):  # _MulIr(mul, Irrep(l, p)), pickled as a tuple
        item = item.args[0]
    mul, ir = item
    if isinstance(ir, Record):
        ir = ir.args[0]
    return int(mul), _irrep(*ir)


def _times(ir1, ir2) -> list[tuple[int, int]]:
    """Irreps of ir1 x ir2 (e3nn order: increasing l)."""
    (l1, p1), (l2, p2) = ir1, ir2
    return [_irrep(l, p1 * p2) for l in range(abs(l1 - l2), l1 + l2 + 1)]


def tp_slots(irreps_in, irreps_sh, targets) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """mace-torch's message paths (ir_in, ir_sh, ir_out), in its weight order.

    ``tp_out_irreps_with_instructions``: for each input irrep, each harmonic, each output
    irrep in the targets, one slot; the slots are then stably sorted by output irrep.
    """
    target_set = {ir for _, ir in targets}
    slots = []
    for _, ir_in in irreps_in:
        for _, ir_sh in irreps_sh:
            for ir_out in _times(ir_in, ir_sh):
                if ir_out in target_set:
                    slots.append((ir_in, ir_sh, ir_out))
    order = sorted(range(len(slots)), key=lambda k: ((slots[k][2][0], slots[k][2][1]), k))
    return [slots[k] for k in order]


# ---------------------------------------------------------------- what a file says


@dataclasses.dataclass
class TorchModel:
    """The hyper-parameters of a mace-torch model and its state_dict, however they were read."""

    model_class: str
    interaction_classes: list[str]
    readout_classes: list[str]
    atomic_numbers: list[int]
    r_max: float
    max_ell: int
    hidden_irreps: list  # [(mul, (l, p))] of every layer but the last
    mlp_irreps: list  # the non-linear readout's hidden irreps, all heads
    correlation: list[int]
    avg_num_neighbors: list[float]
    heads: list[str]
    gate: str | None
    activation_scale: float  # normalize2mom constant of the radial MLP's silu
    readout_activation_scale: float | None
    radial_type: str
    distance_transform: str | None
    pair_repulsion: bool
    options: dict  # root attributes that select other architectures
    state: dict[str, np.ndarray]
    source: str = ""

    def array(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ArchiveError(f"{self.source}: the model has no tensor '{key}'")
        return np.asarray(self.state[key])


def _activation(record) -> tuple[str | None, float | None]:
    """(function name, normalize2mom constant) of an e3nn normalize2mom record."""
    if record is None:
        return None, None
    if not isinstance(record, Record) or record.name != "normalize2mom":
        raise UnsupportedConfigError(f"unsupported activation module {getattr(record, 'kind', record)!r}")
    f = record.state.get("f")  # a function: the record class of its global name
    kind = getattr(f, "kind", str(f))
    name = kind.rsplit(".", 1)[-1]
    cst = 1.0 if record.state.get("_is_id") else float(record.state.get("cst"))
    return name, cst


def from_module(root: Any, source: str) -> TorchModel:
    """Read the hyper-parameters off a whole pickled model (a Record tree)."""
    if not isinstance(root, Record) or not root.is_module:
        raise ArchiveError(f"{source}: the torch file holds {type(root).__name__}, not a model")
    if root.name not in SUPPORTED_MODELS:
        raise UnsupportedConfigError(
            f"{source}: unsupported mace-torch model class {root.name} (mace-ase reads {', '.join(SUPPORTED_MODELS)})"
        )
    interactions = [c for _, c in sorted(root.get("interactions").children().items(), key=lambda kv: int(kv[0]))]
    products = [c for _, c in sorted(root.get("products").children().items(), key=lambda kv: int(kv[0]))]
    readouts = [c for _, c in sorted(root.get("readouts").children().items(), key=lambda kv: int(kv[0]))]
    state = module_state_dict(root)
    for name in ("r_max", "atomic_numbers"):  # attributes in 2022 pickles, buffers later
        if name not in state and root.get(name) is not None:
            state[name] = np.asarray(root.get(name))

    mlp = interactions[0].get("conv_tp_weights")
    radial_act = _activation(mlp.get("layer0").get("act")) if mlp is not None and mlp.get("layer0") else (None, None)
    if radial_act[0] not in (None, "silu"):
        raise UnsupportedConfigError(f"{source}: radial MLP activation {radial_act[0]} (mace-torch uses silu)")
    gate, readout_cst = None, None
    last = readouts[-1] if readouts else None
    if last is not None and last.get("non_linearity") is not None:
        acts = last.get("non_linearity").get("acts")
        first = acts.children().get("0") if isinstance(acts, Record) else None
        gate, readout_cst = _activation(first)

    radial = root.get("radial_embedding")
    transform = radial.get("distance_transform") if radial is not None else None
    bessel = radial.get("bessel_fn") if radial is not None else None
    sh = root.get("spherical_harmonics")
    sh_irreps = parse_irreps(sh.get("irreps_out")) if sh is not None else []
    max_ell = max(ir[0] for _, ir in sh_irreps) if sh_irreps else int(state.get("max_ell", -1))
    options = {
        name: root.state.get(name)
        for name in ("apply_cutoff", "use_so3", "edge_irreps", "use_agnostic_product", "use_last_readout_only",
                     "use_edge_irreps_first", "embedding_specs", "cueq_config", "use_reduced_cg",
                     "keep_last_layer_irreps", "lammps_mliap")
        if name in root.state
    }
    options["sh_irreps"] = sh_irreps
    options["use_sc_first"] = bool(products[0].state.get("use_sc", False)) if products else False
    if root.get("joint_embedding") is not None:
        options["embedding_specs"] = options.get("embedding_specs") or "joint_embedding"
    if root.get("embedding_readout") is not None:
        options["use_embedding_readout"] = True
    for k, block in enumerate(interactions):
        edge = block.state.get("edge_irreps")
        node = block.state.get("node_feats_irreps")
        if edge is not None and node is not None and parse_irreps(edge) != parse_irreps(node):
            options["edge_irreps"] = options.get("edge_irreps") or f"layer {k}: {edge}"
    for product in products:
        contractions = product.path("symmetric_contractions.contractions")
        if contractions is None:
            options["product_class"] = product.path("symmetric_contractions").kind if product.path("symmetric_contractions") else product.kind
    hidden = parse_irreps(products[0].path("linear").get("irreps_out")) if products else []
    mlp_irreps = parse_irreps(last.state["hidden_irreps"]) if last is not None and "hidden_irreps" in last.state else []
    heads = root.state.get("heads") or ["Default"]
    correlation = []
    for product in products:
        contractions = product.path("symmetric_contractions.contractions")
        first = contractions.children().get("0") if contractions is not None else None
        correlation.append(int(first.state.get("correlation")) if first is not None else -1)
    return TorchModel(
        model_class=root.name,
        interaction_classes=[b.name for b in interactions],
        readout_classes=[r.name for r in readouts],
        atomic_numbers=[int(z) for z in np.asarray(state["atomic_numbers"]).reshape(-1)],
        r_max=float(np.asarray(state["r_max"])),
        max_ell=max_ell,
        hidden_irreps=hidden,
        mlp_irreps=mlp_irreps,
        correlation=correlation,
        avg_num_neighbors=[float(b.state.get("avg_num_neighbors", 1.0)) for b in interactions],
        heads=[str(h) for h in heads],
        gate=gate,
        activation_scale=radial_act[1] if radial_act[1] is not None else E3NN_TORCH_ACTIVATION_SCALE["silu"],
        readout_activation_scale=readout_cst,
        radial_type=bessel.name if bessel is not None else "?",
        distance_transform=transform.name if transform is not None else None,
        pair_repulsion=root.get("pair_repulsion_fn") is not None,
        options=options,
        state=state,
        source=source,
    )


def from_state_dict(state: dict, hyperparams: dict, source: str) -> TorchModel:
    """A state_dict (``torch.save(model.state_dict())``) + hyper-parameters (JSON, the keys of
    mace-torch's ``extract_config_mace_model`` with classes, irreps and gate as strings)."""
    h = dict(hyperparams)

    def need(name):
        if name not in h:
            raise ArchiveError(f"{source}: the hyper-parameters lack '{name}'")
        return h[name]

    def class_name(value):
        return str(value).rsplit(".", 1)[-1].strip("'<>")

    num_interactions = int(need("num_interactions"))
    first, rest = class_name(need("interaction_cls_first")), class_name(need("interaction_cls"))
    gate = h.get("gate", "silu")
    gate = None if gate in (None, "None") else class_name(gate)
    heads = list(h.get("heads") or ["Default"])
    mlp = parse_irreps(need("MLP_irreps"))
    mlp = [(mul * len(heads), ir) for mul, ir in mlp]  # per head in the hyper-parameters, all heads in the file
    correlation = need("correlation")
    correlation = [int(correlation)] * num_interactions if np.ndim(correlation) == 0 else [int(c) for c in correlation]
    transform = h.get("distance_transform")
    transform = None if transform in (None, "None") else {"agnesi": "AgnesiTransform", "soft": "SoftTransform"}.get(
        str(transform).lower(), str(transform))
    state = {k: np.asarray(v) for k, v in state.items()}
    options = {name: h[name] for name in ("apply_cutoff", "use_so3", "edge_irreps", "use_agnostic_product",
                                          "use_last_readout_only", "use_edge_irreps_first", "embedding_specs",
                                          "cueq_config", "use_embedding_readout", "keep_last_layer_irreps")
               if h.get(name) not in (None, False, "None")}
    options.setdefault("apply_cutoff", h.get("apply_cutoff", True))
    options["sh_irreps"] = [(1, _irrep(l, (-1) ** l)) for l in range(int(need("max_ell")) + 1)]
    options["use_sc_first"] = "Residual" in first
    readouts = ["LinearReadoutBlock"] * (num_interactions - 1) + [class_name(h.get("readout_cls", "NonLinearReadoutBlock"))]
    scale = h.get("activation_scale", E3NN_TORCH_ACTIVATION_SCALE.get(gate or "silu"))
    return TorchModel(
        model_class=class_name(h.get("model_class", "ScaleShiftMACE")),
        interaction_classes=[first] + [rest] * (num_interactions - 1),
        readout_classes=readouts,
        atomic_numbers=[int(z) for z in need("atomic_numbers")],
        r_max=float(need("r_max")),
        max_ell=int(need("max_ell")),
        hidden_irreps=parse_irreps(need("hidden_irreps")),
        mlp_irreps=mlp,
        correlation=correlation,
        avg_num_neighbors=[float(need("avg_num_neighbors"))] * num_interactions,
        heads=[str(x) for x in heads],
        gate=gate,
        activation_scale=float(E3NN_TORCH_ACTIVATION_SCALE["silu"] if h.get("activation_scale") is None else h["activation_scale"]),
        readout_activation_scale=None if scale is None else float(scale),
        radial_type={"bessel": "BesselBasis"}.get(str(h.get("radial_type", "bessel")), str(h.get("radial_type"))),
        distance_transform=transform,
        pair_repulsion=bool(h.get("pair_repulsion", False)),
        options=options,
        state=state,
        source=source,
    )


# ---------------------------------------------------------------- checks


def _refuse(model: TorchModel, what: str) -> None:
    raise UnsupportedConfigError(f"{model.source}: unsupported mace-torch model: {what}")


def check_supported(m: TorchModel) -> None:
    """Refuse, by name, every class or option this converter does not reproduce exactly."""
    o = m.options
    if m.model_class not in SUPPORTED_MODELS:
        _refuse(m, f"model class {m.model_class}")
    for name, bad in (("use_so3", True), ("use_agnostic_product", True), ("use_last_readout_only", True),
                      ("use_edge_irreps_first", True), ("use_embedding_readout", True), ("keep_last_layer_irreps", True)):
        if o.get(name) is bad:
            _refuse(m, f"{name}=True")
    if o.get("apply_cutoff") is False:
        _refuse(m, "apply_cutoff=False (the envelope on the radial MLP output, MACE-MH/OMOL)")
    if o.get("edge_irreps") not in (None, False):
        _refuse(m, f"edge_irreps={o['edge_irreps']} (edge irreps other than the hidden irreps, MACE-MH/OMOL)")
    if o.get("embedding_specs") not in (None, False, {}):
        _refuse(m, "embedding_specs (charge/spin embeddings, MACE-OMOL)")
    cueq = o.get("cueq_config")
    if isinstance(cueq, Record) and cueq.state.get("enabled"):
        _refuse(m, "cueq_config enabled (cuequivariance layout: convert with mace-torch's mace_cueq_to_e3nn first)")
    if "product_class" in o:
        _refuse(m, f"product basis {o['product_class']} (cuequivariance/openequivariance layout: convert with "
                   "mace-torch's mace_cueq_to_e3nn first)")
    if m.radial_type != "BesselBasis":
        _refuse(m, f"radial basis {m.radial_type}")
    if m.distance_transform not in (None, "AgnesiTransform", "SoftTransform"):
        _refuse(m, f"distance transform {m.distance_transform}")
    if len(m.interaction_classes) < 2:
        _refuse(m, "a single interaction (its only readout is linear; mace-ase's last readout is non-linear)")
    if m.interaction_classes[0] not in FIRST_INTERACTIONS:
        _refuse(m, f"interaction block {m.interaction_classes[0]} in layer 0")
    density = FIRST_INTERACTIONS[m.interaction_classes[0]][1]
    for k, name in enumerate(m.interaction_classes[1:], start=1):
        if name not in LATER_INTERACTIONS:
            _refuse(m, f"interaction block {name} in layer {k}")
        if LATER_INTERACTIONS[name] != density:
            _refuse(m, f"interaction blocks {m.interaction_classes[0]} and {name} mix two message normalisations")
    expected_readouts = ["LinearReadoutBlock"] * (len(m.interaction_classes) - 1) + ["NonLinearReadoutBlock"]
    if m.readout_classes != expected_readouts:
        _refuse(m, f"readouts {m.readout_classes} (mace-ase reads linear readouts then one NonLinearReadoutBlock)")
    if m.gate != "silu":
        _refuse(m, f"gate={m.gate} (mace-ase uses one activation, silu, for the radial MLP and the readout)")
    if m.readout_activation_scale is not None and m.readout_activation_scale != m.activation_scale:
        _refuse(m, f"readout activation constant {m.readout_activation_scale} differs from the radial MLP's {m.activation_scale}")
    if len(set(m.correlation)) != 1 or not 1 <= m.correlation[0] <= 3:
        _refuse(m, f"correlation {m.correlation} (mace-ase imports one correlation order 1-3 for all layers)")
    if len(set(m.avg_num_neighbors)) != 1:
        _refuse(m, f"avg_num_neighbors differs between layers: {m.avg_num_neighbors}")
    channels = {mul for mul, _ in m.hidden_irreps}
    L = max(ir[0] for _, ir in m.hidden_irreps) if m.hidden_irreps else -1
    natural = [_irrep(l, (-1) ** l) for l in range(L + 1)]
    if len(channels) != 1 or [ir for _, ir in m.hidden_irreps] != natural:
        _refuse(m, f"hidden irreps {'+'.join(f'{mul}x{_irrep_str(ir)}' for mul, ir in m.hidden_irreps)} "
                   "(mace-ase needs C x (0e + 1o + 2e ...) with one channel count C)")
    if L > m.max_ell:
        _refuse(m, f"hidden irreps with l={L} above the harmonics' max_ell={m.max_ell}")
    if [ir for _, ir in m.options["sh_irreps"]] != [_irrep(l, (-1) ** l) for l in range(m.max_ell + 1)]:
        _refuse(m, f"spherical harmonics {m.options['sh_irreps']}")
    if not m.mlp_irreps or any(ir != (0, 1) for _, ir in m.mlp_irreps):
        _refuse(m, f"readout MLP irreps {m.mlp_irreps}")
    if sum(mul for mul, _ in m.mlp_irreps) % len(m.heads):
        _refuse(m, f"readout MLP irreps {m.mlp_irreps} not divisible between {len(m.heads)} heads")


# ---------------------------------------------------------------- the conversion


def select_head(m: TorchModel, head: str | None) -> int:
    if head is None:
        candidates = [h for h in m.heads if h != DEFAULT_HEAD_SKIPPED] or m.heads
        head = candidates[0]
    if head not in m.heads:
        raise UnsupportedConfigError(f"{m.source}: no head named {head!r}; the model's heads are {m.heads}")
    return m.heads.index(head)


def _linear_blocks(flat: np.ndarray, instructions, shapes) -> list[np.ndarray]:
    """Split an e3nn flat weight vector into its per-instruction blocks."""
    flat = np.asarray(flat).reshape(-1)
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.size != sum(sizes):
        raise ArchiveError(f"weight of {flat.size} numbers, expected {sum(sizes)} for instructions {instructions}")
    blocks, start = [], 0
    for shape, size in zip(shapes, sizes):
        blocks.append(flat[start : start + size].reshape(shape))
        start += size
    return blocks


def linear_weights(flat, irreps_in, irreps_out) -> dict[tuple[int, int], np.ndarray]:
    """o3.Linear: {(i_in, i_out): [mul_in, mul_out]} for every pair of equal irreps."""
    instructions = [(i, j) for i, (_, a) in enumerate(irreps_in) for j, (_, b) in enumerate(irreps_out) if a == b]
    shapes = [(irreps_in[i][0], irreps_out[j][0]) for i, j in instructions]
    return dict(zip(instructions, _linear_blocks(flat, instructions, shapes)))


def species_weights(flat, irreps_in, num_species, irreps_out) -> dict[tuple[int, int], np.ndarray]:
    """FullyConnectedTensorProduct(x, one-hot species): {(i_in, i_out): [C_in, S, C_out]}."""
    instructions = [(i, j) for i, (_, a) in enumerate(irreps_in) for j, (_, b) in enumerate(irreps_out) if a == b]
    shapes = [(irreps_in[i][0], num_species, irreps_out[j][0]) for i, j in instructions]
    return dict(zip(instructions, _linear_blocks(flat, instructions, shapes)))


def _model_irreps(config_ir) -> tuple[int, int]:
    return _irrep(config_ir.l, config_ir.p)


def convert(m: TorchModel, head: str | None = None, product_basis: str = "auto") -> tuple[dict, dict, dict]:
    """(MaceConfig fields, params, metadata) for one head of a mace-torch model.

    product_basis: "auto" (symmetric e3nn-jax basis when the file's basis is exact, else the
    file's own), "symmetric", "full" (e3nn-jax bases, weights mapped) or "stored" (the file's).
    """
    import e3nn_jax as e3nn  # noqa: F401  (the model helpers below need it)

    from ..model.config import MaceConfig
    from ..model.mace import input_irreps, interaction_irreps, message_paths, node_irreps

    check_supported(m)
    h = select_head(m, head)
    H = len(m.heads)
    S = len(m.atomic_numbers)
    C = m.hidden_irreps[0][0]
    L = max(ir[0] for _, ir in m.hidden_irreps)
    num_layers = len(m.interaction_classes)
    residual_first, normalization = FIRST_INTERACTIONS[m.interaction_classes[0]]
    order = np.argsort(m.atomic_numbers, kind="stable")  # mace-ase wants elements ascending
    zs = [m.atomic_numbers[i] for i in order]
    if len(set(zs)) != len(zs):
        _refuse(m, f"repeated atomic numbers {m.atomic_numbers}")

    def species_axis(array, axis):
        return np.take(array, order, axis=axis)

    st = m.array
    e0 = st("atomic_energies_fn.atomic_energies")
    e0 = e0 if e0.ndim == 1 else e0[h]
    scale = shift = None
    if m.model_class == "ScaleShiftMACE":
        scale = np.atleast_1d(st("scale_shift.scale"))
        shift = np.atleast_1d(st("scale_shift.shift"))
        scale, shift = float(scale[h if scale.size > 1 else 0]), float(shift[h if shift.size > 1 else 0])
    bessel = st("radial_embedding.bessel_fn.bessel_weights").reshape(-1)
    mlp_sizes = [st(f"interactions.0.conv_tp_weights.layer{i}.weight").shape for i in range(64)
                 if f"interactions.0.conv_tp_weights.layer{i}.weight" in m.state]
    fields: dict[str, Any] = dict(
        atomic_numbers=tuple(zs),
        atomic_energies=tuple(float(x) for x in species_axis(e0, 0)),
        cutoff=m.r_max,
        num_layers=num_layers,
        num_channels=C,
        l_max=m.max_ell,
        node_symmetry=L,
        correlation=m.correlation[0],
        readout_irreps=(f"{sum(mul for mul, _ in m.mlp_irreps) // H}x0e", "0e"),
        num_readout_heads=1,
        num_bessel=int(bessel.size),
        activation="silu",
        activation_scale=float(m.activation_scale),
        bessel_frequencies=tuple(float(x) for x in bessel),
        bessel_prefactor=float(st("radial_embedding.bessel_fn.prefactor")),
        envelope_p=int(round(float(st("radial_embedding.cutoff_fn.p")))),
        radial_mlp_hidden=tuple(int(s[1]) for s in mlp_sizes[:-1]),
        avg_num_neighbors=float(m.avg_num_neighbors[0]),
        scaling_mean=0.0 if shift is None else shift,
        scaling_std=1.0 if scale is None else scale,
        first_layer_residual=residual_first,
        message_normalization=normalization,
    )
    if float(np.asarray(st("radial_embedding.cutoff_fn.p"))) != fields["envelope_p"]:
        _refuse(m, f"non-integer polynomial cutoff exponent {st('radial_embedding.cutoff_fn.p')}")
    for name in ("radial_embedding.bessel_fn.r_max", "radial_embedding.cutoff_fn.r_max"):
        if name in m.state and abs(float(st(name)) - m.r_max) > 1e-6 * m.r_max:
            _refuse(m, f"{name}={float(st(name))} differs from r_max={m.r_max}")
    radii = None
    if m.distance_transform == "AgnesiTransform":
        p = "radial_embedding.distance_transform."
        fields["distance_transform"] = "agnesi"
        fields["distance_transform_params"] = tuple(float(st(p + k)) for k in ("q", "p", "a"))
        radii = st(p + "covalent_radii")
    elif m.distance_transform == "SoftTransform":
        p = "radial_embedding.distance_transform."
        fields["distance_transform"] = "soft"
        fields["distance_transform_params"] = (float(st(p + "alpha")),)
        radii = st(p + "covalent_radii")
    if m.pair_repulsion:
        p = "pair_repulsion_fn."
        zbl_radii = st(p + "covalent_radii")
        if radii is not None and not np.array_equal(radii[zs], zbl_radii[zs]):
            _refuse(m, "the distance transform and ZBL use different covalent radii")
        radii = zbl_radii
        fields["pair_repulsion"] = "zbl"
        fields["pair_repulsion_params"] = tuple(float(x) for x in st(p + "c")) + (
            float(st(p + "a_exp")), float(st(p + "a_prefactor")), float(int(st(p + "p"))))
        # 14.3996 Z_u Z_v is an int64 tensor times a Python float: torch evaluates it in its
        # global default dtype, float32 under mace-torch's calculator.
        fields["pair_repulsion_prefactor_float32"] = True
    if radii is not None:
        fields["covalent_radii"] = tuple(float(radii[z]) for z in zs)

    probe = MaceConfig(**fields)
    layers = []
    sh = m.options["sh_irreps"]
    for k in range(num_layers):
        pre = f"interactions.{k}."
        x_in = [(C, (0, 1))] if k == 0 else list(m.hidden_irreps)
        targets = [(C, ir) for _, ir in sh]  # target irreps C x (0e + 1o + ... + l_max)
        last = k == num_layers - 1
        outs = [(C, (0, 1))] if last else list(m.hidden_irreps)
        layer: dict[str, Any] = {}
        # linear_up: x_in -> x_in
        up = linear_weights(st(pre + "linear_up.weight"), x_in, x_in)
        layer["linear_up"] = {_irrep_str(x_in[i][1]): w for (i, j), w in up.items() if i == j}
        # radial MLP, last layer's columns in mace-ase's path order
        mlp = [st(f"{pre}conv_tp_weights.layer{i}.weight") for i in range(len(mlp_sizes))]
        slots = tp_slots(x_in, sh, targets)
        paths = message_paths(probe, k)
        mace_index = {}
        for ir_out, ir_paths in paths.items():
            for p_idx, path in enumerate(ir_paths):
                key = (_model_irreps(ir_out), "self" if len(path) == 1 else (_model_irreps(path[0]), _model_irreps(path[1])))
                mace_index[key] = (len(mace_index), ir_out, p_idx)
        if len(slots) != len(mace_index):
            _refuse(m, f"layer {k}: {len(slots)} message paths in the file, mace-ase builds {len(mace_index)}")
        last_w = mlp[-1]
        if last_w.shape[1] != len(slots) * C:
            raise ArchiveError(f"{m.source}: {pre}conv_tp_weights has {last_w.shape[1]} outputs, expected {len(slots) * C}")
        new_last = np.zeros_like(last_w)
        slot_position = []  # mace path (ir_out, p) of each torch slot
        for s, (ir_in, ir_sh, ir_out) in enumerate(slots):
            key = (ir_out, "self" if ir_sh == (0, 1) else (ir_in, ir_sh))
            if key not in mace_index:
                _refuse(m, f"layer {k}: message path {_irrep_str(ir_in)} x {_irrep_str(ir_sh)} -> {_irrep_str(ir_out)} has no mace-ase counterpart")
            index, ir_out_model, p_idx = mace_index[key]
            new_last[:, index * C : (index + 1) * C] = last_w[:, s * C : (s + 1) * C]
            slot_position.append((ir_out_model, p_idx))
        layer["radial_mlp"] = mlp[:-1] + [new_last]
        # linear after the sum: rows of each output irrep grouped by mace-ase path
        mid = [(C, ir_out) for _, _, ir_out in slots]  # irreps_mid: sorted, not simplified
        down = linear_weights(st(pre + "linear.weight"), mid, targets)
        linear_down = {}
        for ir_out, ir_paths in paths.items():
            linear_down[str(ir_out)] = np.zeros((len(ir_paths) * C, C), down[next(iter(down))].dtype)
        for (i, j), w in down.items():
            ir_out_model, p_idx = slot_position[i]
            linear_down[str(ir_out_model)][p_idx * C : (p_idx + 1) * C] = w
        layer["linear_down"] = linear_down
        # skip (residual, from the input features) or selector (on the messages)
        residual = k > 0 or residual_first
        if residual:
            sk = species_weights(st(pre + "skip_tp.weight"), x_in, S, outs)
            layer["skip"] = {_irrep_str(x_in[i][1]): species_axis(w, 1) for (i, j), w in sk.items()}
        else:
            sk = species_weights(st(pre + "skip_tp.weight"), targets, S, targets)
            layer["selector"] = {_irrep_str(targets[i][1]): species_axis(w, 1) for (i, j), w in sk.items()}
        if normalization == "density":
            layer["density"] = st(pre + "density_fn.layer0.weight")
        # product basis
        layer["product"], layer_basis = _product_weights(m, k, probe, outs, species_axis, product_basis)
        layer.setdefault("_basis", layer_basis)
        pl = linear_weights(st(f"products.{k}.linear.weight"), outs, outs)
        layer["product_linear"] = {_irrep_str(outs[i][1]): w for (i, j), w in pl.items() if i == j}
        # readout of the chosen head
        if not last:
            w = st(f"readouts.{k}.linear.weight").reshape(C, H)  # C x 0e -> H x 0e (scalars only)
            layer["readout"] = [{"0e": w[:, h : h + 1]}]
        else:
            hidden = sum(mul for mul, _ in m.mlp_irreps)
            per_head = hidden // H
            w1 = st(f"readouts.{k}.linear_1.weight").reshape(C, hidden)
            w2 = st(f"readouts.{k}.linear_2.weight").reshape(hidden, H)
            rows = slice(h * per_head, (h + 1) * per_head)
            layer["readout"] = [{"hidden": {"0e": w1[:, rows]},
                                 "output": {"0e": w2[rows, h : h + 1] / math.sqrt(H)}}]
        layers.append(layer)
    bases = {layer.pop("_basis") for layer in layers}
    fields["stored_product_basis"] = "stored" in bases
    fields["symmetric_tensor_product_basis"] = bases == {"symmetric"}
    params = {"embedding": species_axis(st("node_embedding.linear.weight").reshape(S, C), 0), "layers": layers}
    metadata = {
        "converted_from": "mace-torch",
        "mace_torch_model_class": m.model_class,
        "mace_torch_interactions": list(m.interaction_classes),
        "head": m.heads[h],
        "heads": list(m.heads),
    }
    return fields, params, metadata


def _product_weights(m: TorchModel, layer: int, probe, outs, species_axis, mode: str):
    """{'w{nu}_{ir}': [S, K, C]} (and 'u{nu}_{ir}' for a stored basis) of one layer, and the basis used."""
    from ..model.basis import basis_map, map_weights
    from ..model.mace import product_basis

    st = m.array
    keep = tuple(e3nn_irrep(ir) for _, ir in outs)
    corr = m.correlation[layer]
    file_u, file_w = {}, {}
    for j, (_, ir) in enumerate(outs):
        pre = f"products.{layer}.symmetric_contractions.contractions.{j}."
        for nu in range(1, corr + 1):
            u = st(f"{pre}U_matrix_{nu}")
            if ir == (0, 1):
                u = u[None]  # mace-torch drops the output axis of scalars
            file_u[(nu, ir)] = np.moveaxis(u, 0, -1)  # [D]*nu + [K, d], mace-ase's layout
            name = "weights_max" if nu == corr else f"weights.{corr - nu - 1}"
            file_w[(nu, ir)] = species_axis(st(pre + name), 0)  # [S, K, C]
    exact = True
    maps = {}
    for symmetric in (True, False):
        config = probe.replace(symmetric_tensor_product_basis=symmetric)
        for nu in range(1, corr + 1):
            basis = {_model_irreps(ir): u for ir, _, u in product_basis(config, nu, keep)}
            for (n, ir), u_file in file_u.items():
                if n != nu:
                    continue
                if ir not in basis:
                    if np.any(u_file):
                        _refuse(m, f"layer {layer}: product basis for {_irrep_str(ir)} at order {nu} has no e3nn-jax counterpart")
                    continue
                M, residual = basis_map(u_file, basis[ir], nu, symmetric)
                maps[(symmetric, nu, ir)] = M
                exact = exact and residual <= BASIS_EXACT_TOLERANCE
                if residual > 1e-6:
                    _refuse(m, f"layer {layer}: the product basis of {_irrep_str(ir)} at order {nu} is not spanned by "
                               f"e3nn-jax's (residual {residual:.1e}); was the model built with use_reduced_cg?")
    if mode == "auto":
        mode = "symmetric" if exact else "stored"
    weights = {}
    for (nu, ir), w in file_w.items():
        name = f"{nu}_{_irrep_str(ir)}"
        if (False, nu, ir) not in maps:  # no such product in e3nn-jax's basis (and a zero one in the file)
            continue
        if mode == "stored":
            weights["w" + name] = w
            weights["u" + name] = file_u[(nu, ir)]
        else:
            weights["w" + name] = map_weights(maps[(mode == "symmetric", nu, ir)], w)
    return weights, mode


def e3nn_irrep(ir):
    import e3nn_jax as e3nn

    return e3nn.Irrep(ir[0], ir[1])


# ---------------------------------------------------------------- reading files


def read(path: str | Path, head: str | None = None, product_basis: str = "auto"):
    """A mace-torch model file -> MaceModel (one head: `head`, or the first that is not 'pt_head')."""
    from ..archive import MaceModel
    from ..model.config import MaceConfig
    from ..model.params import check_params

    torch_model = read_model_file(path)
    fields, params, metadata = convert(torch_model, head, product_basis)
    config = MaceConfig(**fields)
    try:
        check_params(config, params)
    except ValueError as error:
        raise ArchiveError(f"{path}: {error}") from None
    return MaceModel(config=config, params=params, metadata=metadata)


def read_model_file(path: str | Path) -> TorchModel:
    """A ``.model`` file (whole model) or a state_dict file with its hyper-parameters beside it."""
    path = Path(path)
    root = read_torch_file(path)
    if isinstance(root, Record):
        return from_module(root, str(path))
    if isinstance(root, dict) and all(isinstance(v, np.ndarray) for v in root.values()):
        hyper = hyperparameters_path(path)
        if hyper is None:
            raise ArchiveError(
                f"{path} holds a state_dict (tensors only); its hyper-parameters are needed beside it as "
                f"{path.with_suffix('.json').name} (the keys of mace-torch's extract_config_mace_model)"
            )
        try:
            hyperparams = json.loads(hyper.read_text())
        except (OSError, ValueError) as error:
            raise ArchiveError(f"{hyper}: cannot read the hyper-parameters ({error})") from None
        return from_state_dict(root, hyperparams, str(path))
    raise ArchiveError(f"{path}: the torch file holds {type(root).__name__}, neither a model nor a state_dict")


def hyperparameters_path(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.exists():
            return candidate
    return None
