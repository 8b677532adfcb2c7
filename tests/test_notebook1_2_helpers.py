"""Tests for the helpers of notebook 1 (FC heads) and notebook 2 (1x1 convolutions)."""

import math

import pytest
import torch
from torch import nn
from torchvision.models import alexnet, vgg11

import nin_helpers as nh

# Parameter counts of torchvision's models (torchvision 0.29), 1000 classes.
ALEXNET_TOTAL = 61_100_840
ALEXNET_HEAD = 58_631_144
VGG11_TOTAL = 132_863_336
VGG11_HEAD = 123_642_856


def fc_head_like_alexnet(flat_features: int, num_classes: int) -> nn.Sequential:
    """Build AlexNet's head for ``flat_features`` inputs on the meta device (no memory)."""
    with torch.device("meta"):
        return nn.Sequential(
            nn.Linear(flat_features, 4096),
            nn.Linear(4096, 4096),
            nn.Linear(4096, num_classes),
        )


# ---------------------------------------------------------------------------------------
# Shared helpers (more in test_shared_helpers.py)
# ---------------------------------------------------------------------------------------


def test_count_parameters_linear_and_conv():
    assert nh.count_parameters(nn.Linear(10, 3)) == 10 * 3 + 3
    assert nh.count_parameters(nn.Conv2d(4, 6, kernel_size=3)) == 6 * 4 * 3 * 3 + 6
    assert nh.count_parameters(nn.Conv2d(4, 6, kernel_size=1, bias=False)) == 24


# ---------------------------------------------------------------------------------------
# Notebook 1: FC heads
# ---------------------------------------------------------------------------------------


def test_head_share_alexnet():
    with torch.device("meta"):
        model = alexnet(weights=None)
    head, total = nh.head_parameter_share(model)
    assert head == ALEXNET_HEAD
    assert total == ALEXNET_TOTAL
    assert 0.95 < head / total < 0.97


def test_head_share_vgg11():
    with torch.device("meta"):
        model = vgg11(weights=None)
    head, total = nh.head_parameter_share(model, head="classifier")
    assert head == VGG11_HEAD
    assert total == VGG11_TOTAL
    assert 0.92 < head / total < 0.94


def test_head_share_unknown_submodule_raises():
    with pytest.raises(AttributeError):
        nh.head_parameter_share(nn.Sequential(nn.Linear(2, 2)), head="classifier")


def test_alexnet_head_at_224_matches_torchvision():
    result = nh.alexnet_fc_head_parameters(224)
    assert result["feature_shape"] == (256, 6, 6)
    assert result["flat_features"] == 9216
    assert result["head_parameters"] == ALEXNET_HEAD


@pytest.fixture(scope="module")
def alexnet_features() -> nn.Module:
    """AlexNet's convolutional part with real (random) weights on the CPU."""
    torch.manual_seed(0)
    return alexnet(weights=None).features


@pytest.mark.parametrize("input_size", [63, 100, 224, 320])
def test_alexnet_head_matches_real_feature_map(alexnet_features, input_size):
    # The reference runs AlexNet's real convolutions on a real tensor, not on the meta device.
    with torch.no_grad():
        feature_map = alexnet_features(torch.zeros(1, 3, input_size, input_size))
    flat = math.prod(feature_map.shape[1:])
    result = nh.alexnet_fc_head_parameters(input_size, num_classes=10)

    assert result["feature_shape"] == tuple(feature_map.shape[1:])
    assert result["flat_features"] == flat
    assert result["head_parameters"] == nh.count_parameters(fc_head_like_alexnet(flat, 10))


def test_alexnet_head_grows_with_input_size():
    sizes = [63, 96, 128, 224, 288, 384, 512]
    heads = [nh.alexnet_fc_head_parameters(size)["head_parameters"] for size in sizes]
    assert heads == sorted(heads)
    assert len(set(heads)) == len(heads)
    assert heads[-1] > 4 * ALEXNET_HEAD


