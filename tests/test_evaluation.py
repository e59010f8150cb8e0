"""clipkit.evaluation (CLIP_benchmark's tasks, metrics, layout), clipkit.wiseft and their commands.

Metrics are checked against brute-force computations written out here; the
exporter against webdataset's own reader as CLIP_benchmark uses it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clipkit.evaluation import (
    evaluate,
    evaluate_datasets,
    export_clip_benchmark,
    export_labelled_folder,
    open_dataset,
    read_rows,
    retrieval_metrics,
    write_rows,
)
from clipkit.shapes import world as shapes

pytestmark = pytest.mark.usefixtures("one_thread")
COLORS3 = ("red", "green", "blue")


def _samples(num, seed=1, where=None):
    from clipkit.shapes.benchmark import slice_samples

    return slice_samples("val", num, seed, where)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same data in three layouts: {"clip_benchmark": path, "labelled_folder": ..., "caption_shards": ...}."""
    from clipkit.data.shards import write_shards

    root = tmp_path_factory.mktemp("layouts")
    test = _samples(48, seed=1, where=lambda a: a.color in COLORS3)
    train = _samples(48, seed=5, where=lambda a: a.color in COLORS3)
    bench = root / "colors_bench"
    for split, samples in (("test", test), ("train", train)):
        export_clip_benchmark(
            [
                (s.image, COLORS3.index(s.attributes.color), [s.caption, f"something {s.attributes.color}"])
                for s in samples
            ],
            bench,
            classnames=COLORS3,
            templates=["a photo of a {c} shape.", "a {c} thing"],
            split=split,
            shard_size=20,
        )
    folder = root / "colors_folder"
    for i, s in enumerate(test):
        d = folder / s.attributes.color
        d.mkdir(parents=True, exist_ok=True)
        s.image.save(d / f"{i:03d}.png")
        (d / f"{i:03d}.txt").write_text(s.caption)
    write_shards(iter(test), root / "colors_shards", shard_size=20)
    return {"clip_benchmark": str(bench), "labelled_folder": str(folder), "caption_shards": str(root / "colors_shards")}


def _open(layouts, layout):
    return open_dataset(
        layouts[layout],
        label_field="color" if layout == "caption_shards" else None,
        templates="simple" if layout != "clip_benchmark" else None,
    )


@pytest.mark.parametrize("layout", ["clip_benchmark", "labelled_folder", "caption_shards"])
@pytest.mark.parametrize("task", ["zeroshot", "retrieval", "linear-probe"])
def test_every_task_runs_on_every_layout(tiny_model, layouts, layout, task):
    ds = _open(layouts, layout)
    assert ds.layout == layout
    row = evaluate(tiny_model, ds, task)
    keys = {
        "zeroshot": {"acc1", "acc5", "mean_per_class_recall"},
        "retrieval": {f"{w}_retrieval_recall@{k}" for w in ("image", "text") for k in (1, 5, 10)},
        "linear-probe": {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "C", "val_acc1"},
    }[task]
    assert set(row["metrics"]) == keys
    assert (
        row["task"]
        == {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear-probe": "linear_probe"}[
            task
        ]
    )
    if task != "retrieval":  # 3 classes: top-5 undefined, NaN as in CLIP_benchmark
        assert math.isnan(row["metrics"]["acc5" if task == "zeroshot" else "lp_acc5"])
    for key, value in row["metrics"].items():
        if key != "C" and not math.isnan(value):
            assert 0.0 <= value <= 1.0, (key, value)
    expected_n = {"linear-probe": 24 if layout != "clip_benchmark" else 48}.get(task, 48)
    assert row["num_samples"] == expected_n
    if task == "linear-probe":  # the layout's train split, else half the data
        assert row["probe"]["train"].startswith("colors_bench:train" if layout == "clip_benchmark" else "seeded")


def _brute_zeroshot(model, images, labels, classnames, templates):
    text = model.encode_texts([t.format(c) if isinstance(t, str) else t(c) for c in classnames for t in templates])
    text = text.double().numpy()
    vecs = []
    for i in range(len(classnames)):
        e = text[i * len(templates) : (i + 1) * len(templates)]
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(0)
        vecs.append(m / np.linalg.norm(m))
    logits = model.encode_images(images).double().numpy() @ np.stack(vecs).T
    pred = logits.argmax(1)
    recalls = [np.mean(pred[labels == c] == c) for c in range(len(classnames)) if np.any(labels == c)]
    top5 = np.mean([y in np.argsort(-row)[:5] for y, row in zip(labels, logits)])
    return float(np.mean(pred == labels)), float(top5), float(np.mean(recalls))


