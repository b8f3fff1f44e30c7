"""Paper check: MACE on rMD17 aspirin with mace_ase.training, on a CPU budget.

The MACE paper (arXiv 2206.07697, Table 1) trains on 950 frames of rMD17 aspirin
(50 more for validation) and reports test MAEs of 2.2 meV (energy) and 6.6 meV/Å
(forces) with a 256-channel, l_max=3, correlation-3 model trained for days on a GPU.
This script trains a much smaller model for a fixed CPU wall-clock budget on the same
split sizes (950 train / 50 validation frames of rmd17_aspirin_train_01.npz, seeded)
and reports the EMA model's MAE on all 1000 frames of rmd17_aspirin_test_01.npz.

    python benchmarks/rmd17_aspirin.py --budget-s 1800             # ~30 min on 2 CPU cores
    python benchmarks/rmd17_aspirin.py --budget-s 600 --channels 16  # a quick look

Writes <output>/result.json, metrics.jsonl, metrics.png and model.zip.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "rmd17"
PAPER = {"energy_mae_meV": 2.2, "forces_mae_meV_A": 6.6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=1800, help="wall-clock budget of the training (s)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--swap-epoch", type=int, default=None, help="default: 60%% of --epochs")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--l-max", type=int, default=2)
    parser.add_argument("--correlation", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "build" / "rmd17-aspirin"))
    args = parser.parse_args(argv)

    from mace_ase.archive import load_archive
    from mace_ase.training import TrainSettings, read_rmd17, train
    from mace_ase.training.trainer import evaluate_model

    steps_per_epoch = -(-950 // args.batch_size)
    settings = TrainSettings(
        train_file=str(DATA / "rmd17_aspirin_train_01.npz"), valid_fraction=0.05, seed=args.seed,
        num_channels=args.channels, l_max=args.l_max, node_symmetry=args.l_max, correlation=args.correlation,
        readout_irreps=("16x0e", "0e"), num_bessel=8, radial_mlp_hidden=(64, 64, 64), cutoff=5.0,
        atomic_energies="average", scaling="rms_forces",
        batch_size=args.batch_size, nodes_per_graph=21, edges_per_graph=420,
        epochs=args.epochs, swap_epoch=args.swap_epoch if args.swap_epoch is not None else int(0.6 * args.epochs),
        init_learning_rate=0.001, peak_learning_rate=0.01, final_learning_rate=0.0005,
        warmup_steps=steps_per_epoch, transition_steps=args.epochs * steps_per_epoch,
        ema_decay=0.99, max_wall_s=args.budget_s, output_dir=args.output, model_name="rmd17-aspirin-check",
    )
    out = Path(args.output)
    if (out / "checkpoint.npz").exists():
        raise SystemExit(f"{out} holds a previous run; remove it or pass --output")
    start = time.perf_counter()
    summary = train(settings, log=lambda line: print(line, flush=True))
    test = read_rmd17(DATA / "rmd17_aspirin_test_01.npz")
    metrics = evaluate_model(load_archive(summary["archive"]), test)
    result = {
        "command": "python benchmarks/rmd17_aspirin.py " + " ".join(argv or __import__("sys").argv[1:]),
        "train_frames": 950, "valid_frames": 50, "test_frames": len(test),
        "epochs_completed": summary["epochs_completed"], "training_wall_s": round(summary["wall_s"], 1),
        "total_wall_s": round(time.perf_counter() - start, 1),
        "model": {"num_channels": args.channels, "l_max": args.l_max, "correlation": args.correlation, "num_layers": 2},
        "test": {k: round(v, 3) for k, v in metrics.items()},
        "validation_last_epoch": {k: round(v, 3) for k, v in summary["metrics"].items() if k.startswith("valid_")},
        "paper_table1": PAPER,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
