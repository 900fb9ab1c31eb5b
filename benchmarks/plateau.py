"""The plateau rule (``--stop-on-plateau N``) judged offline on the ``log.csv`` of real segmentation runs.

For each log and each window N the script replays the figure the rule watches, epoch by epoch, and says where the
rule would have stopped the run: the epoch, the iterations done by then, the share of the run's iterations saved,
the learning rate there, and the figure at the stop against the figure at the run's end. The figure is what the run
feeds the rule: the smoothed validation pseudo-Dice (``dice_ema``), or the negated training loss for runs without
validation cases (``--fold all``). The former best-so-far rule (no gain over 0.002 for N epochs) is shown beside it.
Per log it also prints the figure at a quarter, half, three quarters and the end of the run with the seconds spent,
a coarse curve of accuracy against training time.

Run it from the project's root::

    python benchmarks/plateau.py                      # every segmentation log.csv under benchmarks/.work
    python benchmarks/plateau.py path/to/log.csv ...  # or these logs (or run folders)
    python benchmarks/plateau.py --windows 5 10 --min-delta 0.002
    python benchmarks/plateau.py --train-loss         # the figure of runs without validation cases

``--confirm N`` instead trains the CT lung-tumour patches (``MSD_Lung_2mm_patches``, fold 0, seed 0, imported into
``benchmarks/.work/plateau/ws``) for the iterations a 30-minute budget gives on the 2-core machine (192 epochs of
250) with ``--stop-on-plateau N`` on one thread, and reports the iterations, the seconds and the validation Dice at
the stop, to compare with ``benchmarks/segmentation_2d.py lung``'s figure.

Without logs (or, for ``--confirm``, without ``../shared/data``) it says so and exits 0. Prints a table and one
``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, emit_json, machine_and_date, shared_data

WORK = REPO_ROOT / "benchmarks" / ".work"
CONFIRM_WS = WORK / "plateau" / "ws"


def find_logs() -> list[Path]:
    """The segmentation runs' ``log.csv`` under ``benchmarks/.work`` (other tasks' logs are left out)."""
    return sorted(p for p in WORK.glob("**/runs/*/*/*/log.csv") if _is_segmentation(p))


def _is_segmentation(log: Path) -> bool:
    training = log.parent / "training.json"
    if training.exists():
        try:
            return json.loads(training.read_text(encoding="utf-8")).get("task", "segmentation") == "segmentation"
        except (OSError, ValueError):
            pass
    with log.open(encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return "dice_ema" in header or "val_auc" not in header


def read_log(log: Path, train_loss: bool = False) -> dict[str, Any]:
    """The per-epoch figure the rule watches (``train_loss``: the negated training loss, as without validation
    cases), with the iterations, seconds and learning rate of each epoch."""
    with log.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def number(row: dict[str, str], key: str) -> float:
        try:
            return float(row.get(key) or "nan")
        except ValueError:
            return float("nan")

    validated = not train_loss and any(not math.isnan(number(r, "dice_ema")) for r in rows)
    figure = [number(r, "dice_ema") if validated else -number(r, "train_loss") for r in rows]
    try:  # benchmarks/.work/seg2d/ws/runs/lung/2d/fold_0 -> seg2d:lung/2d/fold_0
        name = log.parent.resolve().relative_to(WORK.resolve()).as_posix()
        name = name.replace("/ws/runs/", ":").replace("/runs/", ":")
    except ValueError:
        name = log.parent.name
    iterations = [int(number(r, "iteration")) for r in rows]
    planned = iterations[-1] if iterations else 0
    outcome = log.parent / "outcome.json"
    if outcome.exists():  # a run stopped early (by the rule itself) saved against what it had planned
        try:
            record = json.loads(outcome.read_text(encoding="utf-8"))
            planned = max(planned, int(record.get("budget_iterations") or record.get("planned_iterations") or 0))
        except (OSError, ValueError):
            pass
    return {
        "log": str(log),
        "planned_iterations": planned,
        "run": name,
        "figure_name": "dice_ema" if validated else "-train_loss",
        "figure": figure,
        "iteration": iterations,
        "elapsed_s": [number(r, "elapsed_s") for r in rows],
        "lr": [number(r, "lr") for r in rows],
    }


def former_rule_epoch(curve: list[float], patience: int, min_delta: float) -> int | None:
    """The best-so-far rule the window rule replaced: no gain over ``min_delta`` for ``patience`` epochs."""
    best, stale = -math.inf, 0
    for epoch, value in enumerate(curve):
        if not math.isnan(value) and value > best + min_delta:
            best, stale = value, 0
        else:
            stale += 1
        if patience > 0 and stale >= patience:
            return epoch
    return None


def judge(run: dict[str, Any], windows: list[int], min_delta: float) -> list[dict[str, Any]]:
    """One row per rule and window: where it stops ``run`` and what the stop costs."""
    from vesalius.training.plateau import plateau_epoch

    curve, iterations, end = run["figure"], run["iteration"], run["planned_iterations"]
    rows = []
    for rule, stop_at in (("window", plateau_epoch), ("former", former_rule_epoch)):
        for n in windows:
            stop = stop_at(curve, n, min_delta)
            at = len(curve) - 1 if stop is None else stop
            rows.append(
                {
                    "run": run["run"],
                    "rule": rule,
                    "n": n,
                    "epochs": len(curve),
                    "planned_iterations": end,
                    "stop_epoch": stop,
                    "stop_iteration": iterations[at] if stop is not None else None,
                    "saved": _saved(stop, iterations, end),
                    "lr_at_stop": run["lr"][at] if stop is not None else None,
                    "figure_at_stop": round(curve[at], 4),
                    "figure_at_end": round(curve[-1], 4),
                    "best_figure": round(max(v for v in curve if not math.isnan(v)), 4),
                }
            )
    return rows


def _saved(stop: int | None, iterations: list[int], planned: int) -> float | None:
    """The share of the planned iterations a stop at epoch ``stop`` saves; ``None`` (unknown) where the rule did not
    stop within a log that ends before the plan (a run already stopped early)."""
    if not planned:
        return 0.0
    if stop is None:
        return 0.0 if iterations[-1] >= planned else None
    return round(1 - iterations[stop] / planned, 3)


def curve_points(run: dict[str, Any]) -> list[dict[str, float]]:
    """The figure at about a quarter, half, three quarters and the end of the run's iterations, with the seconds."""
    iterations, points = run["iteration"], []
    if not iterations:
        return points
    for share in (0.25, 0.5, 0.75, 1.0):
        at = min(range(len(iterations)), key=lambda i: abs(iterations[i] - share * iterations[-1]))
        points.append(
            {
                "iteration": iterations[at],
                "elapsed_s": run["elapsed_s"][at],
                "lr": run["lr"][at],
                "figure": round(run["figure"][at], 4),
            }
        )
    return points


