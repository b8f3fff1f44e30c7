"""Run every MLIPAudit benchmark that has local inputs on mace-ase, offline; write a table.

    python benchmarks/mlipaudit/run.py                                   # the bundled model
    python benchmarks/mlipaudit/run.py --model tests/data/aspirin-small.zip --model mace-ase-small-xtb
    python benchmarks/mlipaudit/run.py --benchmarks tautomers dihedral_scan --output /tmp/audit
    python benchmarks/mlipaudit/run.py --peer-mlip --v2-archive --report benchmarks/results/mlipaudit.md

For each model this runs MLIPAudit's own command line (``mlipaudit benchmark -m MODEL.py``,
as ``python -m mlipaudit.main``) once, on every benchmark whose input folder exists, with
``HF_HUB_OFFLINE=1`` and the inputs copied into ``OUTPUT/inputs``. MLIPAudit writes its own
files (``OUTPUT/results/<model>/score.json``, ``<benchmark>/result.json``); its command exits 0
even when a benchmark fails, so the status of each benchmark is read from its log
(``OUTPUT/logs/<model>.log``) and result files. A benchmark whose data set is missing from
the inputs (``conformer_selection``'s default Folmsbee set) is reported as such, then run
through MLIPAudit's Python API on the data set that exists (Wiggle150), and its result is
added to the model's score file with MLIPAudit's own writers. The table (benchmark, status,
wall time, score, key metric) goes to ``OUTPUT/report.md`` and ``report.json``, or ``--report``.

Peers on the same weights, side by side (same benchmark code, another implementation):
``--peer-mlip`` runs mlip's own ASE calculator (``mlip_peer.py``); ``--v2-archive`` writes the
model as an mlip v2 archive with mace-ase (``save_archive(..., format="mlip-v2")``) and gives
that zip to MLIPAudit as ``-m <label>-v2-mace.zip``, which MLIPAudit loads with mlip's own v2
MACE class (its path for InstaDeep's models). ``--cache-effect`` runs mace-ase twice on a fresh,
empty persistent compilation cache (``MACE_ASE_COMPILATION_CACHE``): cold, then warm.

The inputs are tiny truncated subsets: the table tests the pipeline and the client contract,
not the accuracy of a model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mace_ase.fileio import atomic_write

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL_FILE = HERE / "model.py"
PEER_FILE = HERE / "mlip_peer.py"  # mlip's ASE calculator on the same weights
DEFAULT_INPUTS = REPO.parent / "shared" / "data" / "mlipaudit_inputs_0.1.8"
BUNDLED = "mace-ase-small-xtb"

# The figure shown for each benchmark: (label, path into result.json, unit); '*' walks a list.
KEY_METRICS = {
    "bond_length_distribution": ("mean bond-length deviation", "avg_deviation", "Å"),
    "conformer_selection": ("MAE", "avg_mae", "kcal/mol"),
    "dihedral_scan": ("MAE", "avg_mae", "kcal/mol"),
    "folding_stability": ("mean Cα RMSD", "avg_rmsd", "Å"),
    "inference_speed": ("forward pass", "structures.*.average_forward_time", "s"),
    "noncovalent_interactions": ("interaction-energy MAE", "mae_interaction_energy_all", "kcal/mol"),
    "nudged_elastic_band": ("converged fraction", "convergence_rate", ""),
    "nve_energy_conservation": ("energy drift", "structure_results.*.drift_slope_ev_per_ps", "eV/ps"),
    "reactivity": ("activation-energy MAE", "mae_activation_energy", "kcal/mol"),
    "reference_geometry_stability": ("mean RMSD", "avg_rmsd", "Å"),
    "ring_planarity": ("deviation MAE", "mae_deviation", "Å"),
    "sampling": ("backbone dihedral RMSD", "rmsd_backbone_total", ""),
    "solvent_density": ("density deviation", "avg_density_deviation", "g/cm³"),
    "solvent_radial_distribution": ("first-peak deviation", "avg_peak_deviation", "Å"),
    "stability": ("exploded frame (-1: none)", "structure_results.*.exploded_frame", ""),
    "tautomers": ("MAE", "mae", "kcal/mol"),
    "water_density": ("density deviation", "density_deviation", "g/cm³"),
    "water_radial_distribution": ("O-O RDF RMSE", "rmse", ""),
}

LOG_LINE = re.compile(r"^\[(?P<time>[\d\- :,]+)\]\[(?P<logger>[\w.]+)\]\[(?P<level>\w+)\] - (?P<message>.*)$")
BENCHMARK_EVENT = re.compile(r"MODEL \S+ - \[\d+/\d+\] BENCHMARK (?P<name>\w+) - (?P<event>.*)$")
# Failures MLIPAudit catches inside a benchmark (one structure, one simulation) and logs without
# failing the benchmark: "Error running inference on system ...", "Error running simulation for
# reaction ...", "Error measuring model throughput ...", mlip's "Simulation exploded ...".
TOP_LEVEL_ERRORS = ("Error running model", "Error analyzing model")
STRUCTURE_ERRORS = ("Error ", "Simulation exploded", "Energy minimization failed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None, metavar="NAME|PATH",
                        help="a registered model name or an archive path (repeatable); default: the bundled model")
    parser.add_argument("--benchmarks", nargs="+", default=None, metavar="NAME",
                        help="benchmark names (default: every benchmark with local inputs)")
    parser.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS,
                        help=f"MLIPAudit 0.1.8 input folder (default: {DEFAULT_INPUTS})")
    parser.add_argument("--output", type=Path, default=None,
                        help="output folder (default: a new temporary folder)")
    parser.add_argument("--run-mode", default="dev", choices=["dev", "fast", "standard"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--peer-mlip", action="store_true",
                        help="also run each model through mlip's own ASE calculator (same weights, side by side)")
    parser.add_argument("--v2-archive", action="store_true",
                        help="also run each model as a mace-ase-written mlip v2 archive through MLIPAudit's own loader "
                             "(-m MODEL-v2-mace.zip: mlip's v2 MACE evaluates it)")
    parser.add_argument("--cache-effect", action="store_true",
                        help="run mace-ase twice on a fresh persistent compilation cache (cold, then warm)")
    parser.add_argument("--accept-license", action="store_true",
                        help="accept the licences of the models given (non-commercial models refuse to load otherwise)")
    parser.add_argument("--report", type=Path, default=None,
                        help="where to write the Markdown table (default OUTPUT/report.md; JSON beside it)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ models and inputs


def model_label(spec: str | None) -> str:
    """Folder name MLIPAudit will use for this model (it takes the model file's stem)."""
    if spec is None:
        return BUNDLED
    label = Path(spec).stem if spec.endswith(".zip") or os.sep in spec else spec
    return re.sub(r"[^\w.-]+", "_", label)


def copy_inputs(source: Path, destination: Path) -> Path:
    if not source.is_dir():
        sys.exit(f"MLIPAudit inputs not found: {source} (pass --inputs; see ../shared/data/mlipaudit_inputs_0.1.8)")
    shutil.copytree(source, destination)
    return destination


def benchmarks_with_inputs(inputs: Path, wanted: list[str] | None):
    """(to run, missing): MLIPAudit's benchmark classes whose input folder exists, and the others."""
    from mlipaudit.benchmarks import BENCHMARK_NAMES, BENCHMARKS

    if wanted:
        unknown = sorted(set(wanted) - set(BENCHMARK_NAMES))
        if unknown:
            sys.exit(f"unknown benchmark(s) {unknown}; MLIPAudit {mlipaudit_version()} has {BENCHMARK_NAMES}")
    selected = [b for b in BENCHMARKS if not wanted or b.name in wanted]
    present = [b for b in selected if (inputs / (b.data_name or b.name)).is_dir()]
    return present, [b for b in selected if b not in present]


def mlipaudit_version() -> str:
    import mlipaudit

    return mlipaudit.__version__


# ------------------------------------------------------------------ running


def environment(spec: str | None, dtype: str, accept_license: bool, compilation_cache: Path | None = None) -> dict:
    env = dict(os.environ)
    if compilation_cache is not None:
        env["MACE_ASE_COMPILATION_CACHE"] = str(compilation_cache)
    env["MACE_ASE_MLIPAUDIT_ACCEPT_LICENSE"] = "1" if accept_license else ""
    env["HF_HUB_OFFLINE"] = "1"  # a missing input folder must not turn into a download attempt
    env["MACE_ASE_MLIPAUDIT_MODEL"] = spec or ""
    env["MACE_ASE_MLIPAUDIT_DTYPE"] = dtype
    return env


# Appended to the runner's copy of model.py (not to model.py): before each of MLIPAudit's
# benchmark messages, one log line with the calculator's cumulative counters, so the log says
# how many model calls, compilations and seconds inside mace-ase each benchmark took.
PROBE = """

import logging as _logging


class _MaceAseProbe(_logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if " BENCHMARK " in message or message.startswith("--- ["):
            timings = getattr(mlipaudit_external_model, "timings", {})
            _logging.getLogger("mace_ase.probe").info(
                "mace-ase probe: calls=%d compilations=%d seconds=%.3f", timings.get("calls", 0),
                getattr(mlipaudit_external_model, "compile_count", -1),  # -1: not counted
                sum(v for k, v in timings.items() if k != "calls"))


_logging.getLogger("mlipaudit").addHandler(_MaceAseProbe())
"""
PROBE_LINE = re.compile(r"mace-ase probe: calls=(\d+) compilations=(-?\d+) seconds=([\d.]+)")


def run_cli(model_file: Path, names: list[str], inputs: Path, results: Path, run_mode: str,
            env: dict, log: Path) -> tuple[float, int, float]:
    """MLIPAudit's command line on one model; its log is teed to `log`.

    Returns wall seconds, exit status and the peak resident memory of the process (GB)."""
    command = [sys.executable, "-m", "mlipaudit.main", "benchmark", "-m", str(model_file), "-i", str(inputs),
               "-o", str(results), "-rm", run_mode, "-lt", "-b", *names]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8", buffering=1) as sink:  # line-buffered: follow it live
        sink.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            sink.write(line)
            if "BENCHMARK" in line or "Error" in line or "Traceback" in line:
                print("   ", line.rstrip()[:200], flush=True)
        _, status, usage = os.wait4(process.pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        print(f"    mlipaudit exited with status {returncode} (see {log})", flush=True)
    return time.perf_counter() - start, returncode, usage.ru_maxrss / 2**20  # Linux: KiB


def last_exception(log: Path) -> str:
    """The final 'SomeError: message' line of a traceback in the log (how the command died)."""
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if re.match(r"^[\w.]+(Error|Exception)\b.*?: ", line)]
    return lines[-1] if lines else "no traceback in the log"


API_SCRIPT = """
import json, logging, runpy, sys, time
from mlipaudit.benchmarks import BENCHMARKS
from mlipaudit.io import (load_score_from_disk, write_benchmark_result_to_disk,
                          write_scores_to_disk, OVERALL_SCORE_KEY_NAME)
from mlipaudit.scoring import compute_model_score
model_file, name, inputs, results, run_mode, kwargs = sys.argv[1:7]
logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
calculator = runpy.run_path(model_file)["mlipaudit_external_model"]
benchmark_class = next(b for b in BENCHMARKS if b.name == name)
start = time.perf_counter()
benchmark = benchmark_class(calculator, data_input_dir=inputs, run_mode=run_mode, **json.loads(kwargs))
benchmark.run_model()
result = benchmark.analyze()
write_benchmark_result_to_disk(name, result, results)
try:
    scores = load_score_from_disk(results)
except FileNotFoundError:
    scores = None
if scores is not None and result.score is not None:
    scores.pop(OVERALL_SCORE_KEY_NAME, None)
    scores[name] = result.score
    scores[OVERALL_SCORE_KEY_NAME] = compute_model_score(scores)
    write_scores_to_disk(scores, results)
timings = getattr(calculator, "timings", {})
print("API_SUMMARY", json.dumps({"wall_s": time.perf_counter() - start,
                                  "compilations": getattr(calculator, "compile_count", None),
                                  "model_calls": timings.get("calls"),
                                  "calculator_s": sum(v for k, v in timings.items() if k != "calls")}))
"""


def run_api(model_file: Path, name: str, inputs: Path, results: Path, run_mode: str, kwargs: dict,
            env: dict, log: Path) -> dict:
    """One benchmark through MLIPAudit's Python API (for data sets the CLI cannot select).

    Returns {"wall_s", "compilations", "model_calls", "calculator_s"} as the run reports them
    (benchmark construction to result)."""
    command = [sys.executable, "-c", API_SCRIPT, str(model_file), name, str(inputs), str(results), run_mode,
               json.dumps(kwargs)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"\n$ MLIPAudit Python API: {name} {kwargs}\n{completed.stdout}{completed.stderr}")
    if completed.returncode != 0:
        raise RuntimeError(f"Python API run of {name} failed (status {completed.returncode}); see {log}")
    summary = [line for line in completed.stdout.splitlines() if line.startswith("API_SUMMARY ")]
    return json.loads(summary[-1].split(" ", 1)[1])


# ------------------------------------------------------------------ reading the log and results


def log_sections(log: Path) -> dict[str, dict]:
    """Per benchmark: start and end time, MLIPAudit's events, errors it swallowed, compilations."""
    sections: dict[str, dict] = {}
    current = None
    last_time = None
    probe = None  # the calculator's cumulative (calls, compilations, seconds), logged just before each event
    for raw in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = LOG_LINE.match(raw)
        if not match:
            continue
        stamp = dt.datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f")
        message = match["message"]
        last_time = stamp
        counters = PROBE_LINE.search(message)
        if counters:
            probe = (int(counters[1]), int(counters[2]), float(counters[3]))
            continue
        event = BENCHMARK_EVENT.search(message)
        if event:
            name, what = event["name"], event["event"]
            if what.startswith("Running") or what.startswith("Skipped"):
                if current is not None and current.get("end") is None:
                    close(current, stamp, probe)
                current = sections.setdefault(name, {"start": stamp, "end": None, "events": [], "errors": [],
                                                     "compilations": 0, "warnings": [], "probe_start": probe})
            if name in sections:
                sections[name]["events"].append(what)
            continue
        if message.startswith("--- [") and "score" in message and current is not None:
            if current["end"] is None:
                close(current, stamp, probe)
            current = None
            continue
        if current is None:
            continue
        if message.startswith(TOP_LEVEL_ERRORS):
            current["errors"].append(message)
        elif message.startswith(STRUCTURE_ERRORS):
            current["structure_errors"] = current.get("structure_errors", []) + [message]
        elif match["level"] in ("WARNING", "ERROR") and match["logger"] != "streamlit.runtime.caching.cache_data_api":
            current["warnings"].append(f"{match['logger']}: {message}")
    if current is not None and current.get("end") is None:
        close(current, last_time, probe)
    return sections


def close(section: dict, stamp, probe) -> None:
    """End a benchmark's section: its wall time, and what the calculator did in it."""
    section["end"] = stamp
    start = section.get("probe_start")
    if start is not None and probe is not None:
        section["calls"], section["compilations"], section["calculator_s"] = (
            probe[0] - start[0], probe[1] - start[1] if start[1] >= 0 else None, probe[2] - start[2])
    else:
        section["calls"] = section["compilations"] = section["calculator_s"] = None


def dig(data, path: str):
    """Values at a dotted path of a result dict; '*' walks a list (or dict values)."""
    values = [data]
    for key in path.split("."):
        nxt = []
        for value in values:
            if key == "*":
                nxt += list(value.values()) if isinstance(value, dict) else list(value or [])
            elif isinstance(value, dict) and key in value:
                nxt.append(value[key])
        values = nxt
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def key_metric(name: str, result: dict | None) -> str:
    if result is None or name not in KEY_METRICS:
        return ""
    label, path, unit = KEY_METRICS[name]
    values = dig(result, path)
    if not values:
        return f"{label}: n/a"
    unit = f" {unit}" if unit else ""
    if len(values) == 1:
        return f"{label} {values[0]:.3g}{unit}"
    return f"{label} " + " / ".join(f"{v:.3g}" for v in values) + unit


def item_failures(result: dict) -> tuple[int, int]:
    """(failed, total) over the per-structure entries of a result that flag failures."""
    failed = total = 0
    for value in result.values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        for item in items:
            if isinstance(item, dict) and "failed" in item:
                total += 1
                failed += bool(item["failed"])
    return failed, total


def status_of(section: dict | None, result: dict | None) -> str:
    if section is None:
        return "not run"
    for event in section["events"]:
        if event.startswith("Skipped"):
            return "skipped: model lacks " + ", ".join(sorted(re.findall(r"'(\w+)'", event)))
    for error in section["errors"]:
        missing = re.search(r"No such file or directory: '([^']+)'", error)
        if missing:
            return f"inputs missing ({Path(missing[1]).name})"
        return "error: " + error.split(": ", 1)[-1][:160]
    if result is None:
        return "no result written"
    if result.get("failed"):
        return "failed (every structure)"
    failed, total = item_failures(result)
    notes = []
    if failed:
        notes.append(f"{failed}/{total} structures failed")
    if section.get("structure_errors"):
        notes.append(f"{len(section['structure_errors'])} errors caught by MLIPAudit")
    if any("Loading in model outputs" in e for e in section["events"]):
        notes.append("reuses another benchmark's model output")
    return "ok" + (f" ({'; '.join(notes)})" if notes else "")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# ------------------------------------------------------------------ report


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(report: dict) -> str:
    lines = [
        f"# MLIPAudit {report['mlipaudit']} on mace-ase ({report['run_mode']} run mode)",
        "",
        f"Run {report['started']} UTC, mace-ase {report['commit']}, {report['machine']}; "
        f"load average before / after: {report['load_before']} / {report['load_after']}.",
        "Inputs: the truncated offline subsets of `../shared/data/mlipaudit_inputs_0.1.8` "
        "(a few structures per benchmark): a smoke run of the pipeline, not a leaderboard entry.",
        "",
    ]
    for model in report["models"]:
        lines += [
            f"## {model['label']}",
            "",
            f"Model `{model['spec'] or BUNDLED + ' (bundled)'}` through {model['calculator']}; MLIPAudit's overall score "
            f"(mean over its 18 benchmarks, 0 for those not run): {fmt(model['overall_score'])}; "
            f"total wall time {model['wall_s']:.0f} s, peak memory {fmt(model.get('peak_rss_gb'), '.1f')} GB.",
            "",
            *([f"**Error**: {model['error']}", ""] if model.get("error") else []),
            "| benchmark | status | wall time (s) | score | key metric | model calls | in the calculator (s) | compilations |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in model["rows"]:
            lines.append(f"| {row['benchmark']} | {row['status']} | {fmt(row['wall_s'], '.1f')} | "
                         f"{fmt(row['score'])} | {row['key_metric']} | {fmt(row['model_calls'], 'd')} | "
                         f"{fmt(row['calculator_s'], '.1f')} | {fmt(row['compilations'], 'd')} |")
        lines.append("")
    for base in dict.fromkeys(model["base"] for model in report["models"]):
        runs = [model for model in report["models"] if model["base"] == base]
        ours = [model for model in runs if model["kind"] == "mace-ase"]
        peers = [model for model in runs if model["kind"] != "mace-ase"]
        if len(ours) == 2:  # --cache-effect: cold, then warm
            lines += cold_and_warm(*ours)
        if ours and peers:
            lines += side_by_side(ours[-1], peers)
    return "\n".join(lines)


def cold_and_warm(cold: dict, warm: dict) -> list[str]:
    """The same mace-ase run on an empty persistent compilation cache, then on the filled one."""
    theirs = {row["benchmark"]: row for row in warm["rows"]}
    lines = [
        f"## {cold['base']}: persistent compilation cache, cold / warm",
        "",
        f"Total wall time {cold['wall_s']:.0f} s / {warm['wall_s']:.0f} s.",
        "",
        "| benchmark | wall time s, cold / warm | in the calculator s, cold / warm | compilations (traces), cold / warm |",
        "|---|---|---|---|",
    ]
    for row in cold["rows"]:
        other = theirs.get(row["benchmark"], {})
        lines.append(f"| {row['benchmark']} | {fmt(row['wall_s'], '.1f')} / {fmt(other.get('wall_s'), '.1f')} | "
                     f"{fmt(row['calculator_s'], '.1f')} / {fmt(other.get('calculator_s'), '.1f')} | "
                     f"{fmt(row['compilations'], 'd')} / {fmt(other.get('compilations'), 'd')} |")
    return lines + [""]


def value_only(metric: str | None, like: str | None) -> str:
    """The peer's key metric without the label the first column already shows."""
    if not metric:
        return "–"
    label = (like or "").rsplit(" ", 2)[0]
    return metric[len(label):].strip() if label and metric.startswith(label) else metric


# Runs of the same weights by other code, shown beside the mace-ase run.
PEER_NAMES = {"mlip": "mlip calc", "v2-zip": "mlip v2 zip"}


def side_by_side(ours: dict, peers: list[dict]) -> list[str]:
    """The same weights through mace-ase and its peers: scores, wall time, time inside the calculator."""
    names = ["mace-ase"] + [PEER_NAMES[peer["kind"]] for peer in peers]
    theirs = [{row["benchmark"]: row for row in peer["rows"]} for peer in peers]
    slash = " / ".join(names)
    lines = [
        f"## {ours['base']}: {', '.join(names)} side by side",
        "",
        f"| benchmark | score {slash} | wall time s, {slash} | in the calculator s, {slash} | key metric {slash} |",
        "|---|---|---|---|---|",
    ]
    for row in ours["rows"]:
        others = [other.get(row["benchmark"], {}) for other in theirs]
        cells = [
            " / ".join([fmt(row["score"])] + [fmt(o.get("score")) for o in others]),
            " / ".join([fmt(row["wall_s"], ".1f")] + [fmt(o.get("wall_s"), ".1f") for o in others]),
            " / ".join([fmt(row["calculator_s"], ".1f")] + [fmt(o.get("calculator_s"), ".1f") for o in others]),
            " / ".join([row["key_metric"] or "–"] + [value_only(o.get("key_metric"), row["key_metric"]) for o in others]),
        ]
        lines.append(f"| {row['benchmark']} | " + " | ".join(cells) + " |")
    return lines + [""]


def fmt(value, spec=".3f"):
    if value is None:
        return "–"
    return format(value, spec)


# ------------------------------------------------------------------ main


def write_v2_archive(spec: str | None, path: Path, accept_license: bool) -> Path:
    """The model as an mlip v2 archive written by mace-ase (the licence gate applies, and the
    archive keeps the model's licence metadata)."""
    from mace_ase.archive import save_archive
    from mace_ase.weights import load_model

    return save_archive(load_model(spec, accept_license=accept_license or None), path, format="mlip-v2")


def audit_or_record(spec, args, output, inputs, present, missing, kind="mace-ase", suffix="", compilation_cache=None):
    """audit_model, or a record of why it could not run (the other models' results are kept)."""
    try:
        return audit_model(spec, args, output, inputs, present, missing, kind, suffix, compilation_cache)
    except Exception as error:  # noqa: BLE001 - reported in the table, never lost
        label = model_label(spec) + {"mace-ase": suffix, "mlip": "-mlip", "v2-zip": "-v2-mace"}[kind]
        return {"label": label, "base": model_label(spec), "kind": kind, "spec": spec, "calculator": kind,
                "wall_s": 0.0, "peak_rss_gb": None, "error": f"{type(error).__name__}: {error}", "overall_score": None,
                "scores": {}, "rows": []}


def audit_model(spec, args, output: Path, inputs: Path, present, missing, kind: str = "mace-ase",
                suffix: str = "", compilation_cache: Path | None = None) -> dict:
    """One model through `mlipaudit benchmark`: kind "mace-ase" (model.py), "mlip" (mlip_peer.py)
    or "v2-zip" (a mace-ase-written v2 archive, evaluated by mlip's v2 MACE inside MLIPAudit)."""
    label = model_label(spec) + {"mace-ase": suffix, "mlip": "-mlip", "v2-zip": "-v2-mace"}[kind]
    # MLIPAudit names the results folder after the model file's stem.
    model_file = output / "models" / (f"{label}.zip" if kind == "v2-zip" else f"{label}.py")
    model_file.parent.mkdir(parents=True, exist_ok=True)
    if kind == "v2-zip":
        write_v2_archive(spec, model_file, args.accept_license)  # no probe: mlip's ForceField has no counters
    else:
        source = PEER_FILE if kind == "mlip" else MODEL_FILE
        model_file.write_text(source.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    results = output / "results"
    log = output / "logs" / f"{label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = environment(spec, args.dtype, args.accept_license, compilation_cache)

    print(f"== {label}: {len(present)} benchmark(s) through `mlipaudit benchmark`", flush=True)
    wall, returncode, peak_rss_gb = run_cli(model_file, [b.name for b in present], inputs, results, args.run_mode, env, log)
    sections = log_sections(log)
    error = f"mlipaudit exited with status {returncode}: {last_exception(log)}" if returncode else None
    died = "not run (mlipaudit stopped: see the error above)" if error else None

    rows, extra = [], []
    for benchmark in present:
        section = sections.get(benchmark.name)
        result = read_json(results / label / benchmark.name / "result.json")
        status = died if died and section is None else status_of(section, result)
        if section is not None and section["errors"] and status.startswith("inputs missing"):
            result = None  # a result.json there would be stale, from an earlier run
        rows.append(row(benchmark.name, status, section, result))
        if benchmark.name == "conformer_selection" and status.startswith("inputs missing"):
            extra.append(benchmark)
    for benchmark in missing:
        rows.append(row(benchmark.name, f"inputs missing (no folder {benchmark.data_name or benchmark.name}/)",
                        None, None))

    # conformer_selection: the CLI can only run its default data set; Wiggle150 is local.
    for benchmark in extra:
        if not (inputs / benchmark.name / "wiggle150_dataset.json").exists():
            continue
        print(f"== {label}: conformer_selection on Wiggle150 through the Python API", flush=True)
        try:
            api = run_api(model_file, benchmark.name, inputs, results / label, args.run_mode,
                          {"dataset": "wiggle150"}, env, log)
            result = read_json(results / label / benchmark.name / "result.json")
            status = "ok (Wiggle150 data set, Python API)" if result and not result.get("failed") else \
                "failed (Wiggle150 data set, Python API)"
            rows.append(row("conformer_selection (Wiggle150)", status, None, result, api["wall_s"],
                            result_name=benchmark.name, api=api))
            wall += api["wall_s"]
        except RuntimeError as error:
            rows.append(row("conformer_selection (Wiggle150)", f"error: {error}", None, None))

    scores = read_json(results / label / "score.json") or {}
    calculator = {"mace-ase": f"mace-ase MaceCalculator ({args.dtype})",
                  "mlip": "mlip MLIPForceFieldASECalculator (float32)",
                  "v2-zip": "mlip 0.2.5's v2 MACE (mlip.models.mace) loaded by MLIPAudit from the v2 archive mace-ase "
                            "wrote (float32)"}[kind]
    if compilation_cache is not None:
        calculator += f", persistent compilation cache {compilation_cache}"
    return {"label": label, "base": model_label(spec), "kind": kind, "spec": spec, "calculator": calculator, "wall_s": wall, "peak_rss_gb": peak_rss_gb, "log": str(log),
            "error": error,
            "results": str(results / label), "overall_score": scores.get("overall_score"), "scores": scores,
            "rows": rows}


def row(name, status, section, result, wall=None, result_name=None, api=None):
    no_work = status.startswith(("skipped", "inputs missing", "not run"))
    if wall is None and not no_work and section is not None and section.get("end") is not None:
        wall = (section["end"] - section["start"]).total_seconds()
    if no_work:
        section = None
    return {
        "benchmark": name,
        "status": status,
        "wall_s": wall,
        "score": (result or {}).get("score"),
        "key_metric": key_metric(result_name or name, result),
        "compilations": (section or {}).get("compilations", (api or {}).get("compilations")),
        "model_calls": (section or {}).get("calls", (api or {}).get("model_calls")),
        "calculator_s": (section or {}).get("calculator_s", (api or {}).get("calculator_s")),
        "errors_caught": (section or {}).get("structure_errors", []),
        "warnings": (section or {}).get("warnings", []),
    }


def main(argv=None):
    args = parse_args(argv)
    output = args.output or Path(tempfile.mkdtemp(prefix="mlipaudit-"))
    output.mkdir(parents=True, exist_ok=True)
    if (output / "inputs").exists():
        shutil.rmtree(output / "inputs")  # always a fresh copy of the inputs
    inputs = copy_inputs(args.inputs.resolve(), output / "inputs")
    present, missing = benchmarks_with_inputs(inputs, args.benchmarks)
    specs = args.model or [None]

    report = {
        "mlipaudit": mlipaudit_version(),
        "run_mode": args.run_mode,
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "machine": machine(),
        "load_before": load_average(),
        "inputs": str(args.inputs),
        "output": str(output),
        "models": [],
    }
    for spec in specs:
        if args.cache_effect:  # a fresh cache: the first run compiles and stores, the second loads
            cache = output / "jax-compilation-cache" / model_label(spec)
            shutil.rmtree(cache, ignore_errors=True)
            for suffix in ("-cold-cache", "-warm-cache"):
                report["models"].append(audit_or_record(spec, args, output, inputs, present, missing, suffix=suffix,
                                                    compilation_cache=cache))
        else:
            report["models"].append(audit_or_record(spec, args, output, inputs, present, missing))
        if args.peer_mlip:
            report["models"].append(audit_or_record(spec, args, output, inputs, present, missing, kind="mlip"))
        if args.v2_archive:
            report["models"].append(audit_or_record(spec, args, output, inputs, present, missing, kind="v2-zip"))
    report["load_after"] = load_average()

    report_md = args.report or output / "report.md"
    report_md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(report_md, markdown(report) + "\n")
    atomic_write(report_md.with_suffix(".json"), json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report))
    print(f"\nMLIPAudit results: {output / 'results'}\nlogs: {output / 'logs'}\ntable: {report_md}")


if __name__ == "__main__":
    main()
