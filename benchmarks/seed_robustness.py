"""Train NiN for several seeds and report which runs learn and which collapse.

Each seed trains one recipe's quick CPU profile (``nh.quick_cpu_profile``) from scratch:
it changes the initial weights, the subset of images and the batch order. A run counts
as learned when its final test accuracy is above ``--threshold``, and as collapsed when
training stopped with ``TrainingCollapsed`` (every logit zero) or ended at chance level.

Example, the figures recorded in docs/benchmarks.md:
    python benchmarks/seed_robustness.py --recipe improved --seeds 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from full_training import check_device, write_json  # noqa: E402

import nin_helpers as nh  # noqa: E402

RECIPES = {"lesson": nh.LESSON_RECIPE, "improved": nh.IMPROVED_RECIPE}
CHANCE = 0.1


def run_seed(data: nh.FashionMNISTData, recipe: nh.Recipe, seed: int, device: str) -> dict:
    """Train one seed; return its final test accuracy and whether it collapsed."""
    model = nh.build_nin(recipe, seed=seed)
    started = time.perf_counter()
    try:
        history = nh.train(model, data, recipe, device, seed=seed, progress=False)
        test_acc = history[-1]["test_acc"]
        # A run that never left chance level collapsed too, even if not every logit hit 0.
        collapsed = test_acc <= CHANCE + 0.02
        stopped = None
    except nh.TrainingFailed as error:
        # TrainingCollapsed or TrainingDiverged: both end the run early, and the next seed still runs.
        history = error.history
        test_acc = history[-1]["test_acc"] if history else CHANCE
        collapsed = isinstance(error, nh.TrainingCollapsed)
        stopped = type(error).__name__
    return {"recipe": recipe.name.split(" ")[0], "seed": seed, "test_acc": round(test_acc, 4),
            "collapsed": collapsed, "stopped": stopped, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), nargs="+", default=["improved"],
                        help="recipes to train (default: improved)")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds per recipe (default: 10)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed: the seeds run are FIRST_SEED to FIRST_SEED + SEEDS - 1 (default: 0)")
    parser.add_argument("--threshold", type=float, default=0.70,
                        help="final test accuracy above which a run counts as learned (default: 0.70)")
    parser.add_argument("--full", action="store_true",
                        help="train the full recipe (all images, 224 px, 10 epochs) instead of the quick CPU profile")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best one here)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this file")
    parser.add_argument("--data-dir", default=None, help=f"Fashion-MNIST folder (default: ${nh.DATA_DIR_VARIABLE})")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds} is invalid: it must be at least 1.")
    check_device(parser, args.device)

    device = args.device or str(nh.choose_device())
    data = nh.load_fashion_mnist(args.data_dir)
    results = []
    print(f"{'recipe':<10}{'seed':>5}{'test acc':>10}{'collapsed':>11}{'seconds':>9}")
    # Seeds in the outer loop, so that a run stopped early has the same seeds for each recipe.
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in args.recipe:
            recipe = RECIPES[name] if args.full else nh.quick_cpu_profile(RECIPES[name])
            result = run_seed(data, recipe, seed, device)
            results.append(result)
            print(f"{name:<10}{seed:>5}{result['test_acc']:>10.3f}{str(result['collapsed']):>11}"
                  f"{result['seconds']:>9.1f}", flush=True)
            if args.output is not None:
                # Written after every seed, so a run stopped early keeps the finished seeds.
                write_json(args.output, results)
    for name in args.recipe:
        learned = sum(r["test_acc"] > args.threshold for r in results if r["recipe"] == name)
        print(f"{name}: {learned} of {args.seeds} seeds above {args.threshold:.2f}")
    if args.output is not None:
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
