"""Per-epoch metrics: a JSON-lines file and a PNG of the curves (both replaced atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_save, atomic_write


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path, rows: list[dict]) -> None:
    """Rewrite the whole file (small), atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def plot_metrics(rows: list[dict], path) -> None:
    """Loss and validation errors against the epoch.

    Drawn on a ``Figure`` with the Agg canvas directly: pyplot's global state (and a
    notebook user's backend) is never touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    axes[0].set_ylabel("weighted loss")
    axes[1].plot(epochs, [r["valid_energy_per_atom_mae_meV"] for r in rows], label="MAE")
    axes[1].plot(epochs, [r["valid_energy_per_atom_rmse_meV"] for r in rows], label="RMSE")
    axes[1].set_ylabel("validation energy error (meV/atom)")
    axes[2].plot(epochs, [r["valid_forces_mae_meV_A"] for r in rows], label="MAE")
    axes[2].plot(epochs, [r["valid_forces_rmse_meV_A"] for r in rows], label="RMSE")
    axes[2].set_ylabel("validation force error (meV/Å)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
