"""Helpers for the Network in Network (NiN) notebook series.

Each section below belongs to the notebook that introduces it. Every function takes what
it needs as arguments: the module keeps no global state, so a notebook cell can be rerun
in any order.

Shapes are written (N, C, H, W): batch, channels, height, width. Sizes are in pixels,
parameter counts are numbers of scalar weights, and FLOPs are floating-point operations
as counted by ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add is 2 FLOPs).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# ---------------------------------------------------------------------------------------
# Shared by every notebook: counting and sliders
# ---------------------------------------------------------------------------------------


def count_parameters(module: nn.Module) -> int:
    """Return the number of scalar parameters in ``module``, trainable or not."""
    return sum(p.numel() for p in module.parameters())


def format_count(value: float) -> str:
    """Format a count with a thousands separator, e.g. ``1992166`` -> ``'1,992,166'``."""
    return f"{value:,.0f}"


def format_flops(flops: float) -> str:
    """Format a FLOP count with an SI prefix, e.g. ``1.23e9`` -> ``'1.23 GFLOPs'``."""
    units = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1))
    # The largest prefix that the value reaches, else none (below 1 FLOP too).
    index = next((i for i, (_, scale) in enumerate(units) if flops >= scale), len(units) - 1)
    prefix, scale = units[index]
    digits = 2 if prefix else 0

    # Move up one prefix when rounding reaches 1000: 999,999 prints as 1.00 MFLOPs.
    if index > 0 and round(flops / scale, digits) >= 1000:
        prefix, scale = units[index - 1]
        digits = 2
    return f"{flops / scale:.{digits}f} {prefix}FLOPs"


def build_sliders(report: Callable[..., str], **sliders: Any) -> Any:
    """Build an ``ipywidgets.interactive`` that prints ``report(**slider_values)``.

    ``sliders`` maps each keyword argument of ``report`` to a widget. ``report`` is a plain
    function that returns text, so tests call it directly without any widget. The output
    refreshes when a slider is released, not on every step of a drag. Works with
    ipywidgets 7.7 (Colab) and 8.x.
    """
    import ipywidgets as widgets

    for slider in sliders.values():
        slider.continuous_update = False

    def show(**values: Any) -> None:
        print(report(**values))

    panel = widgets.interactive(show, **sliders)
    # ipywidgets 8 runs the first update in the constructor, and 7.7 only once the panel is
    # displayed. Run it now unless it ran: an update fills panel.kwargs with the slider values.
    if not panel.kwargs:
        panel.update()
    return panel


def int_slider(value: int, low: int, high: int, description: str, step: int = 1) -> Any:
    """Return an ``ipywidgets.IntSlider`` with a text readout a learner can type into."""
    import ipywidgets as widgets

    return widgets.IntSlider(
        value=value,
        min=low,
        max=high,
        step=step,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )


def output_shape(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return the output shape of ``module`` for an input of ``input_shape``.

    The module runs on PyTorch's ``meta`` device, which tracks shapes without allocating
    memory or computing values, so very large inputs are cheap. ``module`` is not changed.
    """
    meta_module = copy.deepcopy(module).to("meta")
    with torch.no_grad():
        result = meta_module(torch.empty(*input_shape, device="meta"))
    return tuple(result.shape)


# ---------------------------------------------------------------------------------------
# Notebook 1: the problem with fully connected heads
# ---------------------------------------------------------------------------------------


def head_parameter_share(model: nn.Module, head: str = "classifier") -> tuple[int, int]:
    """Return ``(head_parameters, total_parameters)`` for the submodule named ``head``."""
    head_module = model.get_submodule(head)
    return count_parameters(head_module), count_parameters(model)


def alexnet_fc_head_parameters(input_size: int, num_classes: int = 1000) -> dict[str, Any]:
    """Compute the size of an AlexNet-style FC head when the input is ``input_size`` pixels.

    torchvision's AlexNet hides the growth behind an adaptive pooling layer that always
    outputs 6x6. Here the head is sized for the feature map the convolutions really
    produce, as it was before adaptive pooling existed: flatten -> 4096 -> 4096 -> classes.
    Returns the feature-map shape (C, H, W), the flattened length and the head's parameters.
    Raises ``ValueError`` when ``input_size`` or ``num_classes`` is not an int of at least 1,
    or when ``input_size`` is too small for AlexNet's convolutions and pooling (below 63
    pixels).
    """
    from torchvision.models import alexnet

    for name, value in (("input_size", input_size), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} is not an int of at least 1.")
    # Built on the meta device, the layers get shapes but no memory and no random init,
    # so this takes milliseconds instead of about a second for 61 million weights.
    with torch.device("meta"):
        features = alexnet(weights=None).features
    try:
        channels, height, width = output_shape(features, (1, 3, input_size, input_size))[1:]
    except RuntimeError as error:
        smallest = minimum_input_size(features)
        raise ValueError(
            f"input_size={input_size} is too small: AlexNet's convolutions and pooling need at "
            f"least {smallest}x{smallest} pixels."
        ) from error
    flat = channels * height * width
    head = (flat * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)
    return {"feature_shape": (channels, height, width), "flat_features": flat, "head_parameters": head}


def fc_head_report(input_size: int) -> str:
    """Describe AlexNet's FC head at ``input_size`` in words, for notebook 1's slider.

    An invalid ``input_size`` gives text that starts with "Invalid setting:", not an exception.
    """
    try:
        head = alexnet_fc_head_parameters(input_size)
    except ValueError as error:
        return f"Invalid setting: {error}"
    channels, height, width = head["feature_shape"]
    return (
        f"input 3x{input_size}x{input_size} -> feature map {channels}x{height}x{width}\n"
        f"flattened length: {format_count(head['flat_features'])}\n"
        f"FC head parameters: {format_count(head['head_parameters'])}"
    )


