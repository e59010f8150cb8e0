"""clipkit.train: config plumbing, schedule, checkpoints, fault handling, and short real trainings."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from clipkit import config as cfg
from clipkit.shapes.evaluate import clip_evaluator
from clipkit.train import checkpoint, metrics, optim, runtime
from clipkit.train.clip import ClipTrainConfig, train_clip
from clipkit.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_clip.py"


def tiny_config(shapes_dir: Path, out: Path, **overrides) -> ClipTrainConfig:
    base = dict(
        model="shapes-tiny",
        train_data=str(shapes_dir / "train" / "{00000..00002}.tar"),
        val_data=str(shapes_dir / "val" / "00000.tar"),
        out_dir=str(out),
        batch_size=32,
        lr=2e-3,
        warmup_steps=5,
        log_every=2,
        num_workers=0,
        progress=False,
        val_max_samples=200,
        num_threads=1,
    )
    base.update(overrides)
    return cfg.config_from_dict(ClipTrainConfig, base)


def _flags(config: ClipTrainConfig) -> list[str]:
    """A config as command-line flags (via a JSON file would do too; this exercises the flags)."""
    out = []
    for key, value in config.to_json().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            out += [flag, *map(str, value)] if value else []
        elif value is not None:
            out += [flag, str(value)]
    return out


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ---------------------------------------------------------------------------- config


def test_config_json_roundtrip_and_flag_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "description": "x",
                "model": "shapes-tiny",
                "train_data": "a/{0..1}.tar",
                "lr": 1e-3,
                "epochs": 3,
                "grad_clip": None,
            }
        )
    )
    config = cfg.parse_config(
        ClipTrainConfig,
        ["--config", str(path), "--lr", "5e-4", "--no-progress", "--max-steps", "7", "--resume", "latest"],
    )
    assert (config.lr, config.epochs, config.max_steps, config.grad_clip, config.progress, config.resume) == (
        5e-4,
        3,
        7,
        None,
        False,
        "latest",
    )
    again = cfg.config_from_dict(ClipTrainConfig, json.loads(json.dumps(config.to_json())))
    assert again == config


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"lr": "fast"}, "^lr = 'fast'"),
        ({"epochs": 1.5}, "^epochs = 1.5"),
        ({"bogus": 1}, "bogus"),
        ({"loss": "triplet"}, "triplet"),
        ({"mixed_precision": "fp8"}, "fp8"),
        ({"batch_size": 0}, "batch_size"),
        ({"train_data": ""}, "train_data"),
        ({"crop_scale": 0.0}, "crop_scale"),
        ({"crop_scale": 1.5}, "crop_scale"),
    ],
)
def test_bad_config_values_are_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cfg.config_from_dict(ClipTrainConfig, {"train_data": "x.tar", **bad})


def test_crop_augmentation_is_open_clips_train_transform(tiny_model):
    """crop_scale=None trains on the model's own preprocessing; a scale gives random crops of that much area."""
    from PIL import Image

    from clipkit.train.clip import train_preprocess

    assert train_preprocess(tiny_model, None) is tiny_model.preprocess
    augment = train_preprocess(tiny_model, 0.5)
    image = Image.new("RGB", (32, 32), (250, 250, 250))
    image.paste((220, 30, 30), (8, 8, 24, 24))  # a red square, 16 px, centred
    plain = tiny_model.preprocess(image)
    torch.manual_seed(0)  # RandomResizedCrop draws from torch
    crops = torch.stack([augment(image) for _ in range(20)])
    assert crops.shape == (20, 3, 32, 32)
    assert all(not torch.allclose(c, plain, atol=1e-3) for c in crops)  # every crop differs from the plain view
    red_area = (crops[:, 0] > 0.5) & (crops[:, 1] < -0.5)  # red and not white, after normalising
    plain_area = int(((plain[0] > 0.5) & (plain[1] < -0.5)).sum())
    # cropping 50-100% of the area and resizing back enlarges the square by up to 1/0.5 in area
    assert plain_area < red_area.sum(dim=(1, 2)).float().mean() < 2.2 * plain_area


def test_subclassed_config_for_other_loops():
    @dataclass
    class DecoderConfig(TrainConfig):
        unet_width: int = 64

    config = cfg.parse_config(DecoderConfig, ["--unet-width", "32", "--batch-size", "8"])
    assert (config.unet_width, config.batch_size) == (32, 8)