def test_zeroshot_matches_brute_force(tiny_model, layouts):
    ds = open_dataset(layouts["clip_benchmark"])
    samples = list(ds.samples())
    acc1, _, mpcr = _brute_zeroshot(
        tiny_model, [s.image for s in samples], np.array([s.label for s in samples]), list(COLORS3), ds.templates
    )
    m = evaluate(tiny_model, layouts["clip_benchmark"], "zeroshot")["metrics"]
    assert m["acc1"] == pytest.approx(acc1, abs=1e-9) and m["mean_per_class_recall"] == pytest.approx(mpcr, abs=1e-9)
    assert math.isnan(m["acc5"])  # 3 classes: CLIP_benchmark reports NaN

    # 8 classes (acc5 defined), labels from the json field of image-caption shards
    ds = open_dataset(
        layouts["caption_shards"], label_field="shape", classnames=list(shapes.SHAPES), templates="simple"
    )
    samples = list(ds.samples())
    labels = np.array([shapes.SHAPES.index(s.label) for s in samples])
    acc1, top5, mpcr = _brute_zeroshot(
        tiny_model, [s.image for s in samples], labels, list(shapes.SHAPES), ds.templates
    )
    m = evaluate(tiny_model, ds, "zeroshot")["metrics"]
    assert (m["acc1"], m["acc5"], m["mean_per_class_recall"]) == pytest.approx((acc1, top5, mpcr), abs=1e-9)


def test_retrieval_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=-1)
    text_to_image = torch.tensor([i // 2 for i in range(60)])[torch.randperm(60, generator=g)]  # 2 captions each
    texts = torch.nn.functional.normalize(images[text_to_image] + 0.9 * torch.randn(60, 16, generator=g), dim=-1)
    m = retrieval_metrics(images, texts, text_to_image, ks=(1, 5, 10), chunk=7)
    scores = (texts @ images.T).numpy()
    for k in (1, 5, 10):
        img_hits = [text_to_image[t].item() in np.argsort(-scores[t])[:k] for t in range(60)]
        txt_hits = [any(text_to_image[j].item() == i for j in np.argsort(-scores[:, i])[:k]) for i in range(30)]
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(np.mean(img_hits), abs=1e-12)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(np.mean(txt_hits), abs=1e-12)
    assert 0 < m["image_retrieval_recall@1"] < m["image_retrieval_recall@10"] < 1
    assert retrieval_metrics(images[:3], texts[:3], [0, 1, 2], ks=(5,))["image_retrieval_recall@5"] == 1.0  # k capped


def test_retrieval_uses_every_caption(tiny_model, layouts):
    ds = open_dataset(layouts["clip_benchmark"])
    samples = list(ds.samples())
    assert all(len(s.captions) == 2 for s in samples)  # CLIP_benchmark: one caption a line
    images = tiny_model.encode_images([s.image for s in samples])
    texts = tiny_model.encode_texts([c for s in samples for c in s.captions])
    expected = retrieval_metrics(images, texts, [i for i in range(len(samples)) for _ in range(2)])
    assert evaluate(tiny_model, ds, "retrieval")["metrics"] == pytest.approx(expected, abs=1e-6)


def test_linear_probe_refit_matches_and_learns(tiny_model, layouts):
    from sklearn.linear_model import LogisticRegression

    row = evaluate(tiny_model, layouts["clip_benchmark"], "linear-probe")
    m = row["metrics"]
    assert 1e-6 <= m["C"] <= 1e6
    train, test = open_dataset(layouts["clip_benchmark"], split="train"), open_dataset(layouts["clip_benchmark"])
    xs = [tiny_model.encode_images([s.image for s in d.samples()]).numpy() for d in (train, test)]
    ys = [np.array([s.label for s in d.samples()]) for d in (train, test)]
    probe = LogisticRegression(C=m["C"], max_iter=1000).fit(xs[0], ys[0])
    assert m["lp_acc1"] == pytest.approx(np.mean(probe.predict(xs[1]) == ys[1]), abs=1e-9)
    assert m["lp_acc1"] > 0.6  # colour is linearly readable even untrained (chance 1/3)


def test_exporter_round_trips_and_clip_benchmark_reads_it(tmp_path, layouts):
    import webdataset as wds

    from clipkit.evaluation.datasets import BenchmarkTemplate

    out = tmp_path / "exported"
    summary = export_labelled_folder(layouts["labelled_folder"], out, templates="openai", shard_size=10)
    assert summary["count"] == 48 and summary["shards"] == 5
    assert (out / "test" / "nshards.txt").read_text().strip() == "5"
    assert (out / "classnames.txt").read_text().splitlines() == sorted(COLORS3)
    lines = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert len(lines) == 80 and lines[0] == "a bad photo of a {c}."
    original = open_dataset(layouts["labelled_folder"])
    again = open_dataset(out)
    assert again.layout == "clip_benchmark" and again.classnames == original.classnames
    assert again.templates == [BenchmarkTemplate(t) for t in lines]
    for a, b in zip(original.samples(), again.samples(), strict=True):
        assert a.label == b.label and a.captions == b.captions
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))  # both decoded (the folder policy)
    # webdataset's reader, as CLIP_benchmark's build_wds_dataset uses it
    pipeline = (
        wds.WebDataset(str(out / "test" / "{0..4}.tar"), shardshuffle=False, nodesplitter=lambda s: s)
        .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
        .to_tuple(["webp", "png", "jpg", "jpeg"], "cls")
    )
    assert [label for _, label in pipeline] == [s.label for s in original.samples()]


