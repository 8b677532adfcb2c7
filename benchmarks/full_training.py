"""Train each recipe once for its full length, and record every epoch, the wall time and the accuracy.

This script measures two goals from docs/benchmarks.md on a GPU: 10 epochs at 224 pixels
within 15 s of wall time, and a test accuracy of at least 0.91 for ``IMPROVED_RECIPE``.
The wall time covers the whole ``nh.train`` call: moving the data to the device, every
step, and the test evaluation after each epoch. Loading the files from disk is timed
apart. Run from the repository root, with the Fashion-MNIST files in ``$NIN_DATA_DIR``:

    python benchmarks/full_training.py --device cuda --recipe lesson improved --output full.json

On a CPU a full recipe at 224 pixels takes hours: about 4 hours, estimated from the
45 images/s that the 2-core CPU of docs/benchmarks.md trained at. So ``--image-size``,
``--epochs``, ``--train-images`` and ``--test-images`` shrink it. The output then names
the changed recipe, and its figures are no measure of the 224-pixel goals.
``--model fc-head`` trains the FC-head variant of NiN, the baseline for NiN's claims, in
place of NiN. With ``--checkpoint-dir``, a run stopped by Ctrl+C or a crash continues from
its last finished epoch when the same command is run again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_training import COMPILE_FALLBACK, TRAIN_IMAGES, describe_hardware  # noqa: E402

import nin_helpers as nh  # noqa: E402

RECIPES = {"lesson": nh.LESSON_RECIPE, "improved": nh.IMPROVED_RECIPE}
MODELS = {"nin": nh.build_nin, "fc-head": nh.build_fc_head_variant}
TEST_IMAGES = 10_000  # the Fashion-MNIST test set


class EchoedOutput(io.StringIO):
    """A text buffer that also writes everything to the stdout of the moment it was made."""

    def __init__(self) -> None:
        super().__init__()
        self.target = sys.stdout

    def write(self, text: str) -> int:
        self.target.write(text)
        self.target.flush()
        return super().write(text)


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as JSON through a temporary file, so a process killed meanwhile leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def shrink(recipe: nh.Recipe, args: argparse.Namespace) -> nh.Recipe:
    """Return ``recipe`` with the sizes that the command line overrides, renamed if any changed."""
    changes = {name: getattr(args, name) for name in ("image_size", "epochs", "train_images", "test_images")
               if getattr(args, name) is not None}
    if not changes:
        return recipe
    label = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in changes.items())
    return replace(recipe, name=f"{recipe.name} ({label})", **changes)


def run_recipe(data: nh.FashionMNISTData, recipe: nh.Recipe, args: argparse.Namespace,
               device: torch.device) -> dict:
    """Train one recipe from scratch and return its record (plain numbers and strings)."""
    model = MODELS[args.model](recipe, seed=args.seed)
    checkpoint = None
    if args.checkpoint_dir is not None:
        stem = re.sub(r"[^a-z0-9]+", "-", recipe.name.lower()).strip("-")
        checkpoint = args.checkpoint_dir / f"{args.model}-{stem}-{device.type}-seed{args.seed}.pt"
    resumed = checkpoint is not None and checkpoint.is_file()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    stopped = None
    output = EchoedOutput()
    try:
        with contextlib.redirect_stdout(output):
            history = nh.train(model, data, recipe, device, seed=args.seed, compile=args.compile,
                               checkpoint=checkpoint, progress=args.progress)
    except nh.TrainingFailed as error:
        # The lesson's recipe can collapse. That is a result to record, and the recipes after
        # it still run.
        history, stopped = error.history, f"{type(error).__name__}: {error}"
        print(stopped, flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - started
    if stopped is None and len(history) < recipe.epochs:
        advice = ("Run the same command again to resume from the checkpoint." if checkpoint is not None
                  else "Add --checkpoint-dir to be able to resume an interrupted run.")
        raise SystemExit(f"{recipe.name}: training stopped after {len(history)} of {recipe.epochs} epochs, so "
                         f"no result was written. {advice}")
    if resumed:
        # The time before the interruption is lost, so the epochs' own times stand in for it.
        wall = sum(row["seconds"] for row in history)
    record = {
        "recipe": recipe.name,
        "model": args.model,
        "parameters": nh.count_parameters(model),
        "settings": asdict(recipe),
        "seed": args.seed,
        "device": device.type,
        "amp": nh.default_amp(device),
        "channels_last": nh.default_channels_last(device),
        # nh.train falls back to eager with a notice when torch.compile fails.
        "compile": args.compile and COMPILE_FALLBACK not in output.getvalue(),
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "stopped": stopped,
        "wall_seconds": round(wall, 2),
        "history": history,
    }
    if device.type == "cuda":
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if resumed:
        record["note"] = ("resumed from a checkpoint: wall_seconds is the sum of the epochs' seconds, "
                          "without moving the data to the device")
    return record


def check_device(parser: argparse.ArgumentParser, name: str | None) -> None:
    """Exit through ``parser.error`` unless ``name`` is a device that PyTorch can use here.

    ``None`` passes, because the scripts then pick the best device with ``nh.choose_device``.
    """
    if name is None:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name} is invalid: use cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name} was requested, but CUDA is not available here. Use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {name} is invalid: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        parser.error(f"--device {name} was requested, but Apple MPS is not available here. Use --device cpu.")
    if device.type not in ("cpu", "cuda", "mps"):
        parser.error(f"--device {name} is not supported: use cpu, cuda, cuda:N or mps.")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), nargs="+", default=["lesson", "improved"],
                        help="recipes to train, one after the other (default: lesson improved)")
    parser.add_argument("--model", choices=sorted(MODELS), default="nin",
                        help="NiN, or NiN with its last block replaced by an AlexNet-style FC head (default: nin)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best one here)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, subset and batch order (default: 0)")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (default: eager)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override the recipe's input side in pixels, at least 67 (default: 224)")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs (default: 10)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on a random subset of this many images (default: all 60,000)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="test on a random subset of this many images (default: all 10,000)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="save a checkpoint per recipe after each epoch here, and resume from it")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per recipe")
    parser.add_argument("--output", type=Path, default=None, help="also write the records as JSON to this file")
    parser.add_argument("--data-dir", default=None,
                        help=f"folder that contains FashionMNIST/raw/ (default: ${nh.DATA_DIR_VARIABLE})")
    args = parser.parse_args(argv)

    min_size = nh.NiN().min_input_size
    if args.image_size is not None and args.image_size < min_size:
        parser.error(f"--image-size {args.image_size} is invalid: NiN needs at least {min_size} pixels.")
    for name, maximum in (("epochs", None), ("train_images", TRAIN_IMAGES), ("test_images", TEST_IMAGES)):
        value = getattr(args, name)
        option = f"--{name.replace('_', '-')} {value}"
        if value is not None and value < 1:
            parser.error(f"{option} is invalid: it must be at least 1.")
        if value is not None and maximum is not None and value > maximum:
            parser.error(f"{option} is invalid: Fashion-MNIST has {maximum:,} such images.")

    check_device(parser, args.device)
    if args.output is not None and args.output.is_dir():
        parser.error(f"--output {args.output} is a folder: give a file name, e.g. {args.output / 'full.json'}.")
    if args.checkpoint_dir is not None and args.checkpoint_dir.exists() and not args.checkpoint_dir.is_dir():
        parser.error(f"--checkpoint-dir {args.checkpoint_dir} is a file: give a folder.")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_arguments(argv)
    device = torch.device(args.device) if args.device else nh.choose_device()
    print(describe_hardware(device), flush=True)

    started = time.perf_counter()
    try:
        data = nh.load_fashion_mnist(args.data_dir)
    except nh.DataError as error:
        raise SystemExit(str(error)) from error
    print(f"loaded Fashion-MNIST from disk in {time.perf_counter() - started:.1f} s", flush=True)

    records = []
    for name in args.recipe:
        recipe = shrink(RECIPES[name], args)
        print(f"\n{recipe.name}: {recipe.epochs} epoch(s) at {recipe.image_size} px on {device}"
              f"{' with torch.compile' if args.compile else ''}", flush=True)
        record = run_recipe(data, recipe, args, device)
        record["hardware"] = describe_hardware(device)
        record["date"] = datetime.date.today().isoformat()
        records.append(record)
        if record["stopped"] is None:
            print(f"{recipe.name}: final test accuracy {record['final_test_acc']:.4f}, "
                  f"wall time {record['wall_seconds']:.1f} s", flush=True)
        else:
            print(f"{recipe.name}: stopped after {len(record['history'])} of {recipe.epochs} epochs, "
                  f"wall time {record['wall_seconds']:.1f} s", flush=True)
        if args.output is not None:
            # Written after every recipe, so a later failure keeps the finished ones.
            write_json(args.output, records)
    if args.output is not None:
        print(f"wrote {args.output}")
    return records


if __name__ == "__main__":
    main()
