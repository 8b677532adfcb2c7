"""The NiN block, the NiN network and their shape, parameter and FLOP helpers (notebooks 3 and 4)."""

import itertools

import pytest
import torch
from torch import nn

import nin_helpers as nh

NIN_PARAMETERS = 1_992_166

# Output shapes (C, H, W) of NiN's children for one 1x224x224 image, worked out by hand with the output-size formula.
NIN_SHAPES_AT_224 = [
    ("block1", (96, 54, 54)),
    ("pool1", (96, 26, 26)),
    ("block2", (256, 26, 26)),
    ("pool2", (256, 12, 12)),
    ("block3", (384, 12, 12)),
    ("pool3", (384, 5, 5)),
    ("dropout", (384, 5, 5)),
    ("block4", (10, 5, 5)),
    ("gap", (10, 1, 1)),
    ("flatten", (10,)),
]


@pytest.fixture(scope="module")
def model() -> nh.NiN:
    torch.manual_seed(0)
    return nh.NiN().eval()


def torch_output_size(layer: nn.Module, size: int) -> int | None:
    """Return the output side of ``layer`` on a (1, 1, size, size) input, or None if PyTorch raises."""
    try:
        with torch.no_grad():
            return layer(torch.zeros(1, 1, size, size)).shape[-1]
    except RuntimeError:
        return None


def our_output_size(**settings) -> int | None:
    try:
        return nh.conv_output_size(**settings)
    except ValueError:
        return None


def torch_minimum_input_size(model: nn.Sequential, limit: int = 200) -> int:
    """Find the smallest square input that the layers of ``model`` run on, by real forward passes."""
    for size in range(1, limit + 1):
        try:
            with torch.no_grad():
                # nn.Sequential.forward skips NiN's own input check, so PyTorch's layers decide.
                nn.Sequential.forward(model, torch.zeros(1, 1, size, size))
        except RuntimeError:
            continue
        return size
    raise AssertionError(f"no square input size up to {limit} pixels runs through the model")


# ---------------------------------------------------------------------------------------
# conv_output_size
# ---------------------------------------------------------------------------------------

SIZES = range(1, 13)
STRIDES = range(1, 5)
PADDINGS = range(0, 4)


@pytest.mark.parametrize("kernel_size", range(1, 8))
def test_conv_output_size_matches_conv2d(kernel_size):
    mismatches, accepted, rejected = [], 0, 0
    for stride, padding, dilation in itertools.product(STRIDES, PADDINGS, (1, 2)):
        conv = nn.Conv2d(1, 1, kernel_size, stride=stride, padding=padding, dilation=dilation)
        for size in SIZES:
            expected = torch_output_size(conv, size)
            actual = our_output_size(size=size, kernel_size=kernel_size, stride=stride, padding=padding,
                                     dilation=dilation)
            if expected != actual:
                mismatches.append((size, stride, padding, dilation, expected, actual))
            accepted += expected is not None
            rejected += expected is None
    assert mismatches == [], "(size, stride, padding, dilation, torch, ours)"
    assert accepted > 0
    if kernel_size > 1:
        assert rejected > 0


@pytest.mark.parametrize("kernel_size", range(1, 8))
def test_conv_output_size_matches_max_pool(kernel_size):
    mismatches, accepted, rejected = [], 0, 0
    for stride, padding in itertools.product(STRIDES, PADDINGS):
        pool = nn.MaxPool2d(kernel_size, stride=stride, padding=padding)
        for size in SIZES:
            expected = torch_output_size(pool, size)
            actual = our_output_size(size=size, kernel_size=kernel_size, stride=stride, padding=padding,
                                     pooling=True)
            if expected != actual:
                mismatches.append((size, stride, padding, expected, actual))
            accepted += expected is not None
            rejected += expected is None
    assert mismatches == [], "(size, stride, padding, torch, ours)"
    assert accepted > 0
    assert rejected > 0


