"""Counting, formatting, shapes and sliders: the helpers every notebook uses."""

import ipywidgets as widgets
import pytest
import torch
from torch import nn

import nin_helpers as nh


def test_count_parameters_includes_frozen_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    model[0].requires_grad_(False)
    assert nh.count_parameters(model) == (3 * 4 + 4) + 4 * 2
    assert nh.count_parameters(nn.ReLU()) == 0


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (999, "999"), (1_992_166, "1,992,166"), (1234.6, "1,235")])
def test_format_count(value, text):
    assert nh.format_count(value) == text


@pytest.mark.parametrize(
    ("flops", "text"),
    [
        (0, "0 FLOPs"),
        (999, "999 FLOPs"),
        (1_000, "1.00 kFLOPs"),
        (2_500_000, "2.50 MFLOPs"),
        (999_999, "1.00 MFLOPs"),
        (999_994_999, "999.99 MFLOPs"),
        (999.6, "1.00 kFLOPs"),
        (1.23e9, "1.23 GFLOPs"),
        (4e12, "4.00 TFLOPs"),
    ],
)
def test_format_flops_picks_the_largest_prefix(flops, text):
    assert nh.format_flops(flops) == text


def test_output_shape_matches_a_real_forward_pass():
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    assert nh.output_shape(model, (2, 3, 37, 41)) == tuple(model(torch.zeros(2, 3, 37, 41)).shape)


def test_output_shape_leaves_the_module_unchanged():
    model = nn.Conv2d(3, 8, 3)
    weight = model.weight.detach().clone()
    nh.output_shape(model, (1, 3, 16, 16))
    assert model.weight.device.type == "cpu"
    assert torch.equal(model.weight, weight)


def test_output_shape_handles_inputs_too_large_to_allocate():
    # 64 x 3 x 8192 x 8192 float32 is 48 GiB: only the meta device makes this possible.
    assert nh.output_shape(nn.Conv2d(3, 1, 1), (64, 3, 8192, 8192)) == (64, 1, 8192, 8192)


def test_int_slider_settings():
    slider = nh.int_slider(224, 32, 512, "input size", step=4)
    assert (slider.value, slider.min, slider.max, slider.step) == (224, 32, 512, 4)
    assert slider.description == "input size"
    assert slider.continuous_update is False


def test_build_sliders_reports_current_values():
    calls = []

    def report(a, b):
        calls.append((a, b))
        return f"{a}, {b}"

    a = nh.int_slider(3, 1, 10, "a")
    b = widgets.IntSlider(value=2, min=0, max=5)
    assert b.continuous_update is True
    panel = nh.build_sliders(report, a=a, b=b)

    # The report ran before any slider moved, with the initial values.
    assert calls
    assert calls[-1] == (3, 2)
    # A slider created elsewhere is switched to update on release only.
    assert b.continuous_update is False
    assert a in panel.children
    assert b in panel.children

    a.value = 7
    assert calls[-1] == (7, 2)