# ---------------------------------------------------------------------------------------
# Notebook 2: a 1x1 convolution is a fully connected layer shared by every pixel
# ---------------------------------------------------------------------------------------


def pixels_as_samples(x: torch.Tensor) -> torch.Tensor:
    """Reshape a (N, C, H, W) batch into (N*H*W, C): one row per pixel, channels as features.

    Row ``n*H*W + h*W + w`` is the channel vector ``x[n, :, h, w]``. Raises ``ValueError``
    unless ``x`` is 4-D.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}.")
    batch, channels, height, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)


def linear_from_conv1x1(conv: nn.Conv2d) -> nn.Linear:
    """Copy the weights of the 1x1 convolution ``conv`` into a new ``nn.Linear``.

    Applied to ``pixels_as_samples(x)``, the result equals ``pixels_as_samples(conv(x))``.
    Raises ``ValueError`` unless ``conv`` has a 1x1 kernel, stride 1, no padding and one group.
    """
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding not in ((0, 0), "valid"):
        raise ValueError(
            f"expected a 1x1 convolution with stride 1 and no padding, got kernel_size="
            f"{conv.kernel_size}, stride={conv.stride}, padding={conv.padding}"
        )
    if conv.groups != 1:
        raise ValueError(f"expected a convolution with groups=1, got groups={conv.groups}: a grouped "
                         f"1x1 convolution is a block-diagonal linear layer, not a full one.")
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(conv.out_channels, conv.in_channels))
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear


def conv1x1_report(in_channels: int, out_channels: int, size: int) -> str:
    """Compare a 1x1 convolution with an FC layer over the flattened map, for notebook 2's slider.

    Both map (in_channels, size, size) to (out_channels, size, size) and have biases. An
    invalid setting gives text that starts with "Invalid setting:", not an exception.
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("size", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"Invalid setting: {name}={value!r}, but it must be an int of at least 1."
    conv = in_channels * out_channels + out_channels
    flat = in_channels * size * size
    fc = flat * (out_channels * size * size) + out_channels * size * size
    return (
        f"map {in_channels}x{size}x{size} -> {out_channels}x{size}x{size}\n"
        f"1x1 convolution: {format_count(conv)} parameters (independent of the map size)\n"
        f"FC layer over the flattened map: {format_count(fc)} parameters\n"
        f"ratio FC / 1x1: {fc / conv:,.0f}x"
    )


# ---------------------------------------------------------------------------------------
# Notebook 3: the NiN block
# ---------------------------------------------------------------------------------------


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name}={value} is too small: it must be at least 1.")