@pytest.mark.parametrize(
    ("settings", "parameter"),
    [
        (dict(size=5, kernel_size=11), "kernel_size"),
        (dict(size=5, kernel_size=4, padding=0, dilation=2), "kernel_size"),
        (dict(size=5, kernel_size=3, stride=0), "stride"),
        (dict(size=5, kernel_size=3, stride=-1), "stride"),
        (dict(size=5, kernel_size=3, padding=-1), "padding"),
        (dict(size=0, kernel_size=1), "size"),
        (dict(size=5, kernel_size=0), "kernel_size"),
        (dict(size=5, kernel_size=3, dilation=0), "dilation"),
        (dict(size=5, kernel_size=3, padding=2, pooling=True), "padding"),
    ],
)
def test_conv_output_size_invalid_setting(settings, parameter):
    with pytest.raises(ValueError, match=parameter):
        nh.conv_output_size(**settings)


def test_conv_output_size_rejects_float():
    with pytest.raises(TypeError, match="kernel_size"):
        nh.conv_output_size(10, 3.0)


def test_conv_output_size_nin_first_layer():
    assert nh.conv_output_size(224, 11, stride=4, padding=0) == 54


# ---------------------------------------------------------------------------------------
# nin_block, count_flops, summarize_nin_block, nin_block_report
# ---------------------------------------------------------------------------------------


def test_nin_block_layers():
    block = nh.nin_block(3, 16, kernel_size=5, stride=2, padding=1)
    types = [type(layer) for layer in block]
    assert types == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]

    first, second, third = block[0], block[2], block[4]
    assert (first.in_channels, first.out_channels) == (3, 16)
    assert first.kernel_size == (5, 5)
    assert first.stride == (2, 2)
    assert first.padding == (1, 1)
    for conv in (second, third):
        assert (conv.in_channels, conv.out_channels) == (16, 16)
        assert conv.kernel_size == (1, 1)
        assert conv.stride == (1, 1)
        assert conv.padding == (0, 0)


def test_nin_block_output_shape_follows_formula():
    block = nh.nin_block(3, 16, kernel_size=5, stride=2, padding=1)
    side = nh.conv_output_size(31, 5, stride=2, padding=1)
    assert block(torch.zeros(2, 3, 31, 31)).shape == (2, 16, side, side)


def test_nin_block_parameters_by_hand():
    block = nh.nin_block(1, 96, kernel_size=11, stride=4, padding=0)
    by_hand = (11 * 11 * 1 * 96 + 96) + 2 * (96 * 96 + 96)
    assert nh.count_parameters(block) == by_hand
    assert by_hand == 30_336


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("in_channels", 0),
        ("in_channels", -1),
        ("out_channels", 0),
        ("out_channels", -3),
        ("kernel_size", 0),
        ("kernel_size", -1),
        ("stride", 0),
        ("stride", -2),
        ("padding", -1),
    ],
)
def test_nin_block_invalid_value(parameter, value):
    settings = dict(in_channels=1, out_channels=8, kernel_size=3, stride=1, padding=1)
    settings[parameter] = value
    with pytest.raises(ValueError, match=parameter):
        nh.nin_block(**settings)


def test_count_flops_one_conv_by_hand():
    conv = nn.Conv2d(1, 96, kernel_size=11, stride=4)
    # One multiply-add is 2 FLOPs; each of the 96x54x54 outputs needs 11*11*1 of them.
    assert nh.count_flops(conv, torch.zeros(1, 1, 224, 224)) == 2 * (11 * 11 * 1) * (96 * 54 * 54)


def test_summarize_nin_block_matches_real_block():
    torch.manual_seed(0)
    block = nh.nin_block(96, 256, kernel_size=5, stride=1, padding=2)
    x = torch.zeros(1, 96, 26, 26)
    summary = nh.summarize_nin_block(96, 256, kernel_size=5, stride=1, padding=2, input_size=26)
    assert summary.output_shape == tuple(block(x).shape[1:])
    assert summary.parameters == nh.count_parameters(block)
    assert summary.flops == nh.count_flops(block, x)


def test_nin_block_report_valid():
    text = nh.nin_block_report(1, 96, kernel_size=11, stride=4, padding=0, input_size=224)
    assert "output 96x54x54" in text
    assert "30,336" in text
    assert "175.24 MFLOPs" in text


def test_nin_block_report_kernel_too_large():
    text = nh.nin_block_report(1, 96, kernel_size=11, stride=4, padding=0, input_size=5)
    assert text.startswith("Invalid setting")
    assert "kernel_size=11" in text


