"""ClipModel: create / save / load, every accepted input, errors, offline behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import clipkit
from clipkit.model import list_presets, load_image
from clipkit.shapes import world as shapes


@pytest.fixture(scope="module")
def images():
    return [s.image for s in shapes.generate("val", 6, seed=5)]


def test_presets_are_listed_and_do_not_touch_open_clip_registry():
    import open_clip

    before = set(open_clip.list_models())
    assert {"shapes-tiny", "shapes-small"} <= set(list_presets())
    clipkit.create("shapes-tiny")
    assert set(open_clip.list_models()) == before
    assert "shapes-tiny" not in before


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*shapes-tiny"):
        clipkit.create("no-such-model")


def test_encodings_are_unit_norm_float32_cpu(tiny_model, images):
    img = tiny_model.encode_images(images, batch_size=4)  # two batches: 4 + 2
    txt = tiny_model.encode_texts(["a red circle", "a hat on a green star", ""])
    assert img.shape == (6, tiny_model.embed_dim) and txt.shape == (3, tiny_model.embed_dim)
    for e in (img, txt):
        assert e.dtype == torch.float32 and e.device.type == "cpu"
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(e)))


def test_batching_does_not_change_results(tiny_model, images):
    whole = tiny_model.encode_images(images, batch_size=64)
    pieces = tiny_model.encode_images(images, batch_size=1)
    torch.testing.assert_close(whole, pieces, atol=1e-5, rtol=1e-5)


def test_empty_inputs_give_empty_tensors(tiny_model):
    assert tiny_model.encode_images([]).shape == (0, tiny_model.embed_dim)
    assert tiny_model.encode_texts([]).shape == (0, tiny_model.embed_dim)


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, fresh_tiny_model, images):
    before_img = fresh_tiny_model.encode_images(images)
    before_txt = fresh_tiny_model.encode_texts(["a small blue square on the left"])
    fresh_tiny_model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "open_clip_config.json",
    ]
    loaded = clipkit.load(tmp_path / "m")
    assert torch.equal(loaded.encode_images(images), before_img)
    assert torch.equal(loaded.encode_texts(["a small blue square on the left"]), before_txt)
    assert loaded.identity == fresh_tiny_model.identity
    # Saving again over an existing directory replaces it whole.
    fresh_tiny_model.save(tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_saved_directory_loads_in_open_clip_too(tmp_path, fresh_tiny_model, images):
    import open_clip

    fresh_tiny_model.save(tmp_path / "m")
    oc = open_clip.create_model("local-dir:" + str(tmp_path / "m")).eval()
    batch = torch.stack([fresh_tiny_model.preprocess(im) for im in images])
    with torch.no_grad():
        theirs = torch.nn.functional.normalize(oc.encode_image(batch), dim=-1)
    torch.testing.assert_close(theirs, fresh_tiny_model.encode_images(batch), atol=1e-5, rtol=1e-5)


def test_identity_is_hashed_once_and_refreshed_by_save(fresh_tiny_model, tmp_path):
    before = fresh_tiny_model.identity
    with torch.no_grad():
        next(fresh_tiny_model.model.parameters()).add_(1.0)
    assert fresh_tiny_model.identity == before  # cached: no re-hash of every weight per access
    fresh_tiny_model.save(tmp_path / "m")  # saving re-hashes what it writes
    after = fresh_tiny_model.identity
    assert after != before and clipkit.load(tmp_path / "m").identity == after


def test_a_damaged_model_folder_is_refused(tmp_path, fresh_tiny_model):
    fresh_tiny_model.save(tmp_path / "m")
    with open(tmp_path / "m" / "model.safetensors", "ab") as f:  # a copy cut or grown on the way
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match its manifest.json: model.safetensors"):
        clipkit.load(tmp_path / "m")


def test_load_of_a_bare_architecture_points_at_create():
    with pytest.raises(ValueError, match=r"needs a saved model directory or pretrained=.*clipkit.create\('ViT-B-32'\)"):
        clipkit.load("ViT-B-32")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_architecture_with_local_checkpoint_file(tmp_path, fresh_tiny_model, images, suffix):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in fresh_tiny_model.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = clipkit.load("shapes-tiny", pretrained=str(path))
    torch.testing.assert_close(loaded.encode_images(images), fresh_tiny_model.encode_images(images))


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        clipkit.load("shapes-tiny", pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="not a directory saved by clipkit"):
        clipkit.load(str(tmp_path / "weights.safetensors"))


def test_unknown_pretrained_tag_lists_known_ones():
    with pytest.raises(ValueError, match="not a known tag for 'ViT-B-32'.*laion2b"):
        clipkit.load("ViT-B-32", pretrained="no-such-tag")


def test_pretrained_download_fails_fast_offline(monkeypatch):
    from clipkit import hub

    if hub._host_reachable("huggingface.co", timeout=2):
        pytest.skip("this machine is online; the offline path cannot be exercised")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # rely on the real network probe
    probes = []
    real_probe = hub._host_reachable
    monkeypatch.setattr(hub, "_host_reachable", lambda host, *a, **k: probes.append(k) or real_probe(host, *a, **k))
    with pytest.raises(ConnectionError, match="pretrained='/path/to/"):
        clipkit.load("ViT-B-32", pretrained="laion2b_s34b_b79k")
    # bounded, not open-ended: one short connect probe decides (no download retry loop is entered)
    assert len(probes) == 1 and hub.PROBE_TIMEOUT_S <= 5


# ----------------------------------------------------------------------------- inputs


def _rgb_equal_embedding(model, reference: Image.Image, other) -> None:
    torch.testing.assert_close(model.encode_images([other]), model.encode_images([reference]), atol=1e-5, rtol=1e-5)


def test_paths_arrays_and_pil_give_the_same_embedding(tmp_path, tiny_model, images):
    im = images[0]
    path = tmp_path / "im.png"
    im.save(path)
    _rgb_equal_embedding(tiny_model, im, str(path))
    _rgb_equal_embedding(tiny_model, im, path)
    _rgb_equal_embedding(tiny_model, im, np.asarray(im))
    # A ready, preprocessed tensor batch.
    batch = torch.stack([tiny_model.preprocess(x) for x in images])
    torch.testing.assert_close(tiny_model.encode_images(batch), tiny_model.encode_images(images), atol=1e-5, rtol=1e-5)


def test_every_pil_mode_becomes_rgb(tiny_model, images):
    im = images[1]
    gray = im.convert("L")
    expected_gray = gray.convert("RGB")
    assert load_image(gray).mode == "RGB"
    _rgb_equal_embedding(tiny_model, expected_gray, gray)
    _rgb_equal_embedding(tiny_model, expected_gray, np.asarray(gray))  # HxW uint8
    _rgb_equal_embedding(tiny_model, im, im.convert("CMYK").convert("RGB"))
    _rgb_equal_embedding(tiny_model, im.convert("P").convert("RGB"), im.convert("P"))
    # Fully transparent RGBA composites onto white; opaque RGBA equals RGB.
    assert load_image(im.convert("RGBA")).tobytes() == im.tobytes()
    clear = im.convert("RGBA")
    clear.putalpha(0)
    assert set(np.asarray(load_image(clear)).reshape(-1).tolist()) == {255}
    # 16-bit grayscale scales to 8-bit.
    arr16 = np.asarray(gray).astype(np.uint16) * 257
    im16 = Image.fromarray(arr16)
    assert np.array_equal(np.asarray(load_image(im16))[:, :, 0], np.asarray(gray))
    assert tiny_model.encode_images([im16, clear, im.convert("1")]).shape == (3, tiny_model.embed_dim)


def test_bad_inputs_name_the_item(tmp_path, tiny_model, images):
    with pytest.raises(FileNotFoundError, match=r"images\[1\].*missing\.png"):
        tiny_model.encode_images([images[0], str(tmp_path / "missing.png")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"images\[0\].*broken\.png"):
        tiny_model.encode_images([broken])
    with pytest.raises(TypeError, match=r"images\[1\] is int"):
        tiny_model.encode_images([images[0], 3])
    with pytest.raises(ValueError, match=r"dtype float64"):
        tiny_model.encode_images([np.zeros((8, 8, 3))])
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        tiny_model.encode_images(images[0])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny_model.encode_images(torch.zeros(2, 32, 32))
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tiny_model.encode_texts(["ok", 7])
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        tiny_model.encode_texts("a red circle")
    with pytest.raises(ValueError, match="batch_size=0"):
        tiny_model.encode_texts(["a"], batch_size=0)


def test_over_long_text_is_truncated_to_context_length(tiny_model):
    words = "a red circle wearing a hat " * 40
    tokens = tiny_model.tokenizer([words])
    assert tokens.shape == (1, tiny_model.context_length)
    prefix_len = tiny_model.context_length  # well past the context: truncation keeps the start
    e_long = tiny_model.encode_texts([words])
    e_longer = tiny_model.encode_texts([words + " and more words " * prefix_len])
    torch.testing.assert_close(e_long, e_longer)


def test_encoding_keeps_training_mode(fresh_tiny_model):
    fresh_tiny_model.model.train()
    fresh_tiny_model.encode_texts(["a circle"])
    assert fresh_tiny_model.model.training


def test_fast_preprocess_equals_open_clip_transform(tiny_model, images):
    for im in images + [im.resize((48, 40)) for im in images[:2]] + [images[0].convert("L")]:
        torch.testing.assert_close(tiny_model.preprocess(im), tiny_model.preprocess.transform(im), atol=1e-6, rtol=0)


def test_bf16_inference_stays_close_to_fp32(tiny_model, images):
    """bf16 autocast (this CPU's matrix units) gives float32 unit vectors within a small angle of fp32's."""
    for encode, items in ((tiny_model.encode_images, images), (tiny_model.encode_texts, ["a red circle", "a hat"])):
        full, half = encode(items), encode(items, precision="bf16")
        assert half.dtype == torch.float32 and torch.allclose(half.norm(dim=-1), torch.ones(len(items)), atol=1e-5)
        assert float((full * half).sum(-1).min()) > 0.99
    with pytest.raises(ValueError, match="precision='fp8'"):
        tiny_model.encode_texts(["x"], precision="fp8")


# ----------------------------------------------------------------------------- your own architecture

# An open_clip model config at 64 px, as a user writes it (open_clip's model_configs/*.json format).
MY_64PX = {
    "description": "a 64 px CLIP of my own",
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_create_takes_a_config_dict_or_its_json_file(tmp_path):
    import json

    path = tmp_path / "my-64px.json"
    path.write_text(json.dumps(MY_64PX))
    from_dict, from_file = clipkit.create(MY_64PX, seed=0), clipkit.create(path, seed=0)
    assert (from_dict.config.name, from_file.config.name) == ("custom", "my-64px")
    state = from_file.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in from_dict.model.state_dict().items())
    for m in (from_dict, from_file):
        assert (m.embed_dim, m.image_size, m.context_length) == (32, 64, 24)
        assert m.model.visual.conv1.kernel_size == (16, 16) and m.model.visual.conv1.out_channels == 32
        assert m.tokenizer(["a red circle"]).shape == (1, 24)  # the context length of text_cfg
        assert m.encode_images([Image.new("RGB", (64, 64), "red")]).shape == (1, 32)
    # open_clip_config.json's format (model_cfg + preprocess_cfg) is the same architecture
    wrapped = clipkit.create(
        {
            "model_cfg": {k: v for k, v in MY_64PX.items() if k != "description"},
            "preprocess_cfg": {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3},
        },
        seed=0,
    )
    assert all(torch.equal(v, state[k]) for k, v in wrapped.model.state_dict().items())
    assert wrapped.preprocess.mean.flatten().tolist() == [127.5] * 3


@pytest.mark.parametrize("name, size", [("small-32px", 32), ("small-64px", 64)])
def test_a_clip_for_your_own_images_is_one_shipped_json_file_away(name, size):
    m = clipkit.create(name, seed=0)
    assert (m.image_size, m.model.visual.conv1.kernel_size, m.context_length) == (size, (8, 8), 32)
    assert m.model.visual.positional_embedding.shape[0] == (size // 8) ** 2 + 1


def test_own_architecture_saves_and_loads_exactly(tmp_path, images):
    model = clipkit.create(MY_64PX, seed=3)
    texts = ["a small blue square on the left", "a hat"]
    before_img, before_txt = model.encode_images(images), model.encode_texts(texts)
    model.save(tmp_path / "m")
    loaded = clipkit.load(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.config.model_cfg == {k: v for k, v in MY_64PX.items() if k != "description"}
    assert torch.equal(loaded.encode_images(images), before_img)
    assert torch.equal(loaded.encode_texts(texts), before_txt)
    assert loaded.identity == model.identity
    # the saved folder names its architecture for open_clip too, and for --model
    again = clipkit.create(tmp_path / "m" / "open_clip_config.json", seed=3)
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in model.model.state_dict().items())


def _without(cfg: dict, *path) -> dict:
    import copy

    out = copy.deepcopy(cfg)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _with(cfg: dict, value, *path) -> dict:
    import copy

    out = copy.deepcopy(cfg)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    "cfg,error,match",
    [
        (_without(MY_64PX, "embed_dim"), ValueError, r"'embed_dim' is missing; add \"embed_dim\": 512"),
        (_without(MY_64PX, "text_cfg"), ValueError, r"'text_cfg' is missing; add \"text_cfg\": \{"),
        (
            _with(MY_64PX, 8.5, "vision_cfg", "patch_size"),
            TypeError,
            r"vision_cfg.patch_size = 8.5; expected an integer",
        ),
        (
            _with(MY_64PX, 60, "vision_cfg", "image_size"),
            ValueError,
            r"vision_cfg.image_size=60 is not a multiple of vision_cfg.patch_size=16; "
            r"choose an image_size .* \(e.g. 64\)",
        ),
        (_with(MY_64PX, 3, "text_cfg", "heads"), ValueError, r"text_cfg.width=32 is not divisible by text_cfg.heads=3"),
        (
            _with(MY_64PX, 1, "vision_cfg", "patch"),
            ValueError,
            r"unknown field\(s\) \['patch'\] in vision_cfg; valid.*patch_size",
        ),
        (
            _with(MY_64PX, 1, "towers"),
            ValueError,
            r"unknown model config key\(s\) \['towers'\]; valid keys: .*embed_dim",
        ),
        (
            _with(MY_64PX, float("nan"), "text_cfg", "mlp_ratio"),
            ValueError,
            r"text_cfg.mlp_ratio = nan; expected a finite",
        ),
        (_with(MY_64PX, "128", "embed_dim"), TypeError, r"embed_dim = '128'; expected a positive integer"),
    ],
)
def test_a_bad_model_config_is_one_line_naming_the_field_and_the_fix(cfg, error, match):
    with pytest.raises(error, match=match) as raised:
        clipkit.create(cfg)
    assert "\n" not in str(raised.value) and str(raised.value).startswith("the model config: ")


def test_create_names_the_types_it_takes():
    for bad in (None, 3, ["shapes-tiny"]):
        with pytest.raises(
            TypeError,
            match=r"expected an architecture preset .*name \(str\), an open_clip-style "
            r"model config \(dict.*\.json file",
        ):
            clipkit.create(bad)
    with pytest.raises(FileNotFoundError, match="model config file 'missing.json' does not exist"):
        clipkit.create("missing.json")


def test_every_open_clip_architecture_passes_the_config_check():
    """The check reads open_clip's own config classes: every architecture open_clip ships is accepted
    (built from the same dict as open_clip's registry holds, never through the registry)."""
    import open_clip

    from clipkit.model import model_config

    for name in open_clip.list_models():
        config = model_config(name)
        expected = open_clip.get_model_config(name)
        expected.pop("preprocess_cfg", None)
        assert config.model_cfg == expected, name


def test_clipkit_train_takes_a_model_config_file(shapes_dir, tmp_path):
    """`clipkit train --model my-64px.json`: trains that architecture and exports it with its config."""
    import json

    from clipkit.cli import main

    path = tmp_path / "my-64px.json"
    path.write_text(json.dumps(MY_64PX))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(path),
                "--train-data",
                str(shapes_dir / "train" / "{00000..00002}.tar"),
                "--out-dir",
                str(out),
                "--max-steps",
                "3",
                "--batch-size",
                "16",
                "--warmup-steps",
                "1",
                "--num-workers",
                "0",
                "--num-threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    trained = clipkit.load(out / "model")
    assert trained.config.name == "my-64px" and (trained.image_size, trained.context_length) == (64, 24)
    assert trained.config.model_cfg == {k: v for k, v in MY_64PX.items() if k != "description"}
    fresh = clipkit.create(path, seed=0).model.state_dict()
    changed = [k for k, v in trained.model.state_dict().items() if not torch.equal(v, fresh[k])]
    assert "visual.conv1.weight" in changed  # the 64 px tower is the one that trained
