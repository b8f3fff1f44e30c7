"""Render benchmarks/results/results.json as a Markdown report and a plot.

    python benchmarks/report.py     # re-render without re-running
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM_NAMES = {"aspirin": "aspirin (21)", "cluster": "organic cluster (114)", "water": "water box (1,029)"}


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


def _latest(runs, section, label=""):
    """The newest run with this label that has rows of this section."""
    for run in reversed(runs):
        if run.get("label", "") == label and _rows(run, section):
            return run
    return None


def inference_table(run) -> list[str]:
    rows = _rows(run, "inference")
    out = [
        "| system | dtype | mace-ase ms/call | mlip ms/call | mace-torch ms/call | mlip / mace-ase | mace-torch / mace-ase "
        "| first call s (mace-ase / mlip / mace-torch) | peak RSS GB (mace-ase / mlip / mace-torch) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system in dict.fromkeys(r["system"] for r in rows):
        for dtype in dict.fromkeys(r["dtype"] for r in rows if r["system"] == system):
            cells = {impl: _find(rows, impl=impl, system=system, dtype=dtype) for impl in ("mace-ase", "mlip", "mace-torch")}
            ours = cells["mace-ase"]

            def ratio(impl):
                peer = cells[impl]
                if peer is None or ours is None or ours["status"] != "ok":
                    return "–"
                if peer["status"] != "ok":
                    return peer["status"]
                return f"**{peer['median_s'] / ours['median_s']:.2f}×**"

            out.append(
                f"| {SYSTEM_NAMES.get(system, system)} | {dtype} | "
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
    out = ["| mace-ase version | system | dtype | ms/call | peak RSS GB | first call s | load avg |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        label = run.get("label") or f"final ({run['date']})"
        for r in _rows(run, "inference"):
            if r["impl"] != "mace-ase":
                continue
            out.append(
                f"| {label} | {SYSTEM_NAMES.get(r['system'], r['system'])} | {r['dtype']} | {_cell(r, 'median_s', 1e3)} "
                f"| {_cell(r, 'peak_rss_gb', digits=2)} | {_cell(r, 'first_call_s', digits=2)} | {r['loadavg_1min']:.1f} |"
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
    out = ["| implementation | s/step (median) | first step s | peak RSS GB | first loss |", "|---|---|---|---|---|"]
    rows = _rows(run, "training")
    for r in rows:
        out.append(f"| {r['impl']} | {_cell(r, 'median_step_s')} | {_cell(r, 'first_step_s')} | {_fmt(r.get('peak_rss_gb'), digits=3)} | {_cell(r, 'loss', digits=8)} |")
    ours, peer = _find(rows, impl="mace-ase"), _find(rows, impl="mlip")
    if ours and peer and ours["status"] == peer["status"] == "ok":
        out.append(f"\nmlip / mace-ase step time: **{peer['median_step_s'] / ours['median_step_s']:.2f}×**")
    return out


def startup_table(run) -> list[str]:
    out = ["| compilation cache | first energy+forces call s | construct + first call s |", "|---|---|---|"]
    for r in _rows(run, "startup"):
        out.append(f"| {r['cache']} | {_cell(r, 'first_call_s', digits=3)} | {_cell(r, 'construct_and_first_call_s', digits=3)} |")
    return out


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
    sections = [
        ("Inference: energy + forces through each ASE calculator", "inference", inference_table),
        ("First call with the persistent compilation cache (mace-ase, aspirin, float32, fresh process each)", "startup", startup_table),
        ("MD: Langevin, 0.5 fs, 300 K, float32", "md", md_table),
        ("Scaling: water boxes at 1 g/cm³, mace-ase float32", "scaling", scaling_table),
        ("Training step: 64 aspirin frames (card batch shape), energy + force loss, Adam", "training", training_table),
    ]
    for title, section, table in sections:
        run = _latest(runs, section)
        if run is None:
            continue
        lines += [f"## {title}", "", f"Run of {run['date']}.", ""] + table(run) + [""]
    lines += ["## mace-ase before and after each optimisation", ""] + before_after_table(runs) + [""]
    (directory / "README.md").write_text("\n".join(lines))
    plot(runs, directory / "scaling.png")


if __name__ == "__main__":
    results = HERE / "results"
    write(json.loads((results / "results.json").read_text()), results)
    print((results / "README.md").read_text())
    sys.exit(0)