def test_nin_block_report_stride_zero():
    text = nh.nin_block_report(1, 96, kernel_size=11, stride=0, padding=0, input_size=224)
    assert text.startswith("Invalid setting")
    assert "stride" in text


# ---------------------------------------------------------------------------------------
# NiN, its input checks and its minimum input size
# ---------------------------------------------------------------------------------------


def test_nin_parameter_count(model):
    assert nh.count_parameters(model) == NIN_PARAMETERS


def test_nin_children_order(model):
    names = [name for name, _ in model.named_children()]
    assert names == [name for name, _ in NIN_SHAPES_AT_224]


def test_nin_layer_shapes_at_224(model):
    rows = nh.layer_table(model, (1, 1, 224, 224))
    assert [(row.name, row.output_shape) for row in rows] == NIN_SHAPES_AT_224


def test_nin_forward_gives_logits(model):
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 224, 224)).shape == (2, 10)


def test_nin_minimum_input_size(model):
    assert nh.minimum_input_size(model) == 67
    assert model.min_input_size == 67


def test_nin_minimum_agrees_with_torch(model):
    assert torch_minimum_input_size(model) == nh.minimum_input_size(model)


def test_nin_accepts_minimum(model):
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 67, 67)).shape == (1, 10)


@pytest.mark.parametrize("size", [66, 28])
def test_nin_rejects_small_input(model, size):
    with pytest.raises(ValueError) as error:
        model(torch.zeros(1, 1, size, size))
    message = str(error.value)
    assert "67" in message
    assert f"{size}x{size}" in message


def test_nin_rejects_rgb_input(model):
    with pytest.raises(ValueError) as error:
        model(torch.zeros(1, 3, 224, 224))
    message = str(error.value)
    assert "1-channel" in message
    assert "grayscale" in message


def test_nin_rejects_unbatched_input(model):
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.zeros(1, 224, 224))


def test_spatial_output_size_names_failing_layer(model):
    with pytest.raises(ValueError, match="pool3"):
        nh.spatial_output_size(model, 66)
    with pytest.raises(ValueError, match=r"block1\.0"):
        nh.spatial_output_size(model, 10)


def test_minimum_input_size_follows_layers():
    # A 2x2 last pooling accepts the 2x2 map that a 66x66 input gives, so the minimum drops below 67.
    variant = nh.NiN()
    variant.pool3 = nn.MaxPool2d(2, stride=2)
    assert nh.minimum_input_size(variant) < 67
    assert nh.minimum_input_size(variant) == torch_minimum_input_size(variant)


def test_minimum_input_size_follows_first_kernel():
    variant = nh.NiN()
    variant.block1 = nh.nin_block(1, 96, kernel_size=7, stride=4, padding=0)
    assert nh.minimum_input_size(variant) < 67
    assert nh.minimum_input_size(variant) == torch_minimum_input_size(variant)


# ---------------------------------------------------------------------------------------
# layer_table and nin_input_size_report
# ---------------------------------------------------------------------------------------


def test_layer_table_flops_match_whole_model(model):
    rows = nh.layer_table(model, (1, 1, 224, 224))
    assert sum(row.flops for row in rows) == nh.count_flops(model, torch.zeros(1, 1, 224, 224))


def test_layer_table_parameters_match_whole_model(model):
    rows = nh.layer_table(model, (1, 1, 224, 224))
    assert sum(row.parameters for row in rows) == NIN_PARAMETERS


def test_layer_table_keeps_training_mode():
    network = nh.NiN().train()
    nh.layer_table(network, (1, 1, 67, 67))
    assert network.training


def test_format_layer_table_total():
    rows = [nh.LayerRow("a", "Conv2d", (4, 2, 2), 1_000, 2_000), nh.LayerRow("b", "ReLU", (4, 2, 2), 0, 0)]
    last_line = nh.format_layer_table(rows).splitlines()[-1]
    assert last_line.split() == ["total", "1,000", "2,000"]


def test_nin_input_size_report_too_small():
    text = nh.nin_input_size_report(66)
    assert "too small" in text
    assert "67x67" in text
    assert "pool3" in text


def test_nin_input_size_report_minimum():
    text = nh.nin_input_size_report(67)
    assert "works" in text
    assert "10x1x1" in text
