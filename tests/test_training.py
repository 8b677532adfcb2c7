"""Training, failure detection, checkpoints and resume, on small real subsets."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import nin_helpers as nh

# Small enough for a 2-core CPU: 67 pixels is the smallest input NiN accepts.
TINY = nh.Recipe(name="tiny", epochs=2, batch_size=32, image_size=67, train_images=256, test_images=64)


def test_collapse_reproduced_by_dead_relu():
    torch.manual_seed(0)
    model = nh.build_nin(seed=0)
    last_conv = model.block4[4]
    with torch.no_grad():
        last_conv.bias.fill_(-100.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(8, 1, 96, 96)
    y = torch.arange(8) % 10
    for _ in range(3):
        optimizer.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        assert torch.count_nonzero(logits).item() == 0
        assert loss.item() == pytest.approx(math.log(10), abs=1e-6)
        gradient_norm = sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None)
        assert gradient_norm == 0.0


def test_train_stops_on_collapse(fashion, tmp_path):
    model = nh.build_nin(seed=0)
    with torch.no_grad():
        model.block4[4].bias.fill_(-100.0)
    recipe = replace(TINY, epochs=1)
    with pytest.raises(nh.TrainingCollapsed, match="dead ReLU"):
        nh.train(model, fashion, recipe, "cpu", progress=False, log_every=5)


def test_train_stops_on_nan_and_keeps_checkpoint(fashion, tmp_path):
    checkpoint = tmp_path / "run.pt"
    model = nh.build_nin(seed=0)
    history = nh.train(model, fashion, replace(TINY, epochs=1), "cpu", checkpoint=checkpoint, progress=False)
    saved = checkpoint.read_bytes()

    def poison(epoch: int, step: int) -> None:
        with torch.no_grad():
            model.block1[0].weight.fill_(float("nan"))

    longer = replace(TINY, epochs=1, name="tiny")
    with pytest.raises(nh.TrainingDiverged, match="nan"):
        nh.train(model, fashion, replace(longer, epochs=2), "cpu", checkpoint=tmp_path / "other.pt",
                 progress=False, step_callback=poison, log_every=2)
    assert checkpoint.read_bytes() == saved
    assert len(history) == 1


def test_checkpoint_loads_with_weights_only(fashion, tmp_path):
    checkpoint = tmp_path / "run.pt"
    history = nh.train(nh.build_nin(seed=0), fashion, TINY, "cpu", checkpoint=checkpoint, progress=False)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2
    assert state["history"] == history
    for row in state["history"]:
        assert all(type(value) is float for value in row.values())
    assert not list(tmp_path.glob("*.tmp"))
    assert set(state) >= {"model", "optimizer", "epoch", "history", "rng"}


def test_missing_device_is_clear(fashion, tmp_path):
    checkpoint = tmp_path / "run.pt"
    nh.train(nh.build_nin(seed=0), fashion, replace(TINY, epochs=1), "cpu", checkpoint=checkpoint, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            nh.load_checkpoint(checkpoint, "cuda")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        nh.load_checkpoint(tmp_path / "absent.pt")


def test_interrupted_run_resumes_identically(fashion, tmp_path):
    recipe = replace(TINY, epochs=3)
    uninterrupted = nh.build_nin(seed=1)
    full_history = nh.train(uninterrupted, fashion, recipe, "cpu", seed=1, progress=False)

    def interrupt(epoch: int, step: int) -> None:
        if epoch == 1 and step == 3:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "run.pt"
    first = nh.build_nin(seed=1)
    partial = nh.train(first, fashion, recipe, "cpu", seed=1, checkpoint=checkpoint, progress=False,
                       step_callback=interrupt)
    assert len(partial) == 1

    resumed = nh.build_nin(seed=99)  # other weights: everything must come from the checkpoint
    history = nh.train(resumed, fashion, recipe, "cpu", seed=1, checkpoint=checkpoint, progress=False)
    assert len(history) == 3
    for name, tensor in uninterrupted.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert [row["loss"] for row in history] == [row["loss"] for row in full_history]


def test_resume_rejects_other_recipe(fashion, tmp_path):
    checkpoint = tmp_path / "run.pt"
    nh.train(nh.build_nin(seed=0), fashion, replace(TINY, epochs=1), "cpu", checkpoint=checkpoint, progress=False)
    with pytest.raises(ValueError, match="another recipe"):
        nh.train(nh.build_nin(seed=0), fashion, replace(TINY, lr=0.05), "cpu", checkpoint=checkpoint,
                 progress=False)


def test_amp_on_cpu_gives_finite_loss(fashion, monkeypatch):
    created = []
    original = torch.amp.GradScaler

    def spy(*args, **kwargs):
        created.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", spy)
    recipe = replace(TINY, epochs=1, train_images=64, test_images=32)
    history = nh.train(nh.build_nin(seed=0), fashion, recipe, "cpu", amp=True, progress=False)
    assert math.isfinite(history[0]["loss"])
    assert created == []


def test_history_rows_are_complete(fashion):
    history = nh.train(nh.build_nin(seed=0), fashion, replace(TINY, epochs=1), "cpu", progress=False)
    assert len(history) == 1
    row = history[0]
    assert set(row) == {"epoch", "loss", "train_acc", "test_acc", "seconds", "images_per_second"}
    assert 0.0 <= row["train_acc"] <= 1.0
    assert 0.0 <= row["test_acc"] <= 1.0
    assert row["images_per_second"] > 0


def test_recipe_rejects_invalid_values():
    with pytest.raises(ValueError, match="lr=0"):
        nh.Recipe(lr=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        nh.Recipe(batch_size=0)
    with pytest.raises(ValueError, match="init scheme 'he'"):
        nh.init_weights(nh.NiN(), "he")


def test_confusion_matrix_counts():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 2, 0])
    matrix = nh.confusion_matrix(labels, predictions, num_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert matrix.sum().item() == 6


def test_interrupt_before_first_checkpoint(fashion, tmp_path, capsys):
    def interrupt(epoch: int, step: int) -> None:
        raise KeyboardInterrupt

    checkpoint = tmp_path / "run.pt"
    history = nh.train(nh.build_nin(), fashion, TINY, "cpu", checkpoint=checkpoint, progress=False,
                       step_callback=interrupt)

    assert history == []
    assert not checkpoint.exists()
    output = capsys.readouterr().out
    assert "Training interrupted during epoch 1" in output
    assert "no checkpoint was saved yet" in output
