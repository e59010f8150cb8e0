"""The shapes world: determinism, splits, and attributes that match the pixels and captions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clipkit.shapes import world as shapes
from clipkit.shapes.world import (
    BACKGROUNDS,
    COLORS,
    HAT_COLOR,
    HOLDOUT_COMBOS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeAttributes,
    attribute_classes,
    attribute_label,
    attribute_prompts,
    render,
)


def _pixels_near(image, rgb, tol=40) -> np.ndarray:
    arr = np.asarray(image).astype(int)
    return np.abs(arr - np.array(rgb)).max(-1) <= tol


def test_world_has_the_promised_variety():
    assert len(SHAPES) >= 6 and len(COLORS) >= 8 and len(SIZES) == 2 and len(POSITIONS) == 5
    assert len(BACKGROUNDS) >= 3


def test_generation_is_deterministic_and_seeded():
    a = list(shapes.generate("train", 20, seed=3))
    b = list(shapes.generate("train", 20, seed=3))
    c = list(shapes.generate("train", 20, seed=4))
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.caption for s in a] == [s.caption for s in b]
    assert [s.attributes for s in a] != [s.attributes for s in c]
    assert [s.attributes for s in a] != [s.attributes for s in shapes.generate("val", 20, seed=3)]


@pytest.mark.parametrize("size", [32, 64])
def test_image_size_is_configurable(size):
    s = next(shapes.generate("train", 1, image_size=size))
    assert s.image.size == (size, size) and s.image.mode == "RGB"


def test_holdout_combinations_never_in_train_and_only_in_holdout():
    train = [s.attributes for s in shapes.generate("train", 400)]
    holdout = [s.attributes for s in shapes.generate("holdout", 100)]
    assert not any((a.shape, a.color) in HOLDOUT_COMBOS for a in train)
    assert all((a.shape, a.color) in HOLDOUT_COMBOS for a in holdout)
    # Every shape and every colour still appears in training.
    assert {a.shape for a in train} == set(SHAPES) and {a.color for a in train} == set(COLORS)


@pytest.mark.parametrize("index", range(12))
def test_attributes_match_the_pixels(index):
    attrs = list(shapes.generate("val", 12, seed=11))[index].attributes
    image = render(attrs)
    colour_mask = _pixels_near(image, COLORS[attrs.color])
    hat_mask = _pixels_near(image, HAT_COLOR)
    assert colour_mask.sum() >= 12, "the shape is drawn in its colour"
    assert (hat_mask.sum() >= 8) == attrs.hat, "hat pixels exist exactly when hat is true"
    # Position: the shape's centroid lies on the named side of the image centre.
    ys, xs = np.nonzero(colour_mask)
    cx, cy = xs.mean(), ys.mean()
    if attrs.position == "left":
        assert cx < 13
    elif attrs.position == "right":
        assert cx > 19
    elif attrs.position == "top":
        assert cy < 16
    elif attrs.position == "bottom":
        assert cy > 21
    # Size: a large shape covers clearly more pixels than the same shape small.
    other = render(replace(attrs, size="small" if attrs.size == "large" else "large"), 32)
    other_area = _pixels_near(other, COLORS[attrs.color]).sum()
    big, small = (colour_mask.sum(), other_area) if attrs.size == "large" else (other_area, colour_mask.sum())
    assert big > 1.7 * small
    # The background colour fills the corners.
    assert _pixels_near(image, BACKGROUNDS[attrs.background], tol=5)[0, 0]


def test_hat_pairs_differ_only_by_the_hat():
    samples = list(shapes.generate("hat_pairs", 40, seed=2))
    for bare, hatted in zip(samples[0::2], samples[1::2]):
        assert bare.pair_id == hatted.pair_id
        assert not bare.attributes.hat and hatted.attributes.hat
        assert replace(bare.attributes, hat=True) == hatted.attributes
        a, b = np.asarray(bare.image).astype(int), np.asarray(hatted.image).astype(int)
        changed = np.abs(a - b).max(-1) > 30
        ys, _ = np.nonzero(changed)
        assert changed.sum() > 8
        # Every changed pixel got darker (the hat is black; edges are anti-aliased blends),
        # the hat's core is hat-coloured, and all of it sits above the shape's centre.
        assert (b.sum(-1) < a.sum(-1))[changed].all()
        assert (_pixels_near(hatted.image, HAT_COLOR) & changed).sum() >= 8
        centre_y = {"center": 19, "left": 19, "right": 19, "top": 13.5, "bottom": 24}[bare.attributes.position]
        assert ys.max() <= centre_y
    with pytest.raises(ValueError, match="must be even"):
        list(shapes.generate("hat_pairs", 3))


def test_captions_are_varied_and_truthful():
    samples = list(shapes.generate("train", 600, seed=0))
    captions = [s.caption for s in samples]
    assert len(set(captions)) > 300
    short = [c for c in captions if len(c.split()) <= 3]
    assert len(short) > 20, "short captions like 'a red circle' exist"
    for s in samples:
        words = set(s.caption.replace(",", " ").split())
        named_shapes = words & set(SHAPES)
        named_colours = words & set(COLORS)
        assert named_shapes <= {s.attributes.shape}
        assert named_colours <= {s.attributes.color}
        if "hat" in words:
            negated = any(neg in s.caption for neg in ("without a hat", "no hat", "not wearing"))
            assert negated != s.attributes.hat
    hat_captions = [s for s in samples if s.attributes.hat]
    mentioned = sum("hat" in s.caption for s in hat_captions)
    assert mentioned / len(hat_captions) > 0.7


def test_prompts_and_labels_line_up():
    attrs = ShapeAttributes("star", "blue", "large", "left", "white", True)
    for attribute in shapes.ATTRIBUTES:
        classes, prompts = attribute_classes(attribute), attribute_prompts(attribute)
        assert len(classes) == len(prompts)
        label = attribute_label(attrs, attribute)
        assert 0 <= label < len(classes)
    assert attribute_prompts("shape")[attribute_label(attrs, "shape")] == "a photo of a star"
    assert attribute_label({"hat": False}, "hat") == 0
    with pytest.raises(ValueError, match="attribute='weight'"):
        attribute_prompts("weight")


def test_bad_attribute_values_are_rejected():
    with pytest.raises(ValueError, match="shape='blob'"):
        ShapeAttributes("blob", "red", "small", "left", "white", False)
    with pytest.raises(ValueError, match="split='test'"):
        list(shapes.generate("test", 2))
