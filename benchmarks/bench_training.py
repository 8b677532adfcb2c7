"""Measure NiN training throughput: the lesson's data pipeline against the notebooks' own.

reference: the pipeline of the Dive into Deep Learning NiN lesson, rewritten here. A
    torchvision FashionMNIST data set applies a PIL ``Resize`` and ``ToTensor`` to each
    image in the worker processes of a shuffling ``DataLoader``. Training is fp32, NCHW,
    eager, with plain SGD at lr 0.1, and reads the loss and accuracy back to the host
    after every step.
ours: ``nin_helpers.train`` itself, as the notebooks call it, on a subset of the training
    images: the data set on the device as uint8, batches resized there, and the speed
    options that ``train`` uses by default on the device (or the ones given here).

Both train the same network (``nh.build_nin()``, the lesson's recipe) with the same batch
size. Images per second count the whole step, data loading included. Run from the
repository root, with the Fashion-MNIST files in ``$NIN_DATA_DIR`` or the default folder:

    python benchmarks/bench_training.py --device cpu --image-size 96 --batches 10
    python benchmarks/bench_training.py --device cuda --image-size 224 --batches 300
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nin_helpers as nh  # noqa: E402

TRAIN_IMAGES = 60_000  # one epoch of Fashion-MNIST
COLLAPSE_RETRIES = 3  # seeds tried for ours when training collapses before the timed batches end
COMPILE_FALLBACK = "training without compile"  # the end of nh.train's notice when torch.compile fails


@dataclass
class Result:
    """Throughput of one pipeline over the timed batches."""

    name: str
    images: int
    seconds: float
    peak_memory_bytes: int | None
    note: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def seconds_per_epoch(self) -> float:
        return TRAIN_IMAGES / self.images_per_second


# ---------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one pipeline: CUDA ``max_memory_allocated``, else the process's peak RSS.

    On Linux the peak RSS (VmHWM) is reset through ``/proc/self/clear_refs`` before each
    pipeline, so the second pipeline does not inherit the first one's peak. Elsewhere the
    value is ``ru_maxrss``, the peak over the whole process so far. DataLoader workers are
    separate processes and are not counted.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type != "cuda" and self._reset_rss_peak()

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._reset_rss_peak()

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        # ru_maxrss is in KiB on Linux and in bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    @staticmethod
    def _reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            return True
        except OSError:
            return False

    def describe(self) -> str:
        if self.device.type == "cuda":
            return "CUDA max_memory_allocated"
        if self.resettable:
            return "peak RSS of this process (VmHWM, reset per pipeline; loader workers not counted)"
        return "peak RSS of this process since it started (ru_maxrss; loader workers not counted)"


class BatchTimer:
    """Start the clock after the warm-up batches and stop it after the timed ones."""

    def __init__(self, device: torch.device, warmup_batches: int, timed_batches: int) -> None:
        self.device = device
        self.warmup_batches = warmup_batches
        self.timed_batches = timed_batches
        self.started: float | None = None
        self.stopped: float | None = None

    def after_batch(self, index: int) -> None:
        """Record the time after batch ``index`` (0-based) if it ends the warm-up or the run."""
        if index == self.warmup_batches - 1:
            synchronize(self.device)
            self.started = time.perf_counter()
        elif index == self.warmup_batches + self.timed_batches - 1:
            synchronize(self.device)
            self.stopped = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.stopped is not None

    @property
    def seconds(self) -> float:
        assert self.started is not None and self.stopped is not None
        return self.stopped - self.started


# ---------------------------------------------------------------------------------------
# Reference: the lesson's pipeline
# ---------------------------------------------------------------------------------------


def reference_loader(data_dir: Path, image_size: int, batch_size: int, workers: int,
                     seed: int) -> torch.utils.data.DataLoader:
    """Build the lesson's loader: PIL resize and ToTensor per image, in worker processes."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(image_size), transforms.ToTensor()])
    dataset = datasets.FashionMNIST(str(data_dir), train=True, transform=transform, download=False)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers=workers,
                                       generator=generator)


