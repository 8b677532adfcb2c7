"""The benchmark scripts' own logic: records, resuming, partial results and the GPU run's steps.

The figures these scripts measure are recorded in docs/benchmarks.md, never asserted here.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import full_training  # noqa: E402
import seed_robustness  # noqa: E402

TINY = ["--device", "cpu", "--recipe", "improved", "--image-size", "67", "--epochs", "1",
        "--train-images", "256", "--test-images", "500"]


def test_full_training_records_a_shrunk_recipe(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_DATA_DIR", str(data_dir))
    output = tmp_path / "full.json"
    records = full_training.main([*TINY, "--output", str(output)])

    assert json.loads(output.read_text()) == records
    (record,) = records
    assert record["recipe"] == "improved (image size 67, epochs 1, train images 256, test images 500)"
    assert record["settings"]["image_size"] == 67
    assert record["settings"]["momentum"] == 0.9
    assert len(record["history"]) == 1
    assert record["final_test_acc"] == record["history"][-1]["test_acc"]
    # NiN plus three batch norms per block, each with a weight and a bias per channel.
    assert record["parameters"] == 1_992_166 + 3 * 2 * (96 + 256 + 384 + 10)
    assert record["wall_seconds"] >= record["history"][-1]["seconds"] * 0.99


def test_full_training_resumes_from_its_checkpoint(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_DATA_DIR", str(data_dir))
    arguments = [*TINY, "--checkpoint-dir", str(tmp_path)]
    (first,) = full_training.main(arguments)
    assert "note" not in first
    assert len(list(tmp_path.glob("nin-improved-image-size-67-*.pt"))) == 1

    (again,) = full_training.main(arguments)
    assert again["history"] == first["history"]
    assert "resumed" in again["note"]
    # The wall time before the interruption is unknown, so the epochs' times stand in for it.
    assert again["wall_seconds"] == round(sum(row["seconds"] for row in first["history"]), 2)


def test_full_training_records_collapse(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_DATA_DIR", str(data_dir))
    build_nin = full_training.nh.build_nin

    def build_dead_lesson_nin(recipe, seed=0):
        # A last-layer bias of -100 zeroes every logit, the collapse of the lesson's recipe.
        model = build_nin(recipe, seed)
        if recipe.name.startswith("lesson"):
            with torch.no_grad():
                model.block4[4].bias.fill_(-100.0)
        return model

    monkeypatch.setitem(full_training.MODELS, "nin", build_dead_lesson_nin)
    lesson, improved = full_training.main(["--device", "cpu", "--recipe", "lesson", "improved", "--image-size",
                                           "67", "--epochs", "1", "--train-images", "768",
                                           "--test-images", "500"])

    assert lesson["stopped"].startswith("TrainingCollapsed: training collapsed in epoch 1")
    assert lesson["history"] == []
    assert lesson["final_test_acc"] is None
    assert improved["stopped"] is None
    assert len(improved["history"]) == 1


def test_full_training_trains_fc_head(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_DATA_DIR", str(data_dir))
    (record,) = full_training.main([*TINY, "--model", "fc-head"])

    assert record["model"] == "fc-head"
    fc_head = full_training.nh.build_fc_head_variant(replace(full_training.nh.IMPROVED_RECIPE, image_size=67))
    assert record["parameters"] == full_training.nh.count_parameters(fc_head)
    assert len(record["history"]) == 1


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--image-size", "66", "--image-size 66 is invalid: NiN needs at least 67 pixels."),
    ("--train-images", "100000", "--train-images 100000 is invalid: Fashion-MNIST has 60,000 such images."),
    ("--test-images", "10001", "--test-images 10001 is invalid: Fashion-MNIST has 10,000 such images."),
    ("--device", "gpu", "--device gpu is invalid: use cpu, cuda, cuda:N or mps."),
    ("--epochs", "0", "--epochs 0 is invalid: it must be at least 1."),
    ("--train-images", "-5", "--train-images -5 is invalid: it must be at least 1."),
])
def test_full_training_rejects_bad_sizes(option, value, expected, capsys):
    with pytest.raises(SystemExit):
        full_training.parse_arguments([option, value])
    assert expected in capsys.readouterr().err


def test_full_training_rejects_folder_as_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        full_training.parse_arguments(["--output", str(tmp_path)])
    assert f"--output {tmp_path} is a folder: give a file name" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_without_cuda_rejected(capsys):
    with pytest.raises(SystemExit):
        full_training.parse_arguments(["--device", "cuda:0"])
    assert "--device cuda:0 was requested, but CUDA is not available here. Use --device cpu." in capsys.readouterr().err


def test_seed_robustness_saves_each_seed(tmp_path, monkeypatch):
    output = tmp_path / "seeds.json"
    calls = []

    def fake_run_seed(data, recipe, seed, device):
        # Every finished seed must already be in the file when the next one starts.
        saved = json.loads(output.read_text()) if output.exists() else []
        assert len(saved) == len(calls)
        calls.append((recipe.name, seed))
        return {"recipe": recipe.name.split(" ")[0], "seed": seed, "test_acc": 0.5 + seed / 10,
                "collapsed": False, "seconds": 1.0}

    monkeypatch.setattr(seed_robustness, "run_seed", fake_run_seed)
    monkeypatch.setattr(seed_robustness.nh, "load_fashion_mnist", lambda root: None)
    monkeypatch.setattr(sys, "argv", ["seed_robustness.py", "--full", "--device", "cpu", "--recipe",
                                      "lesson", "improved", "--seeds", "2", "--output", str(output)])
    seed_robustness.main()

    assert calls == [("lesson", 0), ("improved", 0), ("lesson", 1), ("improved", 1)]
    assert [(row["recipe"], row["seed"]) for row in json.loads(output.read_text())] == calls


# A stand-in for python3 on a GPU machine: it logs each command, writes the --output file,
# and fails the compiled benchmark, so the shell script's order and error handling can be
# checked without a GPU.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [[ "$1" == -c && "$2" == "import torch" ]]; then exit "${FAKE_TORCH_STATUS:-0}"; fi
if [[ "$1" == -c ]]; then exit "${FAKE_CUDA_STATUS:-0}"; fi
if [[ "$*" == *bench_training.py*--compile* ]]; then exit 3; fi
args=("$@")
for i in "${!args[@]}"; do
    if [[ "${args[i]}" == --output ]]; then echo "[]" > "${args[i+1]}"; fi
done
echo "fake output of $1"
"""