def test_shapes_export_agrees_with_shapes_eval(tiny_model, tmp_path):
    from clipkit.shapes.benchmark import export_shapes_benchmark
    from clipkit.shapes.evaluate import attribute_accuracy

    paths = export_shapes_benchmark(tmp_path, num=40, attributes=("shape", "hat"))
    assert set(paths) == {"shapes_shape", "shapes_hat", "shapes_captions"}
    samples = list(shapes.generate("val", 40, 1))
    expected = attribute_accuracy(
        tiny_model, [s.image for s in samples], [s.attributes for s in samples], attributes=("shape", "hat")
    )
    got = evaluate_datasets(tiny_model, [paths["shapes_shape"], paths["shapes_hat"], paths["shapes_captions"]])
    assert got["shapes_shape/acc1"] == pytest.approx(expected["shape"], abs=1e-9)
    assert got["shapes_hat/acc1"] == pytest.approx(expected["hat"], abs=1e-9)
    assert "shapes_hat/acc5" not in got  # undefined (2 classes): left out
    assert "shapes_captions/image_retrieval_recall@5" in got


def test_rows_concatenate_as_strict_json(tiny_model, layouts, tmp_path):
    out = tmp_path / "results.jsonl"
    write_rows([evaluate(tiny_model, layouts["clip_benchmark"], "zeroshot")], out)
    write_rows([evaluate(tiny_model, layouts["caption_shards"], "retrieval", max_samples=10)], out)
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) for line in lines]
    assert rows == read_rows(out)
    assert rows[0]["metrics"]["acc5"] is None and rows[1]["num_samples"] == 10
    for row in rows:
        assert {"dataset", "model", "pretrained", "task", "metrics", "model_identity"} <= set(row)


def test_bad_input_is_named(tiny_model, tmp_path, layouts):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="task='zero'"):
        evaluate(tiny_model, layouts["clip_benchmark"], "zero")
    bare = tmp_path / "bare"
    (bare / "a").mkdir(parents=True)
    (bare / "b").mkdir()
    for i, s in enumerate(_samples(4)):
        s.image.save(bare / "ab"[i % 2] / f"{i}.png")
    with pytest.raises(ValueError, match="no sample with captions"):
        evaluate(tiny_model, bare, "retrieval")
    with pytest.raises(ValueError, match="share the name"):
        evaluate_datasets(tiny_model, [layouts["clip_benchmark"], layouts["clip_benchmark"]])
    with pytest.raises(ValueError, match="no label"):
        export_clip_benchmark([(_samples(1)[0].image, None)], tmp_path / "x")