def run_reference(args: argparse.Namespace, device: torch.device, memory: PeakMemory) -> Result:
    """Train with the lesson's pipeline and time it."""
    memory.start()
    loader = reference_loader(args.data_dir, args.image_size, args.batch_size, args.workers, args.seed)
    model = None
    if not args.data_only:
        model = nh.build_nin(nh.LESSON_RECIPE, seed=args.seed).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=nh.LESSON_RECIPE.lr)
        loss_function = nn.CrossEntropyLoss()
        loss_total = correct = 0.0
    timer = BatchTimer(device, args.warmup_batches, args.batches)
    batches = iter(loader)
    for index, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        if model is not None:
            optimizer.zero_grad()
            logits = model(x)
            loss = loss_function(logits, y)
            loss.backward()
            optimizer.step()
            # The lesson adds up the loss and the accuracy as Python floats after every
            # step, which waits for the device each time.
            with torch.no_grad():
                loss_total += float(loss) * len(y)
                correct += float((logits.argmax(dim=1) == y).sum())
        timer.after_batch(index)
        if timer.done:
            break
    peak = memory.read()
    del batches  # shuts the worker processes down
    return Result("reference", args.batches * args.batch_size, timer.seconds, peak)


# ---------------------------------------------------------------------------------------
# Ours: the notebooks' pipeline
# ---------------------------------------------------------------------------------------


def run_ours(args: argparse.Namespace, device: torch.device, memory: PeakMemory,
             data: nh.FashionMNISTData) -> Result:
    """Train with ``nh.train`` on just enough images for the warm-up and timed batches."""
    timer = BatchTimer(device, args.warmup_batches, args.batches)
    memory.start()
    if args.data_only:
        for index, _ in enumerate(our_batches(args, device, data)):
            timer.after_batch(index)
            if timer.done:
                break
        return Result("ours", args.batches * args.batch_size, timer.seconds, memory.read())

    # NiN with the lesson's recipe can collapse (every logit 0) before the timed batches end.
    # A collapsed step takes as long as any other, so the next seed is timed instead.
    for seed in range(args.seed, args.seed + COLLAPSE_RETRIES):
        timer = BatchTimer(device, args.warmup_batches, args.batches)
        memory.start()
        try:
            peak, notices = train_ours(args, device, memory, data, timer, seed)
        except nh.TrainingFailed as error:
            print(f"ours: training with seed {seed} stopped before the timed batches ended "
                  f"({type(error).__name__}), so the next seed is timed instead.")
            continue
        break
    else:
        raise SystemExit(f"nh.train stopped before the timed batches ended with seeds {args.seed} to "
                         f"{args.seed + COLLAPSE_RETRIES - 1}. Run again with another --seed.")

    notes = []
    if seed != args.seed:
        notes.append(f"timed with seed {seed}")
    for line in notices:
        print(f"nh.train: {line}")
        if COMPILE_FALLBACK in line:
            notes.append("torch.compile failed, so ours ran eager")
    return Result("ours", args.batches * args.batch_size, timer.seconds, peak, "; ".join(notes))


def train_ours(args: argparse.Namespace, device: torch.device, memory: PeakMemory, data: nh.FashionMNISTData,
               timer: BatchTimer, seed: int) -> tuple[int, list[str]]:
    """Run ``nh.train`` until ``timer`` is done, and return the peak memory and the notices it printed.

    Raises ``nh.TrainingFailed`` if training stops before the timed batches end.
    """
    recipe = replace(nh.LESSON_RECIPE, name="benchmark", epochs=1, batch_size=args.batch_size,
                     image_size=args.image_size,
                     train_images=(args.warmup_batches + args.batches) * args.batch_size,
                     test_images=args.batch_size)
    model = nh.build_nin(recipe, seed=seed)
    peak: list[int] = []
    profiler = torch.profiler.profile(record_shapes=True) if args.profile else None

    def after_step(epoch: int, step: int) -> None:
        timer.after_batch(step)
        if profiler is not None and step == args.warmup_batches - 1:
            profiler.start()
        if timer.done and not peak:
            peak.append(memory.read())
            if profiler is not None:
                profiler.stop()

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            nh.train(model, data, recipe, device, seed=seed, amp=args.amp, channels_last=args.channels_last,
                     compile=args.compile, progress=False, step_callback=after_step)
    except nh.TrainingFailed:
        if not timer.done:
            raise
        # Training stopped after the timed batches, which keeps the timing valid.
    if profiler is not None:
        print_profile(profiler, args.batches)
    # Epoch lines are left out, and notices such as a compile fallback are kept.
    notices = [line for line in output.getvalue().splitlines() if not line.startswith("epoch ")]
    return peak[0], notices