def conv_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    pooling: bool = False,
) -> int:
    """Return the output size (pixels) of a convolution or max pooling along one dimension.

    Uses floor((size + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1, as
    ``nn.Conv2d`` and ``nn.MaxPool2d`` (with ``ceil_mode=False``) do. Raises ``ValueError``
    naming the parameter for a setting PyTorch would reject: a size, kernel, stride or
    dilation below 1, a negative padding, a kernel larger than the padded input, and for
    pooling (``pooling=True``) a padding larger than half the kernel. Raises ``TypeError``
    when size, kernel_size, stride or dilation is not an int.
    """
    for name, value in (("size", size), ("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        _check_positive(name, value)
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding={padding!r} is not an int of 0 or more.")
    if pooling and padding > kernel_size // 2:
        raise ValueError(
            f"padding={padding} is too large for pooling with kernel_size={kernel_size}: "
            f"it must be at most kernel_size // 2 = {kernel_size // 2}."
        )
    span = dilation * (kernel_size - 1) + 1
    if span > size + 2 * padding:
        raise ValueError(
            f"kernel_size={kernel_size} is larger than the padded input. Input size {size} "
            f"plus padding {padding} on each side is {size + 2 * padding}, but the kernel "
            f"spans {span}. Use a larger input, more padding or a smaller kernel."
        )
    return (size + 2 * padding - span) // stride + 1


def nin_block(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, batch_norm: bool = False
) -> nn.Sequential:
    """Build a NiN block: a k x k convolution, then two 1x1 convolutions, each followed by ReLU.

    Input (N, in_channels, H, W) -> output (N, out_channels, H', W') where H' and W' follow
    ``conv_output_size``; the 1x1 convolutions keep the spatial size. Raises ``ValueError``
    naming the parameter when a value is below 1 (padding below 0).
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_size", kernel_size), ("stride", stride)):
        _check_positive(name, value)
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding={padding!r} is not an int of 0 or more.")
    if not batch_norm:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
            nn.ReLU(),
        )
    # With batch_norm (not part of the original NiN): BatchNorm2d between each convolution
    # and its ReLU, which makes training far less sensitive to the learning rate.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """Return the FLOPs of one forward pass of ``module`` on ``x``, as FlopCounterMode counts."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return counter.get_total_flops()


@dataclass
class BlockSummary:
    """Output shape (C, H, W), parameter count and forward FLOPs of one NiN block for one image."""

    output_shape: tuple[int, int, int]
    parameters: int
    flops: int


def summarize_nin_block(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, input_size: int
) -> BlockSummary:
    """Summarize a NiN block on a (1, in_channels, input_size, input_size) input.

    Raises ``ValueError`` naming the parameter for an invalid setting. The block is built and
    run on the ``meta`` device, which tracks shapes only, so large settings cost no compute.
    """
    side = conv_output_size(input_size, kernel_size, stride, padding)
    with torch.device("meta"):
        block = nin_block(in_channels, out_channels, kernel_size, stride, padding)
        flops = count_flops(block, torch.empty(1, in_channels, input_size, input_size))
    return BlockSummary((out_channels, side, side), count_parameters(block), flops)


def nin_block_report(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, input_size: int
) -> str:
    """Describe a NiN block in words, or explain why the setting is invalid; notebook 3's slider."""
    try:
        summary = summarize_nin_block(in_channels, out_channels, kernel_size, stride, padding, input_size)
    except ValueError as error:
        return f"Invalid setting: {error}"
    channels, height, width = summary.output_shape
    return (
        f"input {in_channels}x{input_size}x{input_size} -> output {channels}x{height}x{width}\n"
        f"parameters: {format_count(summary.parameters)}\n"
        f"FLOPs per image: {format_flops(summary.flops)}"
    )


# ---------------------------------------------------------------------------------------
# Notebook 4: the whole network, layer by layer
# ---------------------------------------------------------------------------------------


class NiN(nn.Sequential):
    """The NiN network: four NiN blocks, max pooling, dropout and global average pooling.

    Input (N, in_channels, H, W) with H, W >= ``min_input_size`` -> logits (N, num_classes).
    ``forward`` checks the input and raises ``ValueError`` with the fix, instead of an error
    from deep inside a pooling layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5,
                 batch_norm: bool = False) -> None:
        norm = batch_norm
        super().__init__(OrderedDict([
            ("block1", nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0, batch_norm=norm)),
            ("pool1", nn.MaxPool2d(3, stride=2)),
            ("block2", nin_block(96, 256, kernel_size=5, stride=1, padding=2, batch_norm=norm)),
            ("pool2", nn.MaxPool2d(3, stride=2)),
            ("block3", nin_block(256, 384, kernel_size=3, stride=1, padding=1, batch_norm=norm)),
            ("pool3", nn.MaxPool2d(3, stride=2)),
            ("dropout", nn.Dropout(dropout)),
            # The last block outputs one channel per class, so no FC head is needed.
            ("block4", nin_block(384, num_classes, kernel_size=3, stride=1, padding=1, batch_norm=norm)),
            ("gap", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
        ]))
        self.in_channels = in_channels
        self.min_input_size = minimum_input_size(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nin_input(x, self.in_channels, self.min_input_size)
        return super().forward(x)


def check_nin_input(x: torch.Tensor, in_channels: int, min_input_size: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a (N, in_channels, H, W) batch with H, W >= min_input_size."""
    if x.dim() != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(
            f"NiN expects a 4-D batch (N, C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}.{hint}"
        )
    if x.shape[1] != in_channels:
        hint = ""
        if in_channels == 1 and x.shape[1] == 3:
            hint = (" Convert RGB images to grayscale first, e.g. with "
                    "torchvision.transforms.functional.rgb_to_grayscale(x).")
        raise ValueError(
            f"NiN expects {in_channels}-channel images, got {x.shape[1]} channels in an "
            f"input of shape {tuple(x.shape)}.{hint} Or build NiN(in_channels={x.shape[1]})."
        )
    height, width = x.shape[2], x.shape[3]
    if min(height, width) < min_input_size:
        raise ValueError(
            f"NiN needs inputs of at least {min_input_size}x{min_input_size} pixels, got "
            f"{height}x{width}. Resize the images first, e.g. "
            f"F.interpolate(x, size=({min_input_size}, {min_input_size}), mode='bilinear')."
        )


def _spatial_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]


def _pair(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def spatial_output_size(model: nn.Module, input_size: int) -> int:
    """Return the height of the last feature map before global pooling for a square input.

    Follows every ``nn.Conv2d`` and ``nn.MaxPool2d`` of ``model`` in definition order with
    ``conv_output_size``. Raises ``ValueError`` at the first layer the input is too small
    for. The message starts with that layer's name, e.g. ``layer pool3 (MaxPool2d) gets a 2x2 input. ...``.
    """
    size = input_size
    for name, layer in _spatial_layers(model):
        try:
            size = conv_output_size(
                size,
                _pair(layer.kernel_size),
                _pair(layer.stride),
                _pair(layer.padding),
                _pair(layer.dilation),
                pooling=isinstance(layer, nn.MaxPool2d),
            )
        except ValueError as error:
            where = f"layer {name} ({type(layer).__name__}) gets a {size}x{size} input"
            raise ValueError(f"{where}. {error}") from error
    return size


def minimum_input_size(model: nn.Module, search_limit: int = 4096) -> int:
    """Return the smallest square input size (pixels) that every layer of ``model`` accepts."""
    for size in range(1, search_limit + 1):
        try:
            spatial_output_size(model, size)
        except ValueError:
            continue
        return size
    raise ValueError(f"no input size up to {search_limit} pixels fits this model.")


def nin_input_size_report(input_size: int) -> str:
    """Say whether NiN accepts a square input of ``input_size`` pixels; notebook 4's slider."""
    model = NiN()
    try:
        final = spatial_output_size(model, input_size)
    except ValueError as error:
        return (f"input {input_size}x{input_size}: too small, NiN needs at least "
                f"{model.min_input_size}x{model.min_input_size}.\n{error}")
    return (f"input {input_size}x{input_size}: works. The last block outputs 10x{final}x{final}, "
            f"which global average pooling turns into 10 logits.")


@dataclass
class LayerRow:
    """One row of a layer table: output shape without the batch dimension, parameters, FLOPs."""

    name: str
    layer: str
    output_shape: tuple[int, ...]
    parameters: int
    flops: int


def layer_table(model: nn.Sequential, input_shape: Sequence[int]) -> list[LayerRow]:
    """Run ``model`` on zeros of ``input_shape`` (N, C, H, W) and describe each top-level layer.

    FLOPs are counted per layer by ``FlopCounterMode`` for the whole batch of the input.
    """
    rows = []
    x = torch.zeros(*input_shape)
    was_training = model.training
    model.eval()
    try:
        for name, layer in model.named_children():
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                x = layer(x)
            rows.append(LayerRow(name, type(layer).__name__, tuple(x.shape[1:]),
                                 count_parameters(layer), counter.get_total_flops()))
    finally:
        model.train(was_training)
    return rows


def format_layer_table(rows: Sequence[LayerRow]) -> str:
    """Format a layer table as aligned text with a total row."""
    lines = [f"{'layer':<9}{'type':<19}{'output shape':<16}{'parameters':>12}{'FLOPs':>16}"]
    for row in rows:
        shape = "x".join(str(d) for d in row.output_shape)
        lines.append(f"{row.name:<9}{row.layer:<19}{shape:<16}{row.parameters:>12,}{row.flops:>16,}")
    total_parameters = sum(row.parameters for row in rows)
    total_flops = sum(row.flops for row in rows)
    lines.append(f"{'total':<44}{total_parameters:>12,}{total_flops:>16,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Notebook 5: data, training, checkpoints and results
# ---------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Size in bytes and MD5 of the canonical uncompressed Fashion-MNIST files (Xiao, Rasul and
# Vollgraf, 2017). MNIST's digit files have the same sizes, so only the MD5 distinguishes them.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": (47_040_016, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": (60_008, "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": (7_840_016, "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": (10_008, "15d484375f8d13e6eb1aabb0c3f46965"),
}

DATA_DIR_VARIABLE = "NIN_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "nin-notebooks" / "data"


class DataError(RuntimeError):
    """Raised when the Fashion-MNIST files are missing, truncated or not Fashion-MNIST."""


def resolve_data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder: ``root`` if given, else ``$NIN_DATA_DIR``, else the default.

    The folder is the one ``torchvision.datasets.FashionMNIST`` takes as ``root``: the files
    live in ``<root>/FashionMNIST/raw/``.
    """
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_DIR_VARIABLE):
        return Path(os.environ[DATA_DIR_VARIABLE]).expanduser()
    return DEFAULT_DATA_DIR


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_files_message(raw_dir: Path, missing: Sequence[str]) -> str:
    if len(missing) == len(FASHION_MNIST_FILES):
        found = f"Fashion-MNIST files not found in {raw_dir}: all four are missing ({', '.join(missing)}). "
    else:
        found = (f"Fashion-MNIST files not found in {raw_dir}: missing {', '.join(missing)}. "
                 f"The folder needs all four files: {', '.join(FASHION_MNIST_FILES)}. ")
    root = raw_dir.parent.parent
    # A common mistake is to give the raw/ folder itself, or FashionMNIST/, as the data folder.
    for files_dir, correct_root in ((root, root.parent.parent), (root / "raw", root.parent)):
        if all((files_dir / name).is_file() for name in FASHION_MNIST_FILES):
            found += (f"The files are in {files_dir}, so the data folder should be {correct_root} "
                      f"(the folder that contains FashionMNIST/raw/). ")
    return found + (
        f"Run load_fashion_mnist(download=True) with internet access, or copy the files "
        f"(from https://github.com/zalandoresearch/fashion-mnist, gunzipped) into that folder, "
        f"or set {DATA_DIR_VARIABLE} to a folder that has FashionMNIST/raw/ with them."
    )


def verify_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Path:
    """Check that ``<root>/FashionMNIST/raw`` contains the four canonical files and return that folder.

    Raises ``DataError`` naming the file that is missing, truncated (wrong size) or not
    Fashion-MNIST (wrong MD5, e.g. MNIST digits served by a wrong mirror).
    """
    raw_dir = resolve_data_dir(root) / "FashionMNIST" / "raw"
    missing = [name for name in FASHION_MNIST_FILES if not (raw_dir / name).is_file()]
    if missing:
        raise DataError(_missing_files_message(raw_dir, missing))
    for name, (size, md5) in FASHION_MNIST_FILES.items():
        path = raw_dir / name
        actual_size = path.stat().st_size
        if actual_size != size:
            raise DataError(
                f"{path} is {actual_size:,} bytes but the Fashion-MNIST file has {size:,}: "
                f"it is truncated or damaged. Delete it and download it again."
            )
        if _md5(path) != md5:
            raise DataError(
                f"{path} has the right size but the wrong content (MD5 {_md5(path)}, expected "
                f"{md5}): it is not the Fashion-MNIST file. MNIST digits have the same size, "
                f"so a wrong mirror may have served MNIST. Delete it and download it again."
            )
    return raw_dir


def _download_fashion_mnist(root: Path) -> None:
    """Download the four files with torchvision; on failure remove what was partly written."""
    from torchvision.datasets import FashionMNIST

    raw_dir = root / "FashionMNIST" / "raw"
    existing = set(raw_dir.iterdir()) if raw_dir.is_dir() else set()
    created_dirs = [d for d in (root, root / "FashionMNIST", raw_dir) if not d.exists()]
    try:
        FashionMNIST(str(root), train=True, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError or HTTPError
        for path in set(raw_dir.iterdir()) - existing if raw_dir.is_dir() else ():
            path.unlink()
        for directory in reversed(created_dirs):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        missing = [name for name in FASHION_MNIST_FILES if not (raw_dir / name).is_file()]
        raise DataError(f"Downloading Fashion-MNIST failed ({error}). "
                        + _missing_files_message(raw_dir, missing)) from error


@dataclass
class FashionMNISTData:
    """Fashion-MNIST as tensors: images uint8 (N, 28, 28) in [0, 255], labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = FASHION_MNIST_CLASSES

    def to(self, device: torch.device | str) -> FashionMNISTData:
        """Return a copy with every tensor on ``device`` (images stay uint8: 47 MB in all)."""
        return replace(self, **{name: getattr(self, name).to(device) for name in
                                ("train_images", "train_labels", "test_images", "test_labels")})

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> FashionMNISTData:
        """Return a random subset of ``train`` training and ``test`` test images (None keeps all)."""
        generator = torch.Generator().manual_seed(seed)

        def pick(images: torch.Tensor, labels: torch.Tensor, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
            if count is None or count >= len(labels):
                return images, labels
            index = torch.randperm(len(labels), generator=generator)[:count].to(labels.device)
            return images[index], labels[index]

        train_images, train_labels = pick(self.train_images, self.train_labels, train)
        test_images, test_labels = pick(self.test_images, self.test_labels, test)
        return replace(self, train_images=train_images, train_labels=train_labels,
                       test_images=test_images, test_labels=test_labels)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> FashionMNISTData:
    """Load Fashion-MNIST (60,000 training and 10,000 test images) as uint8 tensors.

    The folder comes from ``root``, else ``$NIN_DATA_DIR``, else ``DEFAULT_DATA_DIR``.
    Missing files are downloaded when ``download`` is true. Every file is checked against
    its canonical size and MD5 first, so a damaged or wrong file raises ``DataError``
    naming it instead of an error from deep inside torchvision.
    """
    from torchvision.datasets import FashionMNIST

    folder = resolve_data_dir(root)
    raw_dir = folder / "FashionMNIST" / "raw"
    if download and not all((raw_dir / name).is_file() for name in FASHION_MNIST_FILES):
        _download_fashion_mnist(folder)
    verify_fashion_mnist(folder)
    train = FashionMNIST(str(folder), train=True, download=False)
    test = FashionMNIST(str(folder), train=False, download=False)
    return FashionMNISTData(train.data, train.targets, test.data, test.targets)


def resize_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Turn uint8 images (N, 28, 28) into float (N, 1, image_size, image_size) in [0, 1].

    Resizes the whole batch at once with bilinear ``F.interpolate`` on the images' device,
    which matches PIL's bilinear resize followed by ``ToTensor`` to within 1/255.
    """
    x = images.unsqueeze(1).float().div_(255)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    image_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches: x float (B, 1, image_size, image_size), y int64 (B,).

    ``images`` and ``labels`` should already be on the training device, so only an index
    tensor is made per epoch. With a ``generator`` the order is shuffled, else it is kept.
    The last batch may be smaller.
    """
    count = len(labels)
    if generator is None:
        order = torch.arange(count, device=labels.device)
    else:
        order = torch.randperm(count, generator=generator).to(labels.device)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        yield resize_batch(images[index], image_size), labels[index]


def choose_device() -> torch.device:
    """Return the best device here: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def init_weights(model: nn.Module, scheme: str = "xavier") -> None:
    """Initialise every convolution and linear weight of ``model`` in place.

    ``"xavier"``: Xavier-uniform weights, biases left at PyTorch's default, as the lesson
    does. ``"kaiming"``: Kaiming-normal weights for ReLU (fan-in) and zero biases, which
    keeps the signal's variance through NiN's 12 ReLU layers.
    """
    if scheme not in ("xavier", "kaiming"):
        raise ValueError(f"init scheme {scheme!r} is invalid: use 'xavier' or 'kaiming'.")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class Recipe:
    """Training hyperparameters. Sizes in pixels and images; learning rate per step of SGD.

    ``train_images`` and ``test_images`` limit training to a random subset (None: all).
    """

    name: str = "lesson"
    init: str = "xavier"
    batch_norm: bool = False
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    cosine_schedule: bool = False
    image_size: int = 224
    train_images: int | None = None
    test_images: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            _check_positive(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} is invalid: the learning rate must be above 0.")
        if self.momentum and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} is invalid: it must be in [0, 1).")


# The recipe of the Dive into Deep Learning NiN chapter: plain SGD, lr 0.1, 10 epochs,
# batch 128, inputs resized to 224, Xavier-uniform initialisation.
LESSON_RECIPE = Recipe()


# Changes from the lesson's recipe that trained faster and more reliably in the quick CPU
# profile (docs/benchmarks.md). The network stays NiN, with batch normalization added to
# every block. Training uses Kaiming-normal initialisation, SGD with Nesterov momentum 0.9
# and weight decay 5e-4, a one-epoch linear warm-up then a cosine decay of the learning
# rate, and label smoothing 0.1.
# NOTE: its accuracy after 10 epochs at 224 pixels has not been measured yet (no GPU run). At
# 96 pixels, on all 60,000 images, it reached 0.933 after 10 epochs with seed 0 on a CPU.
IMPROVED_RECIPE = Recipe(
    name="improved", init="kaiming", batch_norm=True, lr=0.05, momentum=0.9, nesterov=True,
    weight_decay=5e-4, warmup_epochs=1, cosine_schedule=True, label_smoothing=0.1,
)


def build_nin(recipe: Recipe | None = None, seed: int = 0) -> NiN:
    """Build the NiN that ``recipe`` trains, with weights drawn from ``seed``.

    The recipe sets the initialisation and whether blocks use batch normalization; the
    default is the lesson's recipe: the original NiN with Xavier-uniform weights.
    """
    recipe = recipe or LESSON_RECIPE
    torch.manual_seed(seed)
    model = NiN(batch_norm=recipe.batch_norm)
    init_weights(model, recipe.init)
    return model


def build_fc_head_variant(recipe: Recipe | None = None, seed: int = 0) -> nn.Sequential:
    """Build NiN with its last block and global pooling replaced by an AlexNet-style FC head.

    Blocks 1-3 and their pooling stay; then flatten -> 4096 -> 4096 -> 10 with ReLU and
    dropout 0.5, sized for the feature map at ``recipe.image_size``. This is the baseline
    for NiN's claims: fewer parameters, better generalisation, slower convergence.
    """
    recipe = recipe or LESSON_RECIPE
    torch.manual_seed(seed)
    nin = NiN(batch_norm=recipe.batch_norm)
    side = spatial_output_size(nn.Sequential(nin.block1, nin.pool1, nin.block2, nin.pool2, nin.block3, nin.pool3),
                               recipe.image_size)
    model = nn.Sequential(OrderedDict([
        *list(nin.named_children())[:6],
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(384 * side * side, 4096)),
        ("relu1", nn.ReLU()),
        ("dropout1", nn.Dropout(0.5)),
        ("fc2", nn.Linear(4096, 4096)),
        ("relu2", nn.ReLU()),
        ("dropout2", nn.Dropout(0.5)),
        ("fc3", nn.Linear(4096, 10)),
    ]))
    init_weights(model, recipe.init)
    return model


def quick_cpu_profile(recipe: Recipe = LESSON_RECIPE) -> Recipe:
    """Shrink ``recipe`` so that it trains in about a minute on a 2-core laptop CPU.

    Fewer images and a smaller input than the full run, so its accuracy is lower and only
    shows that training works.
    """
    return replace(recipe, name=f"{recipe.name} (quick CPU profile)", epochs=3, image_size=96,
                   train_images=6000, test_images=2000)


class TrainingFailed(RuntimeError):
    """Raised when training cannot go on. ``history`` contains the finished epochs."""

    def __init__(self, message: str, history: list[dict[str, float]]) -> None:
        super().__init__(message)
        self.history = history


class TrainingCollapsed(TrainingFailed):
    """Raised when every logit has become zero, so no gradient can ever flow again."""


class TrainingDiverged(TrainingFailed):
    """Raised when the loss becomes NaN or infinite."""


def _lr_factor(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = recipe.warmup_epochs * steps_per_epoch
    total = recipe.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.cosine_schedule:
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _autocast(device: torch.device, amp: bool) -> tuple[Any, torch.amp.GradScaler | None]:
    """Return the autocast context and, for fp16 on CUDA only, a gradient scaler."""
    if not amp:
        return torch.autocast(device.type, enabled=False), None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def _cpu_has_bf16_instructions() -> bool:
    """Return whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX).

    oneDNN runs bf16 convolutions natively only on such CPUs and emulates them elsewhere.
    """
    # NOTE: both checks are private PyTorch functions (present in torch 2.14); where they are
    # missing this returns False, so CPU training stays in fp32.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_amp(device: torch.device | str) -> bool:
    """Return whether ``train`` uses mixed precision on ``device`` when ``amp`` is None.

    True for CUDA, and for CPUs with bf16 instructions, where the bf16 training step of NiN
    measured faster than fp32 (docs/benchmarks.md). Emulated bf16 was not measured, so other
    CPUs and Apple MPS keep fp32. Pass the result as ``amp`` to ``predict`` and ``evaluate``
    to get the same predictions as the test accuracy that ``train`` records.

    NOTE: the figures come from one 2-core AMD EPYC shared with other busy processes. There,
    OpenMP threads that spin-wait stalled some steps by seconds, in fp32 and in bf16. Setting
    ``OMP_WAIT_POLICY=PASSIVE`` in the environment before PyTorch loads avoided that.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_bf16_instructions()


def default_channels_last(device: torch.device | str) -> bool:
    """Return whether ``train`` stores activations as (N, H, W, C) on ``device`` when ``channels_last`` is None.

    True for CUDA and the CPU, where oneDNN then skips reordering every activation (measured
    faster for NiN on the CPU, docs/benchmarks.md). Apple MPS keeps NCHW.
    """
    return torch.device(device).type in ("cuda", "cpu")


def _compile_model(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``torch.compile(model)``, or ``model`` with a one-line notice if that raises."""
    compile_function = getattr(torch, "compile", None)
    if compile_function is None:
        print(f"torch.compile is not available in PyTorch {torch.__version__}; training without compile.")
        return model
    try:
        return compile_function(model)
    except RuntimeError as error:  # e.g. a Python version that this PyTorch cannot compile for
        print(f"torch.compile failed ({_first_line(error)}); training without compile.")
        return model


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _forward_backward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      loss_function: nn.Module, autocast: Any,
                      scaler: torch.amp.GradScaler | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward pass and accumulate the gradients, returning the logits and the loss."""
    with autocast:
        logits = forward(x)
        loss = loss_function(logits, y)
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    return logits, loss


def predict(model: nn.Module, images: torch.Tensor, image_size: int, batch_size: int = 512,
            amp: bool = False) -> torch.Tensor:
    """Return predicted classes int64 (N,) for uint8 images (N, 28, 28), on the images' device."""
    context, _ = _autocast(images.device, amp)
    was_training = model.training
    model.eval()
    predictions = []
    with torch.no_grad(), context:
        for start in range(0, len(images), batch_size):
            x = resize_batch(images[start:start + batch_size], image_size)
            predictions.append(model(x).argmax(dim=1))
    model.train(was_training)
    return torch.cat(predictions)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, image_size: int,
             amp: bool = False) -> float:
    """Return the accuracy (fraction in [0, 1]) of ``model`` on uint8 images and labels."""
    return (predict(model, images, image_size, amp=amp) == labels).float().mean().item()


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Save ``state`` atomically: write a temporary file beside ``path``, then rename it.

    An interruption while saving leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint saved by ``train`` onto ``device``, with ``weights_only=True``.

    A checkpoint saved on a GPU loads on a CPU. Raises ``ValueError`` if ``device`` is not
    available here and ``FileNotFoundError`` if there is no file at ``path``.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cannot load the checkpoint onto device '{device}': CUDA is not "
                         f"available on this machine. Use device='cpu' or choose_device().")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"cannot load the checkpoint onto device '{device}': Apple MPS is not "
                         f"available on this machine. Use device='cpu' or choose_device().")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}. Train with checkpoint={str(path)!r} first.")
    return torch.load(path, map_location=device, weights_only=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _print_epoch(row: dict[str, float], epochs: int, write: Callable[[str], None]) -> None:
    write(f"epoch {row['epoch']:>2.0f}/{epochs}: loss {row['loss']:.4f}, train acc {row['train_acc']:.3f}, "
          f"test acc {row['test_acc']:.3f}, {row['seconds']:.1f} s, {row['images_per_second']:,.0f} images/s")


def train(
    model: nn.Module,
    data: FashionMNISTData,
    recipe: Recipe = LESSON_RECIPE,
    device: torch.device | str | None = None,
    *,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    progress: bool = True,
    live_plot: bool = False,
    log_every: int = 50,
    step_callback: Callable[[int, int], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``data`` with ``recipe`` and return one history row per epoch.

    Each row contains plain floats: epoch, loss (mean training cross-entropy), train_acc and
    test_acc (fractions), seconds (wall time of the epoch, evaluation included) and
    images_per_second (training images divided by the training time, data included).

    The data set moves to ``device`` once as uint8; batches are resized there. With
    ``checkpoint`` set, a checkpoint is saved atomically after every epoch, and an existing
    one is resumed when ``resume`` is true. ``amp`` uses bf16 autocast, or fp16 with a
    gradient scaler on GPUs without bf16. By default it is on for CUDA and for CPUs with
    bf16 instructions (AVX512-BF16 or AMX). ``channels_last`` (default: on for CUDA and the
    CPU) stores activations as (N, H, W, C). ``compile`` runs the model through
    ``torch.compile``; if that is unavailable or fails on the first step, training goes on
    without it after a one-line notice. On CUDA, ``torch.backends.cudnn.benchmark`` is set
    to True for the whole process. ``step_callback(epoch, step)`` runs after every step.
    A KeyboardInterrupt stops training and returns the finished epochs;
    ``TrainingCollapsed`` and ``TrainingDiverged`` stop it with advice.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else choose_device()
    amp = default_amp(device) if amp is None else amp
    channels_last = default_channels_last(device) if channels_last is None else channels_last
    if device.type == "cuda":
        # Every batch has the same shape (the last one aside), so autotuning pays off.
        torch.backends.cudnn.benchmark = True
    data = data.subset(recipe.train_images, recipe.test_images, seed=seed).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)

    steps_per_epoch = math.ceil(len(data.train_labels) / recipe.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, steps_per_epoch))
    loss_function = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    autocast, scaler = _autocast(device, amp)
    forward = _compile_model(model) if compile else model
    compile_checked = not compile

    history: list[dict[str, float]] = []
    start_epoch = 0
    torch.manual_seed(seed)
    random.seed(seed)
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint, device)
        if state["recipe"] != asdict(recipe):
            raise ValueError(f"the checkpoint {checkpoint} was saved with another recipe "
                             f"({state['recipe']['name']!r}). Pass resume=False to start over.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]
        _set_rng_state(state["rng"])
        print(f"Resuming from {checkpoint}: {start_epoch} of {recipe.epochs} epochs done.")

    bar = tqdm(total=recipe.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=recipe.name, disable=not progress, unit="step")
    plot_handle = None
    try:
        for epoch in range(start_epoch, recipe.epochs):
            started = time.perf_counter()
            model.train()
            # Running sums stay on the device; reading them forces a host synchronisation,
            # so that happens only every ``log_every`` steps.
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            dead_steps = torch.zeros((), device=device, dtype=torch.long)
            seen = checked_steps = checked_dead = 0
            order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            batches = iterate_batches(data.train_images, data.train_labels, recipe.batch_size,
                                      recipe.image_size, order)
            for step, (x, y) in enumerate(batches):
                x = x.contiguous(memory_format=memory_format)
                optimizer.zero_grad(set_to_none=True)
                try:
                    logits, loss = _forward_backward(forward, x, y, loss_function, autocast, scaler)
                except Exception as error:
                    # torch.compile compiles on the first call, so a missing compiler or an
                    # unsupported operation shows up here. Errors of the eager model re-raise.
                    if compile_checked or forward is model:
                        raise
                    print(f"torch.compile failed on the first step ({_first_line(error)}); "
                          f"training without compile.")
                    forward = model
                    optimizer.zero_grad(set_to_none=True)
                    logits, loss = _forward_backward(forward, x, y, loss_function, autocast, scaler)
                compile_checked = True
                if scaler is not None:
                    # NOTE: scaler.step reads the inf check back to the host, one sync per step
                    # on GPUs without bf16 (fp16 path only).
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()

                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(dim=1) == y).sum()
                dead_steps += (logits.detach() == 0).all()
                seen += len(y)
                bar.update(1)
                if step_callback is not None:
                    step_callback(epoch, step)
                if (step + 1) % log_every == 0 or step + 1 == steps_per_epoch:
                    dead = int(dead_steps.item())
                    _check_training(loss_sum.item() / seen, dead - checked_dead, step + 1 - checked_steps,
                                    history, epoch)
                    checked_steps, checked_dead = step + 1, dead
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            train_seconds = time.perf_counter() - started

            test_acc = evaluate(model, data.test_images, data.test_labels, recipe.image_size, amp=amp)
            row = {"epoch": float(epoch + 1), "loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                   "test_acc": test_acc, "seconds": time.perf_counter() - started,
                   "images_per_second": seen / train_seconds}
            history.append(row)
            _print_epoch(row, recipe.epochs, bar.write if progress else print)
            if checkpoint is not None:
                save_checkpoint(checkpoint, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                    "recipe": asdict(recipe), "seed": seed, "rng": _rng_state(),
                })
            if live_plot:
                plot_handle = _update_live_plot(plot_handle, {recipe.name: history})
    except KeyboardInterrupt:
        where = ""
        if checkpoint is not None:
            saved = Path(checkpoint).is_file()
            where = f"; the last checkpoint is {checkpoint}" if saved else "; no checkpoint was saved yet"
        print(f"Training interrupted during epoch {len(history) + 1}. The {len(history)} finished "
              f"epochs are kept in the returned history{where}. Run train again with the same "
              f"checkpoint to resume.")
    finally:
        bar.close()
    return history