def test_warmup_cosine_schedule():
    f = optim.WarmupCosine(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_no_weight_decay_on_temperature_biases_norms_embeddings(tiny_model):
    groups = optim.parameter_groups(tiny_model.model, 0.1)
    names = {id(p): n for n, p in tiny_model.model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    decay = {names[id(p)] for p in groups[0]["params"]}
    assert {"logit_scale", "token_embedding.weight", "positional_embedding", "visual.class_embedding"} <= no_decay
    assert all(p.ndim >= 2 for n, p in tiny_model.model.named_parameters() if n in decay)
    assert not any(n.endswith("bias") or ".ln_" in n or n.startswith("ln_") for n in decay)
    assert "visual.conv1.weight" in decay and "text_projection" in decay
    assert len(decay) + len(no_decay) == len(names)


# ---------------------------------------------------------------------------- training


@pytest.mark.slow
def test_short_training_lowers_loss_and_beats_chance(shapes_dir, tmp_path):
    """shapes-tiny on 600 samples: the loss falls clearly and zero-shot shape accuracy is far above 1/8."""
    config = tiny_config(
        shapes_dir,
        tmp_path / "run",
        epochs=12,
        batch_size=48,
        lr=3e-3,
        warmup_steps=10,
        eval_every=None,
        checkpoint_every=None,
        log_every=4,
    )
    summary = train_clip(config, evaluators=(clip_evaluator,))
    rows = [r for r in metrics.MetricsLog(tmp_path / "run" / "metrics.jsonl").rows() if "loss" in r]
    assert summary["steps"] == 12 * (600 // 48) == rows[-1]["step"]
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    # chance is 1/8 for shape and colour; shapes-tiny learns colour first (~0.85 here), shape slowly (~0.25)
    assert summary["eval"]["val/zs_color"] > 0.5, summary["eval"]
    assert summary["eval"]["val/zs_shape"] > 0.18, summary["eval"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    import clipkit

    model = clipkit.load(summary["model_dir"], device="cpu")  # the export is a clipkit model dir
    assert model.encode_texts(["a red circle"]).shape == (1, 64)


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_checkpoint(shapes_dir, tmp_path, monkeypatch):
    import clipkit.losses

    real, calls = clipkit.losses.clip_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(clipkit.losses, "clip_loss", poisoned)
    config = tiny_config(shapes_dir, tmp_path / "run", max_steps=20, checkpoint_every=2, val_data=None)
    with pytest.raises(runtime.NonFiniteLossError, match=r"loss is nan at step 5.*step_00000004"):
        train_clip(config)
    checkpoints = checkpoint.CheckpointManager(tmp_path / "run" / "checkpoints").list()
    assert [p.name for p in checkpoints] == ["step_00000002", "step_00000004"]
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    assert state["step"] == 4
    import clipkit

    model = clipkit.create("shapes-tiny")
    model.model.load_state_dict(_weights(checkpoints[-1]))
    assert all(torch.isfinite(p).all() for p in model.model.parameters())


def _write_corrupt_shards(shapes_dir: Path, out: Path) -> int:
    """Copy the 600 train samples into 2 shards, corrupting every 10th (truncated PNG / no txt / empty txt)."""
    out.mkdir()
    bad = 0
    members = []
    for src in sorted((shapes_dir / "train").glob("*.tar")):
        with tarfile.open(src) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    by_key: dict[str, dict] = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        by_key.setdefault(key, {})[ext] = data
    keys = sorted(by_key)
    for shard in range(2):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i, key in enumerate(keys[shard::2]):
                sample = dict(by_key[key])
                if i % 10 == 3:
                    kind = (i // 10) % 3
                    if kind == 0:
                        sample["png"] = sample["png"][: len(sample["png"]) // 2]
                    elif kind == 1:
                        del sample["txt"]
                    else:
                        sample["txt"] = b"  "
                    bad += 1
                for ext, payload in sample.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return bad


def test_corrupt_samples_are_skipped_counted_and_reported(shapes_dir, tmp_path, capsys):
    bad = _write_corrupt_shards(shapes_dir, tmp_path / "corrupt")
    assert bad == 60  # 10% of 600
    config = tiny_config(
        shapes_dir,
        tmp_path / "run",
        train_data=str(tmp_path / "corrupt" / "{00000..00001}.tar"),
        train_num_samples=540,
        batch_size=20,
        epochs=1,
        val_data=None,
        num_workers=1,
    )
    summary = train_clip(config)
    assert summary["skipped_samples"] == bad
    assert summary["skipped_by_reason"]["bad_image"] == 20
    assert summary["skipped_by_reason"]["no_text"] == 20 and summary["skipped_by_reason"]["empty_text"] == 20
    assert summary["steps"] == 27  # 540 readable samples / 20
    assert "skipped 60 unreadable sample(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_after_kill_9_continues_with_identical_state(shapes_dir, tmp_path):
    """An uninterrupted run and a run killed with SIGKILL then resumed end with identical weights."""
    steps = 16
    straight = tiny_config(
        shapes_dir,
        tmp_path / "straight",
        max_steps=steps,
        checkpoint_every=4,
        val_data=None,
        batch_size=16,
        num_workers=1,
    )
    killed = tiny_config(
        shapes_dir,
        tmp_path / "killed",
        max_steps=steps,
        checkpoint_every=4,
        val_data=None,
        batch_size=16,
        num_workers=1,
    )

    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *_flags(killed)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    first = tmp_path / "killed" / "checkpoints" / "step_00000004" / "state.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    done = checkpoint.CheckpointManager(tmp_path / "killed" / "checkpoints").latest()
    resumed_from = json.loads((done / "state.json").read_text())["step"]
    assert 4 <= resumed_from < steps

    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), *_flags(killed), "--resume", "latest"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {done}" in resumed.stdout
    summary = train_clip(straight)  # in-process: same function

    a, b = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "killed" / "model")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the loss curve continues: one row per logged step, no gap and no overlap at the resume point
    rows = [r for r in metrics.MetricsLog(tmp_path / "killed" / "metrics.jsonl").rows() if "loss" in r]
    assert [r["step"] for r in rows] == list(range(2, steps + 1, 2))
    straight_rows = [r for r in metrics.MetricsLog(tmp_path / "straight" / "metrics.jsonl").rows() if "loss" in r]
    assert [r["loss"] for r in rows[resumed_from // 2 :]] == pytest.approx(
        [r["loss"] for r in straight_rows[resumed_from // 2 :]]
    )
    assert summary["steps"] == steps


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_fewer_shards_than_workers_equal_steps_exit_0(shapes_dir, tmp_path):
    """2 ranks x 2 workers over 3 shards (rank 1 gets 1 shard: fewer than its workers; uneven data):
    both ranks take the same number of steps, nothing hangs, exit code 0."""
    config = tiny_config(shapes_dir, tmp_path / "run", epochs=1, batch_size=25, num_workers=2, checkpoint_every=4)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            *_flags(config),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2
    # rank 1 holds 200 samples = 8 batches of 25, rank 0 holds 400: the first pass ends for both
    # when rank 1 runs dry, and the run goes on into the next pass to the 600 / 50 = 12 steps it planned
    assert "epoch 0 ended early at 8/12 batches" in proc.stdout
    assert summary["steps"] == 12
    assert summary["eval"]["val/zs_shape"] >= 0.0 and (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_clipkit_train_command(shapes_dir, tmp_path):
    from clipkit.cli import main

    config = tiny_config(shapes_dir, tmp_path / "run", max_steps=3, val_max_samples=50)
    assert main(["train", *_flags(config)]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3
    assert (
        main(
            [
                "train",
                "--train-data",
                str(tmp_path / "nothing-{0..1}.tar"),
                "--out-dir",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )


def test_resampled_shards_run_the_planned_steps(shapes_dir, tmp_path):
    """--resampled draws shards with replacement: a one-shard dataset still fills every planned step."""
    config = tiny_config(
        shapes_dir,
        tmp_path / "run",
        train_data=str(shapes_dir / "train" / "00000.tar"),
        resampled=True,
        epochs=2,
        batch_size=40,
        val_data=None,
        num_workers=1,
    )
    summary = train_clip(config)
    assert summary["steps"] == 2 * (200 // 40) and summary["epochs_completed"] == 2


# ---------------------------------------------------------------------------- the one run setup


def _tiny_unclip(kind: str, tiny_model_dir: Path, shapes_dir: Path, out: Path, **overrides):
    """A decoder / prior / upsampler / AR prior config of a few steps on 48 shapes images."""
    from clipkit.config import config_from_dict
    from clipkit.train.config import ArPriorTrainConfig, DecoderTrainConfig, PriorTrainConfig, UpsamplerTrainConfig

    cls, model = {
        "decoder": (
            DecoderTrainConfig,
            {"decoder": dict(channels=[16, 32], attention_levels=[False, False], heads=2, context_tokens=2)},
        ),
        "prior": (PriorTrainConfig, {"prior": dict(width=32, layers=1, heads=2)}),
        "upsampler": (
            UpsamplerTrainConfig,
            {
                "upsampler": dict(
                    embed_dim=0,
                    image_size=32,
                    low_res_size=16,
                    patch_size=2,
                    channels=[16, 32],
                    attention_levels=[False, False],
                )
            },
        ),
        "ar_prior": (
            ArPriorTrainConfig,
            {"ar_prior": dict(width=32, layers=1, heads=2, cond_tokens=2, components=8, bins=16)},
        ),
    }[kind]
    base = dict(
        clip=str(tiny_model_dir),
        train_data=str(shapes_dir / "train"),
        out_dir=str(out),
        num_samples=48,
        val_samples=8,
        batch_size=8,
        max_steps=2,
        warmup_steps=1,
        log_every=1,
        progress=False,
        num_threads=1,
        **model,
    )
    return config_from_dict(cls, {**base, **overrides})


def test_every_trainer_goes_through_the_one_run_setup(shapes_dir, tiny_model_dir, tmp_path, monkeypatch):
    """CLIP, decoder, prior, upsampler, AR prior, a generation-lab model and the spiral's toy model: each run is
    set up, trained and ended by clipkit.train.trainer.Trainer, and its summary says what ended it."""
    from clipkit.labs.genlab.train import LabTrainConfig, train_lab_model
    from clipkit.labs.spiral.model import ToyTrainConfig, train_spiral_model
    from clipkit.train import trainer as trainer_module
    from clipkit.train.unclip import train_ar_prior, train_decoder, train_prior, train_upsampler

    runs = []
    real_fit = trainer_module.Trainer.fit

    def spy(self, task):
        result = real_fit(self, task)
        runs.append((self.desc, type(self.module).__name__, result.step, result.stopped_by))
        return result

    monkeypatch.setattr(trainer_module.Trainer, "fit", spy)
    train_clip(tiny_config(shapes_dir, tmp_path / "clip", max_steps=2, batch_size=16, val_data=None))
    train_decoder(_tiny_unclip("decoder", tiny_model_dir, shapes_dir, tmp_path / "decoder"))
    train_prior(_tiny_unclip("prior", tiny_model_dir, shapes_dir, tmp_path / "prior"))
    train_upsampler(_tiny_unclip("upsampler", tiny_model_dir, shapes_dir, tmp_path / "upsampler"))
    train_ar_prior(_tiny_unclip("ar_prior", tiny_model_dir, shapes_dir, tmp_path / "ar_prior"))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

    data = torch.randn(64, 2)
    train_lab_model(
        Tiny(),
        lambda net, idx, g: net.net(data[idx]).pow(2).mean(),
        len(data),
        LabTrainConfig(out_dir=str(tmp_path / "lab"), max_steps=2, time_budget=None),
        make_copy=Tiny,
    )
    train_spiral_model(ToyTrainConfig(out_dir=str(tmp_path / "spiral"), max_steps=2, batch_size=16))
    assert runs == [
        ("clip", "CLIP", 2, "max_steps"),
        ("decoder", "DecoderUNet", 2, "max_steps"),
        ("prior", "DiffusionPrior", 2, "max_steps"),
        ("upsampler", "DecoderUNet", 2, "max_steps"),
        ("ar_prior", "ArPrior", 2, "max_steps"),
        ("lab", "Tiny", 2, "max_steps"),
        ("spiral-ddpm", "SpiralDenoiser", 2, "max_steps"),
    ]
    for name in ("clip", "decoder", "prior", "upsampler", "ar_prior", "lab", "spiral"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["stopped_by"] == "max_steps" and summary["resumes"] == [], name
        assert (tmp_path / name / "checkpoints" / "step_00000002" / "state.json").is_file(), name


def test_no_module_but_the_trainer_sets_up_a_run():
    """Read the code: the accelerator, the run lock and folder, the seeds and the loop are started in
    clipkit/train/trainer.py only (runtime.py defines the first three)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "clipkit"
    names = {"make_accelerator", "run_lock", "seed_everything", "train_loop", "RunDir"}
    allowed = {package / "train" / "trainer.py", package / "train" / "runtime.py"}
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            called = node.func if isinstance(node, ast.Call) else None
            name = getattr(called, "attr", None) or getattr(called, "id", None)
            if name in names and path not in allowed:
                found.append(f"{path.relative_to(package)}:{node.lineno} {name}")
    assert not found, found


def _fake_clock(monkeypatch, seconds_per_call: float = 10.0):
    """The trainer's wall clock, advancing `seconds_per_call` each time it is read (no sleeping)."""
    from clipkit.train import trainer as trainer_module

    ticks = iter(range(0, 10**6))
    monkeypatch.setattr(trainer_module, "wall_clock", lambda: next(ticks) * seconds_per_call)


@pytest.mark.parametrize("kind", ["prior", "clip"])
def test_a_time_budget_stops_the_run_as_max_steps_would(kind, shapes_dir, tiny_model_dir, tmp_path, monkeypatch):
    """A fake clock that reads 10 s more at every look: with a 35 s budget the loop stops after step 4 of 50
    (10, 20, 30, then 40 s), writes its checkpoint and exports its model as at max_steps, and the cosine
    schedule, which spans the budget, has decayed the learning rate to its end by then."""
    from clipkit.train.unclip import train_prior

    _fake_clock(monkeypatch)
    out = tmp_path / kind
    if kind == "prior":
        summary = train_prior(_tiny_unclip("prior", tiny_model_dir, shapes_dir, out, max_steps=50, time_budget=35.0))
        export, final_lr = out / "prior" / "model.safetensors", 1e-3 * 0.05
    else:
        summary = train_clip(
            tiny_config(
                shapes_dir,
                out,
                max_steps=50,
                batch_size=16,
                val_data=None,
                time_budget=35.0,
                warmup_steps=1,
                log_every=1,
            )
        )
        export, final_lr = out / "model" / "model.safetensors", 0.0
    assert summary["stopped_by"] == "time_budget" and summary["steps"] == 4
    assert (out / "checkpoints" / "step_00000004" / "model.safetensors").is_file() and export.is_file()
    state = json.loads((out / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["elapsed"] >= 35.0
    rows = [r for r in metrics.MetricsLog(out / "metrics.jsonl").rows() if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["lr"] == pytest.approx(final_lr, abs=1e-12)
    assert rows[1]["lr"] > rows[2]["lr"] > rows[-1]["lr"]  # decaying with the clock, not the 50 steps


def test_the_start_line_says_what_will_run(shapes_dir, tmp_path, capsys):
    """max_steps=2 of 16 samples over 600 samples: 2 steps, 0.0533 of an epoch, ended by max_steps."""
    train_clip(tiny_config(shapes_dir, tmp_path / "run", max_steps=2, batch_size=16, val_data=None, epochs=8))
    out = capsys.readouterr().out
    assert "[clip] training shapes-tiny: 2 steps of 16 samples = 0.0533 epoch(s) of 600 samples (max_steps=2)" in out
    train_clip(tiny_config(shapes_dir, tmp_path / "run2", batch_size=300, val_data=None, epochs=2, time_budget=600))
    assert (
        "4 steps of 300 samples = 2 epoch(s) of 600 samples (epochs=2, or time_budget=600 s if that comes first)"
    ) in capsys.readouterr().out


def test_resume_refuses_another_model_and_records_a_changed_run(shapes_dir, tiny_model_dir, tmp_path, caplog):
    """Resuming with another architecture fails in one line naming both, before the finished run's files are
    touched; resuming with another batch size warns and is recorded in resumes.json and the summary."""
    import logging

    from clipkit.train.unclip import train_prior

    out = tmp_path / "prior"
    train_prior(_tiny_unclip("prior", tiny_model_dir, shapes_dir, out))
    config_before = (out / "config.json").read_bytes()
    wider = _tiny_unclip(
        "prior", tiny_model_dir, shapes_dir, out, resume="latest", max_steps=4, prior=dict(width=48, layers=1, heads=2)
    )
    with pytest.raises(
        ValueError,
        match=r"holds a checkpoint of DiffusionPrior \(width=32\), but this run trains "
        r"DiffusionPrior \(width=48\)",
    ):
        train_prior(wider)
    with pytest.raises(FileNotFoundError, match="is not a checkpoint directory"):
        train_prior(_tiny_unclip("prior", tiny_model_dir, shapes_dir, out, resume=str(tmp_path / "nothing")))
    assert (out / "config.json").read_bytes() == config_before and not (out / "resumes.json").exists()

    with caplog.at_level(logging.WARNING, logger="clipkit.train.trainer"):
        summary = train_prior(
            _tiny_unclip("prior", tiny_model_dir, shapes_dir, out, resume="latest", max_steps=4, batch_size=16)
        )
    assert "batch_size 8 -> 16" in caplog.text and "max_steps" not in caplog.text  # a longer run is no change
    resumes = json.loads((out / "resumes.json").read_text())
    assert [(r["step"], r["changed"]) for r in resumes] == [
        (2, {"batch_size": [8, 16], "max_steps": [2, 4], "resume": [None, "latest"]})
    ]
    assert summary["resumes"] == resumes and summary["steps"] == 4
    assert json.loads((out / "config.json").read_text())["batch_size"] == 16