def our_batches(args: argparse.Namespace, device: torch.device,
                data: nh.FashionMNISTData) -> Iterator[torch.Tensor]:
    """Yield batches exactly as ``nh.train`` makes them: uint8 data on the device, resized there."""
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for epoch in range(sys.maxsize):
        order = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        for x, _ in nh.iterate_batches(images, labels, args.batch_size, args.image_size, order):
            yield x.contiguous(memory_format=memory_format)


def print_profile(profiler: torch.profiler.profile, batches: int) -> None:
    """Print the operators of ours that took the most time over the timed batches, by input shape."""
    sort_key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = profiler.key_averages(group_by_input_shape=True).table(
        sort_by=sort_key, row_limit=20, max_name_column_width=32, max_shapes_column_width=60)
    print(f"Profile of ours over {batches} timed batches (times are totals, not per batch):")
    print(table)


# ---------------------------------------------------------------------------------------
# FLOPs and the device's peak
# ---------------------------------------------------------------------------------------


def training_flops_per_image(image_size: int) -> int:
    """Count the FLOPs of one training step (forward and backward) of NiN, per image."""
    batch = 2
    model = nh.build_nin()
    x = torch.zeros(batch, 1, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() // batch


def peak_dtype(device: torch.device, amp: bool) -> torch.dtype:
    """Return the dtype of the matmul that sets a pipeline's peak.

    bf16 on CUDA, the device's usual peak. On the CPU, the pipeline's compute dtype: fp32,
    or bf16 when autocast is on, since bf16 instructions there do twice the FLOPs per cycle.
    """
    if device.type == "cuda" or amp:
        return torch.bfloat16
    return torch.float32


def matmul_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Measure the FLOP/s of a large square matrix multiply in ``dtype``."""
    size, repeats = (8192, 20) if device.type == "cuda" else (4096, 3)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    dtype_name = str(dtype).removeprefix("torch.")
    return 2 * size**3 / best, f"{dtype_name} {size}x{size} matmul, best of {repeats}"


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def describe_hardware(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    text = f"CPU {cpu}, {os.cpu_count()} logical cores ({torch.get_num_threads()} torch threads)"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, torch {torch.__version__}, {datetime.date.today().isoformat()}"


def format_bytes(count: int | None) -> str:
    if count is None:
        return "n/a"
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def report(args: argparse.Namespace, device: torch.device, memory: PeakMemory, reference: Result,
           ours: Result) -> None:
    mode = "data loading only" if args.data_only else "training"
    print(f"NiN {mode}, image size {args.image_size}, batch {args.batch_size}, {args.batches} timed batches "
          f"after {args.warmup_batches} warm-up, device {device}")
    print(describe_hardware(device))
    header = ["pipeline", "images/s", "s/epoch", "peak memory"]
    rows = []
    flops_columns = not args.data_only
    if flops_columns:
        flops = training_flops_per_image(args.image_size)
        dtypes = {"reference": peak_dtype(device, amp=False), "ours": peak_dtype(device, args.amp)}
        peaks = {dtype: matmul_peak(device, dtype) for dtype in set(dtypes.values())}
        header += ["GFLOP/s", "% of peak"]
    for result in (reference, ours):
        row = [result.name, f"{result.images_per_second:,.0f}", f"{result.seconds_per_epoch:,.1f}",
               format_bytes(result.peak_memory_bytes)]
        if flops_columns:
            achieved = flops * result.images_per_second
            peak_flops, _ = peaks[dtypes[result.name]]
            row += [f"{achieved / 1e9:,.1f}", f"{100 * achieved / peak_flops:.1f}"]
        rows.append(row)
    ratio = ["ours/reference", f"{ours.images_per_second / reference.images_per_second:.2f}x",
             f"{ours.seconds_per_epoch / reference.seconds_per_epoch:.2f}x",
             f"{ours.peak_memory_bytes / reference.peak_memory_bytes:.2f}x"]
    if flops_columns:
        ratio += ["", ""]
    print()
    print_table([header, *rows, ratio])
    print()
    print("s/epoch: 60,000 images at the measured rate. Peak memory: " + memory.describe() + ".")
    amp_text = "off" if not args.amp else ("fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported()
                                           else "bf16")
    print(f"reference: {args.workers} loader workers, fp32, NCHW, eager. ours: mixed precision {amp_text}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, compile {'on' if args.compile else 'off'}.")
    if flops_columns:
        print(f"Training FLOPs per image: {flops / 1e9:.2f} GFLOP (FlopCounterMode, forward + backward).")
        for name, dtype in dtypes.items():
            peak_flops, peak_text = peaks[dtype]
            print(f"Peak for {name}: {peak_flops / 1e9:,.0f} GFLOP/s ({peak_text}).")
    for result in (reference, ours):
        if result.note:
            print(f"{result.name}: {result.note}")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time NiN training on Fashion-MNIST with the lesson's pipeline (reference) and with "
                    "nin_helpers.train (ours), one after the other on one device, and print images/s, "
                    "seconds per epoch, peak memory and FLOP/s for both.",
    )
    parser.add_argument("--image-size", type=int, default=224,
                        help="side in pixels that the 28x28 images are resized to: 224 as in the lesson (default) or "
                             "96 as in the notebooks' quick profile; at least 67")
    parser.add_argument("--batches", type=int, default=20,
                        help="number of timed batches per pipeline, after the warm-up batches (default: %(default)s)")
    parser.add_argument("--warmup-batches", type=int, default=3,
                        help="number of batches run before the clock starts, to cover loader start-up, cuDNN "
                             "autotuning and torch.compile (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="images per batch (default: %(default)s, as in the lesson)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device for both pipelines; auto (default) picks CUDA when available")
    parser.add_argument("--data-only", action="store_true",
                        help="time the data pipelines alone (loader against loader), without the model")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision for ours (default: nh.default_amp for the device)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format for ours (default: nh.default_channels_last for the "
                             "device)")
    parser.add_argument("--compile", action="store_true", help="run ours through torch.compile (default: off)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a torch.profiler table of ours over the timed batches, by operator "
                             "and input shape (the profiler slows the run, so the figures above drop)")
    parser.add_argument("--workers", type=int, default=4,
                        help="DataLoader worker processes of the reference (default: %(default)s, as in the lesson)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: PyTorch's choice, one per core)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the weights and the shuffling (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"folder with FashionMNIST/raw/ (default: ${nh.DATA_DIR_VARIABLE}, else "
                             f"{nh.DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)

    min_size = nh.NiN().min_input_size
    if args.image_size < min_size:
        parser.error(f"--image-size {args.image_size} is invalid: NiN needs at least {min_size} pixels.")
    for name in ("batches", "warmup_batches", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: it must be at least 1.")
    if args.workers < 0:
        parser.error(f"--workers {args.workers} is invalid: use 0 (load in the main process) or more.")
    full_batches = TRAIN_IMAGES // args.batch_size
    if args.warmup_batches + args.batches > full_batches:
        parser.error(f"--warmup-batches plus --batches is {args.warmup_batches + args.batches}, but one epoch has "
                     f"{full_batches} full batches of {args.batch_size}; ask for fewer batches.")
    return args


def choose_benchmark_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but CUDA is not available here; use --device cpu.")
    return torch.device(name)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    # The lesson uses 4 workers whatever the core count; PyTorch warns about that on small machines.
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    device = choose_benchmark_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.amp is None:
        args.amp = nh.default_amp(device)
    if args.channels_last is None:
        args.channels_last = nh.default_channels_last(device)
    args.data_dir = nh.resolve_data_dir(args.data_dir)
    try:
        nh.verify_fashion_mnist(args.data_dir)
    except nh.DataError as error:
        raise SystemExit(str(error)) from error

    data = nh.load_fashion_mnist(args.data_dir, download=False)
    memory = PeakMemory(device)
    reference = run_reference(args, device, memory)
    ours = run_ours(args, device, memory, data)
    report(args, device, memory, reference, ours)


if __name__ == "__main__":
    main()
