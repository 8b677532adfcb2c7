"""Correctness of the speed options of ``nh.train``: memory format, mixed precision, compile, cuDNN.

These tests check results and side effects only. Speed is measured by benchmarks/bench_training.py.
"""

import math
from dataclasses import replace

import pytest
import torch

import nin_helpers as nh

# 67 pixels is the smallest input NiN accepts; 4 steps of 32 images keep each run to seconds on a CPU.
TINY = nh.Recipe(name="tiny", epochs=1, batch_size=32, image_size=67, train_images=128, test_images=64)


def train_tiny(fashion, recipe=TINY, **options):
    model = nh.build_nin(recipe, seed=0)
    history = nh.train(model, fashion, recipe, "cpu", seed=0, progress=False, **options)
    return model, history


@pytest.fixture(scope="module")
def eager_history(fashion):
    """History of an fp32 NCHW run without compile, the baseline of the compile tests."""
    return train_tiny(fashion, amp=False, channels_last=False)[1]


def test_channels_last_matches_nchw(fashion):
    nchw_model, nchw = train_tiny(fashion, amp=False, channels_last=False)
    last_model, last = train_tiny(fashion, amp=False, channels_last=True)
    assert last[0]["loss"] == pytest.approx(nchw[0]["loss"], rel=1e-4)
    for name, tensor in nchw_model.state_dict().items():
        torch.testing.assert_close(last_model.state_dict()[name], tensor, rtol=1e-3, atol=1e-5, msg=name)


def test_channels_last_keeps_model_format(fashion):
    model, _ = train_tiny(fashion, amp=False, channels_last=True)
    assert model.block1[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_loss_close_to_fp32(fashion):
    _, fp32 = train_tiny(fashion, amp=False, channels_last=True)
    _, bf16 = train_tiny(fashion, amp=True, channels_last=True)
    assert math.isfinite(bf16[0]["loss"])
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], abs=0.05)


def test_default_options_reproducible(fashion):
    _, first = train_tiny(fashion)
    _, second = train_tiny(fashion)
    assert [row["loss"] for row in first] == [row["loss"] for row in second]


def test_evaluate_with_default_amp_matches_history(fashion):
    model, history = train_tiny(fashion)
    subset = fashion.subset(TINY.train_images, TINY.test_images, seed=0)
    accuracy = nh.evaluate(model, subset.test_images, subset.test_labels, TINY.image_size,
                           amp=nh.default_amp("cpu"))
    assert accuracy == history[0]["test_acc"]


def test_default_amp_follows_cpu_bf16(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert nh.default_amp("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert nh.default_amp("cpu") is True


def test_default_amp_without_cpu_checks(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert nh.default_amp("cpu") is False


def test_default_amp_by_device_type():
    assert nh.default_amp("cuda") is True
    assert nh.default_amp(torch.device("mps")) is False


def test_default_channels_last_by_device_type():
    assert nh.default_channels_last("cuda") is True
    assert nh.default_channels_last("cpu") is True
    assert nh.default_channels_last("mps") is False


def test_cudnn_benchmark_untouched_off_cuda(fashion, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    train_tiny(fashion, amp=False)
    assert torch.backends.cudnn.benchmark is False


def test_compile_missing_falls_back(fashion, eager_history, monkeypatch, capsys):
    monkeypatch.delattr(torch, "compile")
    _, history = train_tiny(fashion, amp=False, channels_last=False, compile=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "torch.compile" in line] == [
        f"torch.compile is not available in PyTorch {torch.__version__}; training without compile."
    ]
    assert history[0]["loss"] == eager_history[0]["loss"]


def test_compile_error_falls_back(fashion, eager_history, monkeypatch, capsys):

    def unsupported(model):
        raise RuntimeError("Python 3.99 is not supported by torch.compile")

    monkeypatch.setattr(torch, "compile", unsupported)
    _, history = train_tiny(fashion, amp=False, channels_last=False, compile=True)
    notices = [line for line in capsys.readouterr().out.splitlines() if "torch.compile" in line]
    assert len(notices) == 1
    assert "RuntimeError: Python 3.99 is not supported" in notices[0]
    assert history[0]["loss"] == eager_history[0]["loss"]


def test_compile_first_step_failure_falls_back(fashion, eager_history, monkeypatch, capsys):
    calls = []

    def failing_on_call(model):
        def forward(x):
            calls.append(x.shape)
            raise RuntimeError("backend compiler failed\nlong traceback from the compiler")

        return forward

    monkeypatch.setattr(torch, "compile", failing_on_call)
    model, history = train_tiny(fashion, amp=False, channels_last=False, compile=True)
    notices = [line for line in capsys.readouterr().out.splitlines() if "torch.compile" in line]
    assert len(calls) == 1
    assert notices == ["torch.compile failed on the first step (RuntimeError: backend compiler failed); "
                       "training without compile."]
    assert history[0]["loss"] == eager_history[0]["loss"]


def test_compile_later_failure_raises(fashion, monkeypatch):
    calls = []

    def failing_on_third_call(model):
        def forward(x):
            calls.append(x.shape)
            if len(calls) == 3:
                raise RuntimeError("recompilation failed")
            return model(x)

        return forward

    monkeypatch.setattr(torch, "compile", failing_on_third_call)
    with pytest.raises(RuntimeError, match="recompilation failed"):
        train_tiny(fashion, amp=False, channels_last=False, compile=True)


def test_compile_eager_backend_matches(fashion, eager_history, monkeypatch):
    real_compile = torch.compile
    compiled = []

    def eager_backend(model):
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_backend)
    model, history = train_tiny(fashion, amp=False, channels_last=False, compile=True)
    assert compiled == [model]
    assert history[0]["loss"] == pytest.approx(eager_history[0]["loss"], rel=1e-5)


def test_checkpoint_keys_unchanged_by_compile(fashion, monkeypatch, tmp_path):
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="eager"))
    model, _ = train_tiny(fashion, amp=False, channels_last=False, compile=True, checkpoint=tmp_path / "run.pt")
    state = nh.load_checkpoint(tmp_path / "run.pt")
    assert set(state["model"]) == set(model.state_dict())


def test_train_syncs_independent_of_steps(fashion, monkeypatch):
    """Host reads of tensors (item, bool, float, int, tolist) happen per log interval and epoch, not per step."""
    reads = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    counts = []
    for train_images in (64, 128):  # 2 and 4 steps, both below log_every
        reads.clear()
        train_tiny(fashion, replace(TINY, train_images=train_images), amp=False, log_every=1000)
        counts.append(len(reads))
    assert counts[0] == counts[1]