def offline(paths: list[Path], windows: list[int], min_delta: float, train_loss: bool = False) -> int:
    logs = [p / "log.csv" if p.is_dir() else p for p in paths] if paths else find_logs()
    logs = [p for p in logs if p.exists()]
    if not logs:
        print("no log.csv found: give logs on the command line, or run a segmentation benchmark first")
        return 0
    runs = [read_log(p, train_loss) for p in logs]
    rows = [row for run in runs for row in judge(run, windows, min_delta)]
    width = max(len(run["run"]) for run in runs)
    print(f"plateau rule on {len(runs)} logs (min_delta {min_delta}); window: mean of the last N epochs against the")
    print("N before, judged from epoch 3N; former: no gain over min_delta for N epochs")
    print(
        f"{'run':<{width}} {'rule':<7} {'N':>3} {'epochs':>6} {'planned it':>10} {'stop':>5} {'iteration':>9} "
        f"{'saved':>6} "
        f"{'lr at stop':>10} {'at stop':>8} {'at end':>8} {'best':>8}"
    )
    for r in rows:
        stop = "-" if r["stop_epoch"] is None else str(r["stop_epoch"])
        it = "-" if r["stop_iteration"] is None else str(r["stop_iteration"])
        lr = "-" if r["lr_at_stop"] is None else f"{r['lr_at_stop']:.2e}"
        saved = "?" if r["saved"] is None else f"{r['saved']:.0%}"
        print(
            f"{r['run']:<{width}} {r['rule']:<7} {r['n']:>3} {r['epochs']:>6} {r['planned_iterations']:>10} "
            f"{stop:>5} {it:>9} "
            f"{saved:>6} "
            f"{lr:>10} {r['figure_at_stop']:>8.4f} {r['figure_at_end']:>8.4f} {r['best_figure']:>8.4f}"
        )
    print("figure against training time (a quarter, half, three quarters, all of each run's iterations):")
    curves = {}
    for run in runs:
        points = curve_points(run)
        curves[run["run"]] = points
        text = "  ".join(f"{p['iteration']} it {p['elapsed_s']:.0f} s {p['figure']:.4f}" for p in points)
        print(f"  {run['run']:<{width}} {run['figure_name']:<11} {text}")
    emit_json(
        {
            "benchmark": "plateau",
            **machine_and_date(),
            "min_delta": min_delta,
            "windows": windows,
            "logs": [run["log"] for run in runs],
            "rows": rows,
            "curves": curves,
        }
    )
    return 0