def run_gpu_check(tmp_path, **env):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    environment = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls.txt"), **env}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
                            capture_output=True, text=True, env=environment, timeout=60)
    calls_file = tmp_path / "calls.txt"
    calls = calls_file.read_text().splitlines() if calls_file.exists() else []
    return result, [call for call in calls if not call.startswith("-c")]


def test_gpu_check_continues_after_failed_step(tmp_path):
    result, calls = run_gpu_check(tmp_path, GPU_CHECK_SECONDS="600")

    assert result.returncode == 1
    assert "== bench-compile FAILED (exit status 3)" in result.stdout
    assert "== failed steps: bench-compile" in result.stdout
    scripts = [call.split()[0] for call in calls]
    assert scripts == ["benchmarks/bench_training.py", "benchmarks/full_training.py",
                       "benchmarks/bench_training.py", "benchmarks/full_training.py",
                       "benchmarks/seed_robustness.py"]
    assert "--image-size 224 --batches 300" in calls[0]
    assert "--recipe improved lesson" in calls[1]
    assert "--compile" not in calls[1]
    assert "--first-seed 1 --seeds 4" in calls[4]
    out = tmp_path / "out"
    assert (out / "bench_224_eager.log").read_text() == "fake output of benchmarks/bench_training.py\n"
    for name in ("full_224_eager.json", "full_224_compile.json", "seeds_224.json"):
        assert json.loads((out / name).read_text()) == []


def test_gpu_check_skips_step_without_time(tmp_path):
    # With a 400 s budget the first step would have to stop 360 s before the end: 40 s is too little.
    result, calls = run_gpu_check(tmp_path, GPU_CHECK_SECONDS="400")

    assert re.search(r"== bench-eager skipped: only \d+ s of the time budget left", result.stdout)
    assert "== skipped for lack of time: bench-eager" in result.stdout
    assert [call.split()[0] for call in calls][0] == "benchmarks/full_training.py"
    assert len(calls) == 4


def test_gpu_check_refuses_without_cuda(tmp_path):
    result, calls = run_gpu_check(tmp_path, FAKE_CUDA_STATUS="1")

    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr
    assert calls == []
    assert not (tmp_path / "out").exists()


def test_gpu_check_refuses_without_torch(tmp_path):
    result, calls = run_gpu_check(tmp_path, FAKE_TORCH_STATUS="1")

    assert result.returncode == 2
    assert "cannot import torch. Set PYTHON to an interpreter with PyTorch installed." in result.stderr
    assert calls == []


def test_full_training_records_compile_fallback(data_dir, monkeypatch):
    monkeypatch.setenv("NIN_DATA_DIR", str(data_dir))
    monkeypatch.delattr(torch, "compile")
    (record,) = full_training.main([*TINY, "--compile"])

    assert record["compile"] is False
    assert len(record["history"]) == 1


def test_seed_robustness_records_divergence(tmp_path, monkeypatch):
    output = tmp_path / "seeds.json"

    def fake_train(model, data, recipe, device, seed, progress):
        if seed == 3:
            raise full_training.nh.TrainingDiverged("the training loss became nan", [])
        return [{"test_acc": 0.8}]

    monkeypatch.setattr(seed_robustness.nh, "train", fake_train)
    monkeypatch.setattr(seed_robustness.nh, "load_fashion_mnist", lambda root: None)
    monkeypatch.setattr(sys, "argv", ["seed_robustness.py", "--device", "cpu", "--recipe", "improved",
                                      "--first-seed", "3", "--seeds", "2", "--output", str(output)])
    seed_robustness.main()

    diverged, learned = json.loads(output.read_text())
    assert (diverged["seed"], diverged["stopped"], diverged["collapsed"]) == (3, "TrainingDiverged", False)
    assert (learned["seed"], learned["stopped"], learned["test_acc"]) == (4, None, 0.8)


def test_bench_times_next_seed_after_collapse(fashion, monkeypatch, capsys):
    import bench_training

    args = bench_training.parse_arguments(["--device", "cpu", "--image-size", "67", "--batches", "2",
                                           "--warmup-batches", "1"])
    args.amp, args.channels_last = False, False
    seeds = []

    def fake_train(model, data, recipe, device, *, seed, step_callback, **options):
        seeds.append(seed)
        if len(seeds) == 1:
            raise bench_training.nh.TrainingCollapsed("training collapsed in epoch 1", [])
        print("torch.compile failed (RuntimeError: no compiler); training without compile.")
        for step in range(3):
            step_callback(0, step)
        return []

    monkeypatch.setattr(bench_training.nh, "train", fake_train)
    memory = bench_training.PeakMemory(torch.device("cpu"))
    result = bench_training.run_ours(args, torch.device("cpu"), memory, fashion)

    assert seeds == [0, 1]
    assert result.note == "timed with seed 1; torch.compile failed, so ours ran eager"
    assert "training with seed 0 stopped before the timed batches ended" in capsys.readouterr().out
