"""Notebook 2 helpers: a 1x1 convolution is a fully connected layer applied to every pixel."""

import pytest
import torch
from torch import nn

import nin_helpers as nh


def test_pixels_as_samples_row_order():
    x = torch.randn(2, 3, 4, 5)  # height 4 and width 5 differ, so swapping them would show
    rows = nh.pixels_as_samples(x)
    assert rows.shape == (2 * 4 * 5, 3)
    expected = torch.stack([x[n, :, i, j] for n in range(2) for i in range(4) for j in range(5)])
    assert torch.equal(rows, expected)


def test_pixels_as_samples_rejects_a_single_image():
    with pytest.raises(ValueError, match="4-D"):
        nh.pixels_as_samples(torch.zeros(3, 4, 5))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_from_conv1x1_gives_the_same_output(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, kernel_size=1, bias=bias)
    x = torch.randn(3, 6, 7, 5)
    linear = nh.linear_from_conv1x1(conv)
    assert (linear.in_features, linear.out_features) == (6, 4)
    assert (linear.bias is None) == (not bias)
    torch.testing.assert_close(linear(nh.pixels_as_samples(x)), nh.pixels_as_samples(conv(x)))


def test_linear_from_conv1x1_valid_padding_dtype():
    conv = nn.Conv2d(3, 2, kernel_size=1, padding="valid", dtype=torch.float64)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    linear = nh.linear_from_conv1x1(conv)
    assert linear.weight.dtype == torch.float64
    torch.testing.assert_close(linear(nh.pixels_as_samples(x)), nh.pixels_as_samples(conv(x)))


def test_linear_from_conv1x1_copies_the_weights():
    conv = nn.Conv2d(3, 2, kernel_size=1)
    weight = conv.weight.detach().clone()
    linear = nh.linear_from_conv1x1(conv)
    with torch.no_grad():
        linear.weight.add_(1.0)
    assert torch.equal(conv.weight, weight)
    assert linear.weight.requires_grad


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, kernel_size=3),
        nn.Conv2d(3, 8, kernel_size=(1, 3)),
        nn.Conv2d(3, 8, kernel_size=1, stride=2),
        nn.Conv2d(3, 8, kernel_size=1, padding=1),
        nn.Conv2d(4, 8, kernel_size=1, groups=2),
    ],
)
def test_linear_from_conv1x1_rejects_other_convolutions(conv):
    with pytest.raises(ValueError, match="1x1 convolution|groups"):
        nh.linear_from_conv1x1(conv)


def test_conv1x1_report_counts_match_real_layers():
    in_channels, out_channels, size = 2, 3, 4
    conv = nh.count_parameters(nn.Conv2d(in_channels, out_channels, 1))
    fc = nh.count_parameters(nn.Linear(in_channels * size * size, out_channels * size * size))
    assert (conv, fc) == (9, 1584)
    assert nh.conv1x1_report(in_channels, out_channels, size) == (
        "map 2x4x4 -> 3x4x4\n"
        "1x1 convolution: 9 parameters (independent of the map size)\n"
        "FC layer over the flattened map: 1,584 parameters\n"
        "ratio FC / 1x1: 176x"
    )


def test_conv1x1_report_conv_count_ignores_map_size():
    expected = "1x1 convolution: 147,840 parameters (independent of the map size)"
    assert nh.conv1x1_report(384, 384, 1).splitlines()[1] == expected
    assert nh.conv1x1_report(384, 384, 64).splitlines()[1] == expected


@pytest.mark.parametrize(
    ("args", "name"),
    [((0, 4, 4), "in_channels"), ((4, -1, 4), "out_channels"), ((4, 4, 0), "size"), ((4, 4, 2.5), "size")],
)
def test_conv1x1_report_explains_invalid_settings(args, name):
    text = nh.conv1x1_report(*args)
    assert text.startswith(f"Invalid setting: {name}=")
