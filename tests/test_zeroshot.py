"""ZeroShotClassifier: class vectors equal open_clip's build_zero_shot_classifier; metrics; CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from clipkit.retrieval.zeroshot import ZeroShotClassifier, get_templates, metrics_from_logits

CLASSES = ["circle", "square", "triangle", "star"]


@pytest.mark.parametrize("templates", ["openai", "simple", ["a {} shape", "one {}"]])
def test_class_vectors_equal_open_clip(tiny_model, templates):
    from open_clip import build_zero_shot_classifier

    clf = ZeroShotClassifier(tiny_model, CLASSES, templates)
    reference = build_zero_shot_classifier(
        tiny_model.model, tiny_model.tokenizer, CLASSES, get_templates(templates), num_classes_per_batch=3, device="cpu"
    )
    np.testing.assert_allclose(clf.weights, reference.T.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(clf.weights, axis=1), 1, atol=1e-5)


def test_predict_and_proba_follow_the_logits(tiny_model):
    from clipkit.shapes.world import generate

    images = [s.image for s in generate("val", 6, seed=0)]
    clf = ZeroShotClassifier(tiny_model, CLASSES, "simple")
    proba = clf.predict_proba(images)
    assert proba.shape == (6, 4) and np.allclose(proba.sum(1), 1)
    emb = tiny_model.encode_images(images).numpy()
    np.testing.assert_allclose(clf.logits(images), 100 * emb @ clf.weights.T, atol=1e-3)
    np.testing.assert_array_equal(clf.predict(images), proba.argmax(1))
    np.testing.assert_array_equal(clf.predict(emb), clf.predict(images))  # embeddings pass through


def test_evaluate_reports_metrics_and_png(tiny_model, tmp_path):
    clf = ZeroShotClassifier(tiny_model, CLASSES, "none")
    emb = np.repeat(clf.weights, [3, 1, 1, 1], axis=0)  # each class vector is classified as itself
    labels = ["circle", "circle", "square", "square", "triangle", "star"]
    report = clf.evaluate(emb, labels, confusion_png=tmp_path / "cm.png")
    assert report["top1"] == pytest.approx(5 / 6) and report["top5"] == 1.0
    assert report["per_class_recall"] == {"circle": 1.0, "square": 0.5, "triangle": 1.0, "star": 1.0}
    assert report["balanced_accuracy"] == pytest.approx(0.875)
    assert report["confusion"][1] == [1, 1, 0, 0]
    assert (tmp_path / "cm.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="'dog' is not one of"):
        clf.evaluate(emb[:1], ["dog"])


def test_metrics_from_logits_top5_and_missing_class():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    r = metrics_from_logits(logits, np.array([0, 1, 1]), ["a", "b", "c"])
    assert r["top1"] == pytest.approx(2 / 3) and r["per_class_recall"]["c"] is None
    assert r["balanced_accuracy"] == pytest.approx(0.75)


def test_templates_from_file_and_errors(tmp_path, tiny_model):
    f = tmp_path / "t.txt"
    f.write_text("# comment\na photo of a {}\n{} on white\n")
    assert get_templates(f) == ["a photo of a {}", "{} on white"]
    assert len(get_templates("openai")) == 80
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        get_templates(["a photo"])
    with pytest.raises(ValueError, match="openai"):
        get_templates("fancy")
    with pytest.raises(ValueError, match="duplicate"):
        ZeroShotClassifier(tiny_model, ["a", "a"])


def test_cli_folder_csv_and_labelled_folder(tmp_path, capsys):
    from clipkit.cli import main
    from clipkit.shapes.world import generate

    for s in generate("val", 8, seed=5):
        d = tmp_path / "root" / s.attributes.shape
        d.mkdir(parents=True, exist_ok=True)
        s.image.save(d / f"{s.key}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        s.image.save(tmp_path / "flat" / f"{s.key}.png")
    assert (
        main(
            [
                "zero-shot",
                "--model",
                "shapes-tiny",
                "--images",
                str(tmp_path / "flat"),
                "--labels",
                "circle,star",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 8 and {r["label"] for r in rows} <= {"circle", "star"}
    assert (
        main(
            [
                "zero-shot",
                "--model",
                "shapes-tiny",
                "--labelled-folder",
                str(tmp_path / "root"),
                "--confusion",
                str(tmp_path / "cm.png"),
            ]
        )
        == 0
    )
    assert "top-1=" in capsys.readouterr().out and (tmp_path / "cm.png").is_file()


def test_cli_labelled_shards(shapes_dir, capsys):
    from clipkit.cli import main

    def zero_shot(*extra: str) -> int:
        shards = str(shapes_dir / "holdout" / "00000.tar")
        return main(["zero-shot", "--model", "shapes-tiny", "--shards", shards, "--label-field", "color", *extra])

    assert zero_shot("--templates", "a {} shape") == 2  # not a template file
    assert zero_shot() == 0
    assert "n=100" in capsys.readouterr().out
    # --labels naming some of the colours: the other samples are left out and counted, not blamed on the list.
    assert zero_shot("--labels", "red,blue") == 0
    out = capsys.readouterr().out
    left_out = int(out.split("left out ")[1].split(" of 100")[0])
    assert 0 < left_out < 100 and f"n={100 - left_out}" in out
    assert zero_shot("--labels", "dog,cat") == 2
    assert "no sample's 'color' is one of --labels" in capsys.readouterr().err


def test_one_template_syntax_and_one_default_everywhere(tmp_path):
    """'{}' (open_clip's) and '{c}' (CLIP_benchmark's) name the class in lists and files alike; zero-shot,
    eval and export-benchmark share one default."""
    import inspect

    from clipkit.evaluation import export_labelled_folder, open_dataset
    from clipkit.retrieval.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier

    listed = get_templates(["a {} shape", "one {c}"])
    assert [t.format("dog") if isinstance(t, str) else t("dog") for t in listed] == ["a dog shape", "one dog"]
    path = tmp_path / "templates.txt"
    path.write_text("# mine\na {c} here\nthe {}\n")
    assert [t("cat") if callable(t) else t.format("cat") for t in get_templates(path)] == ["a cat here", "the cat"]
    with pytest.raises(ValueError, match="'{}' or '{c}'"):
        get_templates(["no placeholder"])
    assert get_templates(None) == get_templates(DEFAULT_TEMPLATES)
    for fn in (ZeroShotClassifier.__init__, open_dataset, export_labelled_folder):
        assert inspect.signature(fn).parameters["templates"].default is None  # None: DEFAULT_TEMPLATES