def _lung_figures(result: Any) -> dict[str, Any]:
    from benchmarks.segmentation_2d import _lung_extras

    summary = result.validation or {}
    extras = _lung_extras(result.run_dir, list(summary.get("cases", {})))
    return {
        "iterations": result.iterations,
        "epochs": result.epochs,
        "train_s": round(result.elapsed_s, 1),
        "stopped": result.stopped,
        "dice": summary.get("dice", {}),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in extras.items()},
    }


def confirm(patience: int, epochs: int, threads: int, decay: int, reuse: bool) -> int:
    """Train the CT lung-tumour patches with the rule on and report where it stopped and the validation Dice; with
    ``decay`` epochs, then train on from the stop's weights with the learning rate the schedule had there, decaying
    to 0 over those epochs (a short final phase, as a loop could do on the plateau), and report that Dice too."""
    source = shared_data("MSD_Lung_2mm_patches")
    if source is None:
        print("skipped: ../shared/data/MSD_Lung_2mm_patches is absent")
        return 0
    import shutil

    import vesalius

    run_dir = CONFIRM_WS / "runs" / "lung" / "2d" / "fold_0"
    figures: dict[str, Any] = {"patience": patience, "planned_iterations": epochs * 250, "threads": threads}
    if reuse and (run_dir / "outcome.json").exists():
        outcome = json.loads((run_dir / "outcome.json").read_text(encoding="utf-8"))
        result: Any = SimpleNamespace(
            run_dir=run_dir,
            **{k: outcome[k] for k in ("epochs", "iterations", "elapsed_s", "stopped")},
            validation=vesalius.validate(run_dir, CONFIRM_WS),
        )
    else:
        if not (CONFIRM_WS / "datasets" / "lung" / "dataset.json").exists():
            vesalius.import_dataset(source, "lung", workspace=CONFIRM_WS)
        vesalius.plan("lung", workspace=CONFIRM_WS, device="cpu", time_budget_s=1800)
        vesalius.preprocess("lung", "2d", workspace=CONFIRM_WS)
        result = vesalius.train(
            "lung",
            "2d",
            0,
            workspace=CONFIRM_WS,
            report=False,
            seed=0,
            force=True,
            threads=threads,
            epochs=epochs,
            stop_on_plateau=patience,
        )
    figures["stop"] = _lung_figures(result)
    print(
        f"lung fold 0 with --stop-on-plateau {patience}: {result.iterations} of {epochs * 250} iterations "
        f"({result.epochs} epochs) in {result.elapsed_s:.0f} s, stopped by {result.stopped}; "
        f"Dice {figures['stop']['dice']}"
    )
    if decay > 0:
        with (run_dir / "log.csv").open(encoding="utf-8") as f:
            lr = float(list(csv.DictReader(f))[-1]["lr"])
        second = CONFIRM_WS.parent / "ws_decay"
        shutil.rmtree(second, ignore_errors=True)
        shutil.copytree(CONFIRM_WS, second, ignore=shutil.ignore_patterns("runs"))
        shutil.copy(run_dir / "checkpoint_final.pt", CONFIRM_WS.parent / "stop_weights.pt")
        tail = vesalius.train(
            "lung",
            "2d",
            0,
            workspace=second,
            report=False,
            seed=0,
            force=True,
            threads=threads,
            epochs=decay,
            lr=lr,
            initial_weights=str(CONFIRM_WS.parent / "stop_weights.pt"),
        )
        figures["decay"] = {"epochs": decay, "lr_from": lr, **_lung_figures(tail)}
        print(
            f"  then a final decay from lr {lr:.2e} to 0 over {tail.iterations} iterations ({tail.elapsed_s:.0f} s): "
            f"Dice {figures['decay']['dice']}; {result.iterations + tail.iterations} iterations in all"
        )
    emit_json({"benchmark": "plateau_confirm", **machine_and_date(), **figures})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="*", type=Path, help="log.csv files or run folders (default: all found)")
    parser.add_argument("--windows", type=int, nargs="+", default=[3, 5, 8, 10, 15], help="values of N to judge")
    parser.add_argument("--min-delta", type=float, default=0.002)
    parser.add_argument("--train-loss", action="store_true", help="judge the negated training loss (--fold all)")
    parser.add_argument("--confirm", type=int, metavar="N", help="train the CT patches with --stop-on-plateau N")
    parser.add_argument("--epochs", type=int, default=192, help="--confirm: planned epochs of 250 iterations")
    parser.add_argument("--threads", type=int, default=1, help="--confirm: torch threads")
    parser.add_argument("--decay", type=int, default=0, help="--confirm: then a final decay of this many epochs")
    parser.add_argument("--reuse", action="store_true", help="--confirm: take the finished run instead of training")
    args = parser.parse_args()
    if args.confirm is not None:
        return confirm(args.confirm, args.epochs, args.threads, args.decay, args.reuse)
    return offline(args.logs, args.windows, args.min_delta, args.train_loss)


if __name__ == "__main__":
    raise SystemExit(main())