def test_interpolate_endpoints_exact_and_midpoint(tiny_model_dir, tmp_path):
    import clipkit
    from clipkit.wiseft import interpolate

    a = clipkit.load(tiny_model_dir, device="cpu")
    b = clipkit.create("shapes-tiny", seed=1)
    for alpha, end in ((0, a), (1, b)):
        mixed = interpolate(a, b, alpha)
        assert mixed.identity == end.identity
        for key, value in end.model.state_dict().items():
            assert torch.equal(mixed.model.state_dict()[key], value), key
    half = interpolate(tiny_model_dir, b, 0.5).model.state_dict()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key in sa:
        if sa[key].is_floating_point():
            expected = torch.where(sa[key] == sb[key], sa[key], (sa[key] + sb[key]) / 2)
            assert torch.allclose(half[key], expected, atol=1e-6), key
    mask = half.get("attn_mask")
    if mask is not None:
        assert torch.equal(mask, sa["attn_mask"])  # -inf entries survive
    with pytest.raises(ValueError, match=r"architectures differ \(embed_dim: 64 vs 128"):
        interpolate(a, clipkit.create("shapes-small", seed=0), 0.5)
    with pytest.raises(ValueError, match="alpha=1.5"):
        interpolate(a, b, 1.5)


@pytest.mark.slow
def test_cli_eval_interpolate_and_sweep(tiny_model_dir, layouts, tmp_path):
    from clipkit.cli import main

    out = tmp_path / "rows.jsonl"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                layouts["clip_benchmark"],
                "--task",
                "zeroshot",
                "--dataset",
                layouts["labelled_folder"],
                "--templates",
                "simple",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert [r["dataset"] for r in read_rows(out)] == ["colors_bench", "colors_folder"]
    mixed = tmp_path / "mixed"
    assert main(["interpolate", str(tiny_model_dir), str(tiny_model_dir), "--alpha", "0.5", "--out", str(mixed)]) == 0
    assert (mixed / "model.safetensors").is_file()
    sweep = tmp_path / "sweep"
    assert (
        main(
            [
                "interpolate",
                str(tiny_model_dir),
                str(mixed),
                "--sweep",
                "0",
                "1",
                "--dataset",
                layouts["clip_benchmark"],
                "--dataset",
                layouts["caption_shards"],
                "--max-samples",
                "12",
                "--out",
                str(sweep),
            ]
        )
        == 0
    )
    rows = read_rows(sweep / "results.jsonl")
    assert [(r["alpha"], r["dataset"]) for r in rows] == [
        (0.0, "colors_bench"),
        (0.0, "colors_shards"),
        (1.0, "colors_bench"),
        (1.0, "colors_shards"),
    ]
    assert (sweep / "tradeoff.png").stat().st_size > 5000
    assert (
        main(["export-benchmark", layouts["labelled_folder"], "--out", str(tmp_path / "exp"), "--templates", "simple"])
        == 0
    )
    assert open_dataset(tmp_path / "exp").layout == "clip_benchmark"


@pytest.mark.slow
def test_finetune_experiment_quick(tmp_path):
    from dataclasses import replace

    from clipkit.labs.finetune import QUICK, run_finetune_experiment

    result = run_finetune_experiment(replace(QUICK, out_dir=str(tmp_path / "ft")))
    assert set(result["models"]) == {"pretrained", "full", "lock-image", "lock-text"}
    curve = {p["alpha"]: p for p in result["wiseft"]}
    for alpha, name in ((0.0, "pretrained"), (1.0, "full")):  # the curve's ends are the two models
        assert curve[alpha]["per_dataset"] == result["models"][name]["per_dataset"]
    assert len(result["models"]["full"]["per_dataset"]) == 10  # 5 attributes x (slice, rest)
    for name in ("finetune.png", "report.html", "results.jsonl", "wiseft/tradeoff.png"):
        assert (tmp_path / "ft" / name).is_file()


def test_an_evaluation_whose_labels_match_no_class_is_an_error(tiny_model, layouts):
    """Every sample skipped as bad_label used to end in acc1=nan and exit 0: no samples measures nothing."""
    dataset = open_dataset(
        layouts["caption_shards"], label_field="color", classnames=["dog", "cat"], templates="simple"
    )
    with pytest.raises(ValueError, match="none of its 48 labels is one of its 2 class names"):
        evaluate(tiny_model, dataset, "zeroshot")
