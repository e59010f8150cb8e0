"""ClipModel: create / save / load, every accepted input, errors, offline behaviour."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import clipkit
from clipkit.shapes import world as shapes
from clipkit.model import list_presets, load_image


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
    img = tiny_model.encode_images(images, batch_size=4)     # two batches: 4 + 2
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
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "manifest.json",
                                                                  "model.safetensors", "open_clip_config.json"]
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
    assert fresh_tiny_model.identity == before                     # cached: no re-hash of every weight per access
    fresh_tiny_model.save(tmp_path / "m")                          # saving re-hashes what it writes
    after = fresh_tiny_model.identity
    assert after != before and clipkit.load(tmp_path / "m").identity == after


def test_a_damaged_model_folder_is_refused(tmp_path, fresh_tiny_model):
    fresh_tiny_model.save(tmp_path / "m")
    with open(tmp_path / "m" / "model.safetensors", "ab") as f:            # a copy cut or grown on the way
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
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)     # rely on the real network probe
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
    _rgb_equal_embedding(tiny_model, expected_gray, np.asarray(gray))            # HxW uint8
    _rgb_equal_embedding(tiny_model, im, im.convert("CMYK").convert("RGB"))
    _rgb_equal_embedding(tiny_model, im.convert("P").convert("RGB"), im.convert("P"))
    # Fully transparent RGBA composites onto white; opaque RGBA equals RGB.
    assert load_image(im.convert("RGBA")).tobytes() == im.tobytes()
    clear = im.convert("RGBA")
    clear.putalpha(0)
    assert set(np.asarray(load_image(clear)).reshape(-1).tolist()) == {255}
    # 16-bit grayscale scales to 8-bit.
    arr16 = (np.asarray(gray).astype(np.uint16) * 257)
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
    prefix_len = tiny_model.context_length   # well past the context: truncation keeps the start
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