def test_alexnet_head_smallest_valid_input_is_63():
    assert nh.alexnet_fc_head_parameters(63)["feature_shape"] == (256, 1, 1)
    with pytest.raises(ValueError, match="at least 63x63"):
        nh.alexnet_fc_head_parameters(62)


@pytest.mark.parametrize("input_size", [0, -5, 2.5, True, "224"])
def test_alexnet_head_rejects_invalid_input_size(input_size):
    with pytest.raises(ValueError, match="input_size"):
        nh.alexnet_fc_head_parameters(input_size)


def test_alexnet_head_rejects_invalid_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        nh.alexnet_fc_head_parameters(224, num_classes=0)


def test_fc_head_report_valid_size():
    text = nh.fc_head_report(224)
    assert "feature map 256x6x6" in text
    assert "9,216" in text
    assert f"{ALEXNET_HEAD:,}" in text


@pytest.mark.parametrize("input_size", [40, 62, 0, -1])
def test_fc_head_report_invalid_size_is_text(input_size):
    text = nh.fc_head_report(input_size)
    assert text.startswith("Invalid setting:")
    assert f"input_size={input_size}" in text


def test_nin_far_smaller_than_alexnet_head():
    nin_parameters = nh.count_parameters(nh.NiN())
    assert nin_parameters == 1_992_166
    assert ALEXNET_HEAD / nin_parameters > 29
    head_10 = nh.alexnet_fc_head_parameters(224, num_classes=10)["head_parameters"]
    assert head_10 / nin_parameters > 27


# ---------------------------------------------------------------------------------------
# Notebook 2: 1x1 convolutions (more in test_conv1x1.py)
# ---------------------------------------------------------------------------------------


def test_conv1x1_matches_linear_random_shapes():
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        batch, c_in, c_out, height, width = (int(v) for v in torch.randint(1, 12, (5,), generator=generator))
        bias = bool(torch.randint(0, 2, (1,), generator=generator))
        conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)
        x = torch.randn(batch, c_in, height, width, generator=generator)
        linear = nh.linear_from_conv1x1(conv)
        with torch.no_grad():
            expected = nh.pixels_as_samples(conv(x))
            result = linear(nh.pixels_as_samples(x))
        assert (linear.bias is None) == (not bias)
        assert torch.allclose(result, expected, atol=1e-5), (batch, c_in, c_out, height, width, bias)


def test_linear_from_conv1x1_keeps_dtype():
    conv = nn.Conv2d(4, 2, kernel_size=1, dtype=torch.float64)
    linear = nh.linear_from_conv1x1(conv)
    assert linear.weight.dtype == torch.float64
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(linear(nh.pixels_as_samples(x)), nh.pixels_as_samples(conv(x)))


@pytest.mark.parametrize("in_channels, out_channels, size", [(3, 1, 32), (96, 96, 54), (1, 1, 1), (7, 5, 3)])
def test_conv1x1_report_counts_match_modules(in_channels, out_channels, size):
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    with torch.device("meta"):
        fc = nn.Linear(in_channels * size * size, out_channels * size * size)
    text = nh.conv1x1_report(in_channels, out_channels, size)
    assert f"1x1 convolution: {nh.count_parameters(conv):,} parameters" in text
    assert f"FC layer over the flattened map: {nh.count_parameters(fc):,} parameters" in text


@pytest.mark.parametrize(
    "in_channels, out_channels, size, name",
    [
        (0, 4, 8, "in_channels"),
        (3, 0, 8, "out_channels"),
        (3, 4, 0, "size"),
        (3, 4, -2, "size"),
        (2.5, 4, 8, "in_channels"),
    ],
)
def test_conv1x1_report_invalid_is_text(in_channels, out_channels, size, name):
    text = nh.conv1x1_report(in_channels, out_channels, size)
    assert text.startswith("Invalid setting:")
    assert name in text
