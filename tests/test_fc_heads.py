"""Notebook 1 helpers: the size of AlexNet's fully connected head."""

import pytest
import torch
from torch import nn
from torchvision.models import alexnet

import nin_helpers as nh


def test_head_parameter_share_of_torchvision_alexnet():
    with torch.device("meta"):
        model = alexnet(weights=None)
    assert nh.head_parameter_share(model) == (58_631_144, 61_100_840)
    assert nh.head_parameter_share(model, head="features") == (2_469_696, 61_100_840)


def test_head_at_224_matches_torchvision_classifier():
    # At 224 pixels the features are already 6x6, so torchvision's adaptive pooling changes nothing.
    with torch.device("meta"):
        classifier = alexnet(weights=None, num_classes=10).classifier
    head = nh.alexnet_fc_head_parameters(224, num_classes=10)
    assert head["feature_shape"] == (256, 6, 6)
    assert head["flat_features"] == 9216
    assert head["head_parameters"] == nh.count_parameters(classifier)


@pytest.mark.parametrize("size", [63, 95, 128, 227, 300])
def test_feature_shape_matches_a_real_forward_pass(size):
    features = alexnet(weights=None).features.eval()
    with torch.no_grad():
        real = tuple(features(torch.zeros(1, 3, size, size)).shape[1:])
    head = nh.alexnet_fc_head_parameters(size)
    assert head["feature_shape"] == real
    assert head["flat_features"] == real[0] * real[1] * real[2]


@pytest.mark.parametrize(("size", "num_classes"), [(63, 1000), (512, 1000), (320, 10)])
def test_head_parameters_match_the_linear_layers(size, num_classes):
    head = nh.alexnet_fc_head_parameters(size, num_classes=num_classes)
    with torch.device("meta"):
        layers = nn.Sequential(
            nn.Linear(head["flat_features"], 4096), nn.Linear(4096, 4096), nn.Linear(4096, num_classes)
        )
    assert head["head_parameters"] == nh.count_parameters(layers)


def test_smallest_valid_input_is_63():
    assert nh.alexnet_fc_head_parameters(63)["feature_shape"] == (256, 1, 1)
    with pytest.raises(ValueError, match="63"):
        nh.alexnet_fc_head_parameters(62)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"input_size": 0}, "input_size"),
        ({"input_size": -5}, "input_size"),
        ({"input_size": 224.0}, "input_size"),
        ({"input_size": True}, "input_size"),
        ({"input_size": 224, "num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        nh.alexnet_fc_head_parameters(**kwargs)


def test_fc_head_report_text():
    assert nh.fc_head_report(224) == (
        "input 3x224x224 -> feature map 256x6x6\nflattened length: 9,216\nFC head parameters: 58,631,144"
    )


@pytest.mark.parametrize("size", [0, 32, 62])
def test_fc_head_report_explains_invalid_sizes(size):
    text = nh.fc_head_report(size)
    assert text.startswith("Invalid setting:")
    assert "input_size" in text