def _check_training(mean_loss: float, dead_steps: int, steps: int, history: list[dict[str, float]],
                    epoch: int) -> None:
    """Raise if the loss is not finite, or if every logit was zero on each of the last steps."""
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"the training loss became {mean_loss} in epoch {epoch + 1}, so the weights are no longer "
            f"usable. Lower the learning rate or use a warm-up. The last checkpoint (end of epoch "
            f"{len(history)}) is unchanged.", history)
    if steps >= 5 and dead_steps == steps:
        raise TrainingCollapsed(
            f"training collapsed in epoch {epoch + 1}: for the last {steps} steps every logit was "
            f"exactly 0 and the loss sat at ln 10 = {math.log(10):.6f}. NiN ends with a ReLU before "
            f"global average pooling, and once all of the last block's outputs are negative before "
            f"that ReLU, every gradient is 0 and the network can never recover (a dead ReLU). "
            f"Restart with another seed, a lower learning rate or a warm-up (e.g. IMPROVED_RECIPE).",
            history)


def _update_live_plot(handle: Any, histories: dict[str, list[dict[str, float]]]) -> Any:
    import matplotlib.pyplot as plt
    from IPython.display import display

    figure = plot_history(histories)
    if handle is None:
        handle = display(figure, display_id=True)
    else:
        handle.update(figure)
    plt.close(figure)
    return handle


def plot_history(histories: dict[str, list[dict[str, float]]]) -> Any:
    """Plot loss and accuracy per epoch for one or more named histories; return the figure."""
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, history in histories.items():
        epochs = [row["epoch"] for row in history]
        # One color per run in both panels: train solid, test dashed.
        (loss_line,) = loss_axis.plot(epochs, [row["loss"] for row in history], marker="o", label=name)
        color = loss_line.get_color()
        accuracy_axis.plot(epochs, [row["train_acc"] for row in history], marker="o", color=color,
                           label=f"{name}: train")
        accuracy_axis.plot(epochs, [row["test_acc"] for row in history], marker="s", linestyle="--", color=color,
                           label=f"{name}: test")
    for axis in (loss_axis, accuracy_axis):
        axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # epochs are whole numbers
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    loss_axis.legend(fontsize=8)
    accuracy_axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Return an int64 (num_classes, num_classes) matrix: row = true class, column = predicted."""
    index = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str]) -> Any:
    """Plot a confusion matrix with counts in each cell; return the figure."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 5.5))
    axis.imshow(matrix, cmap="Blues")
    for row in range(len(classes)):
        for column in range(len(classes)):
            value = int(matrix[row, column])
            color = "white" if value > matrix.max() / 2 else "black"
            axis.text(column, row, str(value), ha="center", va="center", fontsize=7, color=color)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(classes)), classes, fontsize=8)
    axis.set(xlabel="predicted class", ylabel="true class")
    figure.tight_layout()
    return figure


def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                       classes: Sequence[str], count: int = 12) -> Any:
    """Show up to ``count`` misclassified uint8 images (N, 28, 28) as 'true -> predicted'."""
    import matplotlib.pyplot as plt

    wrong = (labels.cpu() != predictions.cpu()).nonzero().flatten()[:count]
    columns = 6
    rows = max(1, math.ceil(len(wrong) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, wrong.tolist(), strict=False):
        axis.imshow(images[index].cpu(), cmap="gray_r")
        axis.set_title(f"{classes[labels[index]]}\n-> {classes[predictions[index]]}", fontsize=7)
    figure.tight_layout()
    return figure
