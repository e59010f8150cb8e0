"""`clipkit serve`: the JSON API against brute force and the library, every bad input, queues, the CLI.

A tiny world is built once per module: 48 shapes images in one shard, embedded by a fresh
`shapes-tiny` CLIP, a flat index over them and a tiny (untrained) unCLIP pipeline.
tests/test_serve_browser.py builds the same world with `build_world`.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import clipkit  # noqa: E402
from clipkit.data.shards import read_member_image  # noqa: E402
from clipkit.retrieval.arithmetic import evaluate_expression, nearest_words  # noqa: E402
from clipkit.retrieval.embeddings.reader import EmbeddingFolder  # noqa: E402
from clipkit.retrieval.embeddings.writer import write_embeddings  # noqa: E402
from clipkit.retrieval.index.core import EmbeddingIndex  # noqa: E402
from clipkit.retrieval.zeroshot import ZeroShotClassifier  # noqa: E402
from clipkit.serve import (  # noqa: E402
    BoundedPool,
    ClientError,
    Engine,
    MicroBatcher,
    Overloaded,
    Query,
    ServeConfig,
    bind_socket,
    create_app,
    make_server,
)
from clipkit.serve.errors import INTERNAL  # noqa: E402
from clipkit.shapes.world import write_split  # noqa: E402
from clipkit.unclip import (  # noqa: E402
    DecoderConfig,
    DecoderUNet,
    DiffusionPrior,
    PriorConfig,
    UnCLIP,
    UpsamplerConfig,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ITEMS = 48
TINY_DECODER = dict(channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2)


def build_world(root: Path, pipeline: bool = True) -> dict:
    """Shards, a saved shapes-tiny model, its embeddings, a flat index (and a tiny unCLIP pipeline) under root."""
    write_split(root / "shards", split="val", num=ITEMS, seed=5, shard_size=ITEMS)
    model = clipkit.create("shapes-tiny", seed=0)
    model.save(root / "model")
    write_embeddings(
        model, root / "emb", shards=str(root / "shards" / "00000.tar"), model_source=str(root / "model"), progress=False
    )
    EmbeddingIndex.build(EmbeddingFolder(root / "emb"), kind="flat", model=model).save(root / "index")
    world = {"root": root, "index": root / "index", "model": root / "model", "emb": root / "emb", "unclip": None}
    if pipeline:
        torch.manual_seed(0)
        decoder = DecoderUNet(DecoderConfig(embed_dim=model.embed_dim, **TINY_DECODER))
        prior = DiffusionPrior(PriorConfig(embed_dim=model.embed_dim, width=32, layers=1, heads=2))
        with torch.no_grad():  # zero-initialised outputs would make every image flat grey
            for p in [*decoder.parameters(), *prior.parameters()]:
                p.add_(torch.randn(p.shape) * 0.05)
        UnCLIP(model, decoder, prior, clip_path=str(root / "model")).save(root / "unclip")
        world["unclip"] = root / "unclip"
    return world


def load_engine(world: dict, config: ServeConfig | None = None, pipeline: bool = True) -> Engine:
    index = EmbeddingIndex.load(world["index"])
    pipe = UnCLIP.load(world["unclip"]) if pipeline and world["unclip"] else None
    return Engine(index, index.model(str(world["model"])), pipe, config or ServeConfig())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def engine(world):
    engine = load_engine(world)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


@pytest.fixture(scope="module")
def vectors(world):

    return EmbeddingFolder(world["emb"]).load("img")


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, allowed=None, exclude=None):
    scores = vectors @ (query / np.linalg.norm(query))
    order = [i for i in np.argsort(-scores, kind="stable") if (allowed is None or allowed[i]) and i != exclude]
    return [int(i) for i in order[:k]], scores


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that claim width x height pixels (what a decompression bomb looks like to open())."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


# ----------------------------------------------------------------------------- search against brute force


def test_text_search_equals_brute_force(client, engine, vectors):
    r = client.post("/search", json={"text": "a red circle wearing a hat", "k": 7})
    assert r.status_code == 200, r.text
    data = r.json()
    query = engine.model.encode_texts(["a red circle wearing a hat"]).numpy()[0]
    expected, scores = brute_force(vectors, query, 7)
    assert [h["id"] for h in data["results"]] == expected
    np.testing.assert_allclose([h["score"] for h in data["results"]], scores[expected], atol=1e-4)
    hit = data["results"][0]
    assert hit["image_url"] == f"/image/{hit['id']}" and hit["caption"] and "path" not in hit["metadata"]


def test_more_like_this_uses_the_stored_vector_and_leaves_the_item_out(client, vectors):
    data = client.post("/search", json={"id": 5, "k": 6}).json()
    expected, _ = brute_force(vectors, vectors[5], 6, exclude=5)
    assert [h["id"] for h in data["results"]] == expected


def test_image_upload_finds_itself_first(client):
    png = client.get("/image/11").content
    data = client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"k": "3"}).json()
    assert data["results"][0]["id"] == 11 and data["results"][0]["score"] > 0.999


def test_filters_search_only_matching_rows(client, engine, vectors, world):

    meta = EmbeddingFolder(world["emb"]).metadata()
    allowed = np.array([s in ("circle", "star") and h for s, h in zip(meta["shape"], meta["hat"])])
    assert 0 < allowed.sum() < ITEMS
    r = client.post("/search", json={"text": "a shape", "k": 40, "filters": {"shape": ["circle", "star"], "hat": True}})
    query = engine.model.encode_texts(["a shape"]).numpy()[0]
    expected, _ = brute_force(vectors, query, 40, allowed=allowed)
    assert [h["id"] for h in r.json()["results"]] == expected  # every matching row, best first
    form = client.post(
        "/search",
        files={"image": ("x.png", client.get("/image/0").content, "image/png")},
        data={"k": "5", "filters": json.dumps({"shape": "circle"})},
    ).json()
    assert form["results"] and all(h["metadata"]["shape"] == "circle" for h in form["results"])
    mask = engine.catalog.mask({"shape": "circle"})  # one cached, read-only mask per filter set
    assert mask is engine.catalog.mask({"shape": ["circle"]}) and not mask.flags.writeable
    assert np.array_equal(mask, np.asarray(meta["shape"]) == "circle")


def test_expression_search_equals_the_library(client, engine, vectors, world, monkeypatch):
    """img:"3" is indexed item 3's stored vector (no image is read or encoded): the same as the library given it,
    and, since the index stores what the model makes, the same as encoding the image."""
    expression = 'text:"a red circle" + 0.8 * text:"a hat" - 0.5 * img:"3"'
    image3 = world["root"] / "three.png"
    read_member_image(world["root"] / "shards" / "00000.tar", "00000003").save(image3)
    local = evaluate_expression(engine.model, expression, images={"3": vectors[3]})
    encoded = evaluate_expression(engine.model, expression.replace('img:"3"', f'img:"{image3}"'))
    np.testing.assert_allclose(local, encoded, atol=1e-5)
    with monkeypatch.context() as m:
        m.setattr(engine.catalog, "image", lambda item_id: pytest.fail('an image was read for img:"3"'))
        m.setattr(engine.model, "encode_images", lambda *a, **k: pytest.fail("an image was encoded"))
        data = client.post("/search", json={"expression": expression, "k": 5}).json()
    expected, _ = brute_force(vectors, local, 5)
    assert [h["id"] for h in data["results"]] == expected
    assert [w["word"] for w in data["words"]] == [w for w, _ in nearest_words(engine.model, local, k=5)]
    upload = client.post(
        "/search",
        files={"image": ("x.png", image3.read_bytes(), "image/png")},
        data={"expression": 'img:"upload"', "k": "1"},
    ).json()
    assert upload["results"][0]["id"] == 3


def test_k_is_capped_at_the_index_size(client):
    data = client.post("/search", json={"text": "a star", "k": 10**9}).json()
    assert data["k"] == ITEMS and data["count"] == ITEMS and len({h["id"] for h in data["results"]}) == ITEMS


def test_image_endpoint_serves_indexed_images_by_id_only(client, world):
    r = client.get("/image/7")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    original = np.asarray(read_member_image(world["root"] / "shards" / "00000.tar", "00000007"))
    assert np.array_equal(served, original)
    assert client.get(f"/image/{ITEMS}").status_code == 404
    assert client.get("/image/-1").status_code == 404
    assert client.get("/image/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/image/abc").status_code == 422


def test_a_missing_shard_is_a_404_not_a_crash(world):
    engine = load_engine(world, pipeline=False)
    shard = world["root"] / "shards" / "00000.tar"
    moved = shard.with_suffix(".moved")
    shard.rename(moved)
    try:
        with TestClient(create_app(engine)) as c:
            r = c.get("/image/3")
            assert r.status_code == 404 and "no stored image" in r.json()["error"]
            assert c.post("/search", json={"id": 3, "k": 2}).status_code == 200  # the vector is in FAISS
            assert c.post("/search", json={"expression": 'img:"3"', "k": 2}).status_code == 200  # so is img:"3"
    finally:
        moved.rename(shard)
        engine.close()


@pytest.mark.parametrize("source", ["shards", "image folder", "file list"])
def test_an_index_embedded_from_relative_paths_serves_from_any_directory(source, tmp_path, monkeypatch):
    """`clipkit embed --shards data/val/00000.tar --model model` (or an image folder, a file list) in one
    directory, the server in another: every path the outputs record (images, shards, the model) resolves, so
    /image/{id} and img:"ID" answer; an index whose paths do not resolve says so at load."""
    from clipkit.cli import main

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_split(work / "data" / "val", split="val", num=6, seed=5, shard_size=6)
    clipkit.create("shapes-tiny", seed=0).save(work / "model")
    originals = [read_member_image(work / "data" / "val" / "00000.tar", f"{i:08d}") for i in range(6)]
    (work / "images").mkdir()
    for i, image in enumerate(originals):
        image.save(work / "images" / f"{i}.png")
    (work / "list.txt").write_text("".join(f"images/{i}.png\n" for i in range(6)))
    monkeypatch.chdir(work)
    args = {
        "shards": ["--shards", "data/val/00000.tar"],
        "image folder": ["--images", "images"],
        "file list": ["--images", "list.txt"],
    }[source]
    assert main(["embed", "--model", "model", *args, "--out", "emb"]) == 0
    assert main(["index", "build", "emb", "idx", "--kind", "flat"]) == 0
    monkeypatch.chdir(elsewhere)
    index = EmbeddingIndex.load(work / "idx")
    assert index.missing_images() is None
    engine = Engine(index, index.model(), None, ServeConfig())  # the model the manifest records
    try:
        with TestClient(create_app(engine)) as c:
            r = c.get("/image/1")
            assert r.status_code == 200, r.text
            served = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
            assert np.array_equal(served, np.asarray(originals[1]))
            hits = c.post("/search", json={"expression": 'img:"1"', "k": 1}).json()["results"]
            assert [h["id"] for h in hits] == [1]
    finally:
        engine.close()
    index.metadata["path"] = [os.path.relpath(p, work) for p in index.metadata["path"]]  # as recorded before
    assert "do not resolve from" in index.missing_images()


# ----------------------------------------------------------------------------- zero-shot and generation


def test_zero_shot_equals_the_classifier(client, engine):

    png = client.get("/image/2").content
    r = client.post(
        "/zero-shot", files={"image": ("x.png", png, "image/png")}, data={"classes": "circle, square, star"}
    )
    assert r.status_code == 200, r.text
    got = {c["class"]: c["probability"] for c in r.json()["classes"]}
    clf = ZeroShotClassifier(engine.model, ["circle", "square", "star"], templates="simple")
    want = clf.predict_proba([Image.open(io.BytesIO(png))])[0]
    np.testing.assert_allclose([got[c] for c in ("circle", "square", "star")], want, atol=1e-4)
    by_id = client.post("/zero-shot", json={"id": 2, "classes": ["circle", "square", "star"]}).json()
    assert {c["class"]: c["probability"] for c in by_id["classes"]} == pytest.approx(got, abs=1e-4)


def test_generate_equals_the_pipeline(client, engine):
    r = client.post("/generate", json={"text": "a red star", "num_images": 2, "steps": 3, "seed": 1, "guidance": 2.0})
    assert r.status_code == 200, r.text
    served = [decode_data_url(u) for u in r.json()["images"]]
    direct = engine.pipeline.generate("a red star", num_images=2, steps=3, sampler="ddim", seed=1, guidance_scale=2.0)
    assert len(served) == 2 and all(np.array_equal(a, np.asarray(b)) for a, b in zip(served, direct))
    assert served[0].shape == (32, 32, 3) and not np.array_equal(served[0], served[1])
    for body in (
        {"id": 4, "num_images": 1, "steps": 2},
        {"expression": 'img:"4" + 0.5 * text:"a hat"', "steps": 2},
        {"text": "a blue heart", "negative_prompt": "a red shape", "steps": 2, "sampler": "flow"},
    ):
        r = client.post("/generate", json=body)
        assert r.status_code == 200 and r.json()["images"], (body, r.text)
    png = client.get("/image/4").content
    r = client.post("/generate", files={"image": ("x.png", png, "image/png")}, data={"num_images": "1", "steps": "2"})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_a_cascade_pipeline_is_served_at_its_upsampler_resolution(world, tmp_path):
    """A pipeline saved with an upsampler (clipkit fit --image-size 64) serves what its cascade paints."""
    base = UnCLIP.load(world["unclip"])
    torch.manual_seed(1)
    upsampler = DecoderUNet(
        UpsamplerConfig(image_size=64, low_res_size=32, channels=(16, 32), attention_levels=(False, False))
    )
    with torch.no_grad():
        for p in upsampler.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    UnCLIP(base.clip, base.decoder, base.prior, upsampler=upsampler, clip_path=str(world["model"])).save(
        tmp_path / "cascade"
    )
    index = EmbeddingIndex.load(world["index"])
    cascade = UnCLIP.load(tmp_path / "cascade")
    engine = Engine(index, index.model(str(world["model"])), cascade, ServeConfig())
    try:
        with TestClient(create_app(engine)) as c:
            body = {"text": "a red star", "num_images": 1, "steps": 2, "seed": 3, "guidance": 3.0}
            r = c.post("/generate", json=body)
            assert r.status_code == 200, r.text
            served = decode_data_url(r.json()["images"][0])
            direct = cascade.generate(
                "a red star", num_images=1, steps=2, sampler="ddim", seed=3, guidance_scale=3.0, upsample=True
            )
            assert served.shape == (64, 64, 3) and np.array_equal(served, np.asarray(direct[0]))
            r = c.post("/generate", json={"id": 4, "num_images": 1, "steps": 2})
            assert r.status_code == 200 and decode_data_url(r.json()["images"][0]).shape == (64, 64, 3)
    finally:
        engine.close()


def test_full_generation_queue_answers_503_with_retry_after(client, engine):
    release = threading.Event()
    pool = engine.generator
    blockers = [pool.submit(release.wait, 30) for _ in range(pool.workers + pool.queue)]
    try:
        r = client.post("/generate", json={"text": "a red star", "num_images": 1, "steps": 1})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "full" in r.json()["error"]
    finally:
        release.set()
        for b in blockers:
            b.result(timeout=30)
    assert client.post("/generate", json={"text": "a red star", "num_images": 1, "steps": 1}).status_code == 200


def test_generate_without_a_pipeline_says_how_to_get_one(world):
    engine = load_engine(world, pipeline=False)
    try:
        with TestClient(create_app(engine)) as c:
            r = c.post("/generate", json={"text": "a red star"})
            assert r.status_code == 400 and "--unclip" in r.json()["error"]
            assert c.get("/info").json()["unclip"] is False
    finally:
        engine.close()


# ----------------------------------------------------------------------------- bad input

BAD_SEARCHES = [
    ({"text": ""}, 400, "empty"),
    ({"text": "   "}, 400, "empty"),
    ({"text": "a" * 10_000}, 400, "10,000 characters"),
    ({"text": "a", "k": 0}, 422, "k:"),
    ({"text": "a", "k": -3}, 422, "k:"),
    ({"id": 10**6}, 404, "not in the index"),
    ({"id": -1}, 404, "not in the index"),
    ({"id": 10**30}, 404, "not in the index"),
    ({"expression": 'text:"a" +'}, 400, "position"),
    ({"expression": 'text:"a" * text:"b"'}, 400, "multiply two vectors"),
    ({"expression": 'img:"/etc/passwd"'}, 400, "never a path"),
    ({"expression": 'img:"../index/manifest.json"'}, 400, "never a path"),
    ({"expression": 'img:"upload"'}, 400, "uploaded image"),
    ({"expression": 'text:"a" - text:"a"'}, 400, "zero vector"),
    ({"expression": "x" * 10_000}, 400, "characters"),
    ({"text": 5}, 422, "text:"),
    ({"text": ["a"]}, 422, "text:"),
    ({"text": "a", "k": "ten"}, 422, "k:"),
    ({"text": "a", "k": "5"}, 422, "k:"),
    ({"text": "a", "k": 2.5}, 422, "k:"),
    ({"text": "a", "k": True}, 422, "k:"),
    ({"id": "3"}, 422, "id:"),
    ({"text": "a", "filters": [1]}, 422, "filters"),
    ({"text": "a", "filters": {"shape": {"$ne": 1}}}, 422, "filters"),
    ({"text": "a", "filters": {"colour": "red"}}, 400, "unknown column"),
    ({"text": "a", "filters": {"path": "x"}}, 400, "unknown column"),
    ({"tex": "a"}, 422, "known fields"),
    ({}, 400, "exactly one"),
    ({"text": "a", "id": 3}, 400, "exactly one"),
]


@pytest.mark.parametrize("body,status,message", BAD_SEARCHES, ids=[json.dumps(b)[:40] for b, _, _ in BAD_SEARCHES])
def test_bad_search_bodies_get_a_4xx_naming_the_problem(client, body, status, message):
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()


@pytest.mark.parametrize(
    "content,ctype,status,message",
    [
        (b"[1, 2]", "application/json", 422, "JSON object"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"text=a", "text/plain", 415, "Content-Type"),
    ],
)
def test_bad_bodies(client, content, ctype, status, message):
    r = client.post("/search", content=content, headers={"content-type": ctype})
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    "payload,status,message",
    [
        (b"hello, I am text", 400, "not an image"),
        (b"", 400, "empty"),
        (png_header_only(30_000, 30_000), 413, "decompression bomb"),  # beyond PIL's own limit
        (png_header_only(5_000, 5_000), 413, "pixels"),  # beyond the server's --max-image-mpixels
        (png_header_only(64, 64), 400, "could not be decoded"),  # truncated pixel data
    ],
)
def test_bad_uploads(client, payload, status, message):
    for path, extra in (("/search", {}), ("/zero-shot", {"classes": "a, b"}), ("/generate", {"steps": "1"})):
        r = client.post(path, files={"image": ("x.png", payload, "image/png")}, data=extra)
        assert r.status_code == status and message in r.json()["error"], (path, r.text)


def test_uploads_over_the_size_limit_get_413_streamed_or_not(world):
    engine = load_engine(world, ServeConfig(max_upload_bytes=50_000), pipeline=False)
    big = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)))
    assert len(big) > 50_000 + 256 * 1024
    try:
        with TestClient(create_app(engine)) as c:
            r = c.post("/search", files={"image": ("big.png", big, "image/png")})
            assert r.status_code == 413 and "limit" in r.json()["error"]
            chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
            r = c.post("/search", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
            assert r.status_code == 413
            medium = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 255, (160, 160, 3), np.uint8)))
            assert 50_000 < len(medium) < 50_000 + 256 * 1024  # passes the body limit ...
            r = c.post("/search", files={"image": ("m.png", medium, "image/png")})
            assert r.status_code == 413 and "upload is" in r.json()["error"]  # ... not the upload limit
            assert c.get("/health").json()["status"] == "ok"
    finally:
        engine.close()


@pytest.mark.parametrize(
    "path,body,message",
    [
        ("/zero-shot", {"id": 1, "classes": ["circle"]}, "between 2"),
        ("/zero-shot", {"id": 1, "classes": ["a", "b"], "templates": "/etc/passwd"}, "templates"),
        ("/zero-shot", {"id": 1, "classes": "circle, square"}, "classes:"),
        ("/zero-shot", {"classes": ["a", "b"]}, "exactly one"),
        ("/generate", {"text": "a", "num_images": 0}, "num_images"),
        ("/generate", {"text": "a", "num_images": 1000}, "num_images"),
        ("/generate", {"text": "a", "steps": 10**9}, "steps"),
        ("/generate", {"text": "a", "sampler": "euler"}, "sampler"),
        ("/generate", {"text": "a", "guidance": "high"}, "guidance:"),
        ("/generate", {"id": 1, "negative_prompt": "red"}, "text prompts only"),
        ("/generate", {"expression": 'img:"C:/x.png"'}, "never a path"),
    ],
)
def test_bad_zero_shot_and_generate_bodies(client, path, body, message):
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500 and message in r.json()["error"], r.text


def scrape(client) -> dict:
    """GET /metrics parsed by prometheus_client: {(sample name, sorted labels): value}."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def stage_counts(samples: dict) -> dict[str, float]:
    return {
        dict(labels)["stage"]: v
        for (name, labels), v in samples.items()
        if name == "clipkit_serve_stage_duration_seconds_count"
    }


def test_the_server_stays_up_and_counts_everything(client):
    before = scrape(client)
    key = ("clipkit_serve_requests_total", (("method", "POST"), ("route", "/search"), ("status", "{}")))

    def count(samples, status):
        return samples.get((key[0], tuple((n, v.format(status)) for n, v in key[1])), 0)

    client.post("/search", json={"text": ""})
    client.post("/search", json={"text": "a circle"})
    client.get("/no-such-page")
    model = client.get("/info").json()["model"]
    assert client.get("/health").json() == {"status": "ok", "count": ITEMS, "model": model, "unclip": True}
    after = scrape(client)
    assert count(after, 200) - count(before, 200) == 1 and count(after, 400) - count(before, 400) == 1
    unrouted = ("clipkit_serve_requests_total", (("method", "GET"), ("route", "(unrouted)"), ("status", "404")))
    assert after[unrouted] - before.get(unrouted, 0) == 1
    latency = ("clipkit_serve_request_duration_seconds_count", (("method", "POST"), ("route", "/search")))
    assert after[latency] - before[latency] == 2
    assert after[("clipkit_serve_texts_encoded_total", ())] - before[("clipkit_serve_texts_encoded_total", ())] == 1
    assert after[("clipkit_serve_batches_total", (("batcher", "search"),))] >= 1
    assert ("clipkit_serve_generation_running", ()) in after and ("process_cpu_seconds_total", ()) in after


def test_metrics_histograms_count_each_stage_of_a_search(client):
    """One text search = one encode_text, one search, one metadata observation; an upload encodes an image instead."""
    png = client.get("/image/5").content
    before = stage_counts(scrape(client))
    assert client.post("/search", json={"text": "a blue star", "k": 3}).status_code == 200
    after_text = stage_counts(scrape(client))
    assert client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"k": "3"}).status_code == 200
    after_image = stage_counts(scrape(client))

    def delta(a, b):
        return {
            stage: b.get(stage, 0) - a.get(stage, 0)
            for stage in ("encode_text", "encode_image", "search", "metadata", "generate")
        }

    assert delta(before, after_text) == {"encode_text": 1, "encode_image": 0, "search": 1, "metadata": 1, "generate": 0}
    assert delta(after_text, after_image) == {
        "encode_text": 0,
        "encode_image": 1,
        "search": 1,
        "metadata": 1,
        "generate": 0,
    }
    assert client.post("/generate", json={"text": "a red star", "num_images": 1, "steps": 1}).status_code == 200
    assert stage_counts(scrape(client))["generate"] - after_image.get("generate", 0) == 1


def test_two_apps_keep_their_own_registries(engine):
    with TestClient(create_app(engine)) as a, TestClient(create_app(engine)) as b:
        a.get("/health")
        a.get("/health")
        b.get("/health")
        key = ("clipkit_serve_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))
        assert scrape(a)[key] == 2 and scrape(b)[key] == 1


def test_one_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="clipkit.serve.requests"):
        client.post("/search", json={"text": "a red star", "k": 2})
        client.get("/image/999999")
    lines = [r for r in caplog.records if r.name == "clipkit.serve.requests"]
    assert [(r.method, r.path, r.status) for r in lines] == [("POST", "/search", 200), ("GET", "/image/999999", 404)]
    assert lines[0].getMessage().startswith("method=POST path=/search status=200 ms=") and lines[0].ms > 0


# ----------------------------------------------------------------------------- client errors vs server errors


@pytest.mark.parametrize(
    "error",
    [
        ValueError("secret detail: column 7 of a numpy array"),
        TypeError("secret detail: NoneType is not subscriptable"),
        RuntimeError("secret detail: FAISS said no"),
    ],
)
def test_a_library_error_is_a_500_with_a_generic_message_and_a_logged_traceback(world, caplog, error):
    """Only ClientError becomes a 4xx: a ValueError from inside the library is a bug, not the client's fault."""
    engine = load_engine(world, pipeline=False)

    def broken(*args, **kwargs):
        raise error

    engine.catalog.hits = broken
    try:
        with TestClient(create_app(engine)) as c, caplog.at_level(logging.ERROR, logger="clipkit.serve"):
            r = c.post("/search", json={"text": "a red star"})
            assert r.status_code == 500 and r.json() == {"error": INTERNAL}
            assert "secret" not in r.text
            assert c.get("/health").status_code == 200  # and the server goes on
    finally:
        engine.close()
    logged = [rec for rec in caplog.records if rec.name == "clipkit.serve" and rec.exc_info]
    assert len(logged) == 1 and logged[0].exc_info[1] is error and "POST /search" in logged[0].getMessage()


@pytest.mark.parametrize(
    "content,ctype",
    [
        (b"[" * 100_000, "application/json"),
        (b'{"text": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "application/json"),
    ],
)
def test_deeply_nested_json_gets_a_json_400(client, content, ctype):
    r = client.post("/search", content=content, headers={"content-type": ctype})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text[:200]
    assert "nested too deeply" in r.json()["error"]
    form = client.post("/search", files={"image": ("x.png", b"x", "image/png")}, data={"filters": "[" * 100_000})
    assert form.status_code == 400 and "nested too deeply" in form.json()["error"]


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/nope").json() == {"error": "Not Found"}
    r = client.get("/search")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}


def test_client_error_is_what_the_engine_checks_raise(engine):
    for call, status in (
        (lambda: engine.check_k(0), 422),
        (lambda: engine.check_text(" "), 400),
        (lambda: engine.catalog.mask({"colour": "red"}), 400),
        (lambda: engine.catalog.row(10**6), 404),
        (lambda: engine.catalog.row(2**70), 404),
        (lambda: engine.read_image(b"not an image"), 400),
        (lambda: engine.expression_vector('text:"a" *'), 400),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.status == status
    with pytest.raises(ValueError, match="400..499"):
        ClientError(500, "a server error is not a client error")


def test_openapi_documents_json_and_upload_bodies(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert "k" in content["application/json"]["schema"]["properties"]
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and not re.search(r'(?:src|href|url)\s*[=:]\s*["\']https?://', docs), docs


def test_page_is_served_without_external_resources(client):
    page = client.get("/").text
    assert "<title>clipkit serve</title>" in page
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert not asset.startswith(("http:", "https:", "//")), asset
        if asset.startswith("/static/"):
            assert client.get(asset).status_code == 200
    assert not re.search(r"https?://", client.get("/static/app.js").text + client.get("/static/style.css").text)


# ----------------------------------------------------------------------------- queues


def test_micro_batcher_joins_waiting_items_into_one_call():
    release, calls = threading.Event(), []

    def fn(items):
        calls.append(list(items))
        if items == ["block"]:
            release.wait(10)
        return [f"{x}!" for x in items]

    batcher = MicroBatcher(fn, max_batch=5, window_ms=0)
    first = batcher.submit("block")
    while not calls:  # the worker is busy with "block" ...
        time.sleep(0.001)
    futures = [batcher.submit(i) for i in range(8)]  # ... while 8 items queue up
    release.set()
    assert first.result(5) == "block!" and [f.result(5) for f in futures] == [f"{i}!" for i in range(8)]
    assert calls[1:] == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert batcher.stats()["largest_batch"] == 5
    batcher.close()

    one_at_a_time = MicroBatcher(lambda items: [len(items)] * len(items), enabled=False, window_ms=50)
    assert [f.result(5) for f in [one_at_a_time.submit(i) for i in range(6)]] == [1] * 6
    one_at_a_time.close()


def test_micro_batcher_isolates_a_bad_item_and_bounds_its_queue():
    def fn(items):
        if any(x < 0 for x in items):
            raise ValueError(f"negative in {items}")
        return [x * 2 for x in items]

    batcher = MicroBatcher(fn, max_batch=8, window_ms=30, max_pending=4)
    futures = [batcher.submit(x) for x in (1, -1, 3)]
    assert futures[0].result(5) == 2 and futures[2].result(5) == 6
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(5)
    batcher.close()
    stuck = MicroBatcher(lambda items: time.sleep(0.5) or items, max_batch=1, window_ms=0, max_pending=2)
    accepted = []
    with pytest.raises(Overloaded):
        for i in range(10):
            accepted.append(stuck.submit(i))
    assert len(accepted) <= 3
    stuck.close()


def test_micro_batcher_waits_only_for_expected_company():
    """A window of a minute: a lone query (nothing else expected) runs at once; with two expected, the batch
    waits for the second and runs both in one call."""
    calls, expected = [], [1]
    batcher = MicroBatcher(
        lambda items: calls.append(list(items)) or items, max_batch=8, window_ms=60_000, expected=lambda: expected[0]
    )
    assert batcher.submit("alone").result(timeout=20) == "alone"
    expected[0] = 2
    first = batcher.submit("a")
    while batcher.stats()["pending"]:  # the worker took "a" and waits for company
        time.sleep(0.001)
    second = batcher.submit("b")
    assert (first.result(timeout=20), second.result(timeout=20)) == ("a", "b")
    assert calls == [["alone"], ["a", "b"]]
    batcher.close()


def test_queries_in_flight_are_counted_while_they_run(client, engine):
    seen = []
    original = engine.catalog.hits
    engine.catalog.hits = lambda scores, ids: seen.append(engine.in_flight) or original(scores, ids)
    try:
        assert client.post("/search", json={"text": "a red star", "k": 2}).status_code == 200
    finally:
        del engine.catalog.hits
    assert seen == [1] and engine.in_flight == 0


def test_bounded_pool_refuses_beyond_workers_plus_queue():
    pool, release = BoundedPool(workers=1, queue=2), threading.Event()
    jobs = [pool.submit(release.wait, 10) for _ in range(3)]
    with pytest.raises(Overloaded) as info:
        pool.submit(lambda: None)
    assert info.value.retry_after >= 1 and pool.stats()["rejected"] == 1
    release.set()
    assert all(j.result(5) for j in jobs)
    assert pool.submit(lambda: 7).result(5) == 7
    pool.close()


def test_engine_batched_search_equals_one_by_one(engine):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, engine.index.dim)).astype(np.float32)
    queries = [Query(k, v) for v, k in zip(vectors, (1, 3, 5, 48, 2, 9))]
    queries[2].mask = engine.catalog.mask({"size": "small"})
    queries[3].exclude = 4
    batched = engine._search_batch(queries)
    for q, (scores, ids) in zip(queries, batched):
        single = engine._search_batch([q])[0]
        assert np.array_equal(ids, single[1]) and np.allclose(scores, single[0])
        assert len(ids) == (q.k if q.exclude is None else q.k - 1)


def test_bf16_encoders_return_the_fp32_query_vectors_within_tolerance(world):
    texts = ["a red circle wearing a hat", "a small blue star on the left", "a green square"]
    out = {}
    for precision in ("fp32", "bf16"):
        engine = load_engine(world, ServeConfig(precision=precision), pipeline=False)
        queries = [Query(k=5, text=t) for t in texts]
        engine._search_batch(queries)
        out[precision] = np.stack([q.vector for q in queries])
        engine.close()
    assert out["bf16"].dtype == np.float32
    np.testing.assert_allclose(out["bf16"], out["fp32"], atol=0.03)  # unit vectors; bf16 keeps ~3 digits
    assert not np.array_equal(out["bf16"], out["fp32"])  # bf16 really ran


# ----------------------------------------------------------------------------- a real server


@pytest.fixture
def real_server(engine):
    """(port, uvicorn server) of the app on a free 127.0.0.1 port, uvicorn in a thread (as `clipkit serve` runs)."""
    sock = bind_socket("127.0.0.1", 0)
    uv = make_server(create_app(engine))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    assert uv.started, "uvicorn did not start"
    yield sock.getsockname()[1], uv
    uv.should_exit = True
    thread.join(15)
    sock.close()


def test_kept_alive_answers_are_not_held_back_by_nagle(real_server):
    """The 40 ms stall: uvicorn writes headers and body in two send()s; with Nagle's algorithm on the
    server socket the body waits for the client's delayed ACK of the headers on a kept-alive connection.
    So every accepted socket must be TCP_NODELAY, and answers sized (Content-Length), never chunked."""
    port, uv = real_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"text": "a red circle", "k": 3}).encode()
    sockets = set()
    for _ in range(3):
        conn.request("POST", "/search", body, {"content-type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200 and json.loads(data)["count"] == 3
        assert response.getheader("content-length") == str(len(data))
        assert response.getheader("transfer-encoding") is None
        assert not response.will_close
        sockets.add(id(conn.sock))
    assert len(sockets) == 1  # one kept-alive connection ...
    accepted = [p.transport.get_extra_info("socket") for p in uv.server_state.connections]
    assert len(accepted) == 1  # ... one accepted socket, and it
    assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # sends small writes at once
    conn.close()


@pytest.mark.slow  # a fresh interpreter imports torch + open_clip: 15-30 s here
def test_cli_serves_over_loopback_and_batches_concurrent_queries(world, tmp_path):
    """`clipkit serve --port 0` on an index whose manifest records its model: concurrent clients, then Ctrl-C."""

    EmbeddingIndex.build(EmbeddingFolder(world["emb"]), kind="flat").save(tmp_path / "index")  # records model_source
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipkit",
            "serve",
            "--index",
            str(tmp_path / "index"),
            "--port",
            "0",
            "--batch-window-ms",
            "100",
            "--threads",
            "1",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url, lines = None, []
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
            url = match.group(1) if match else None
        assert url, "".join(lines)

        def post(body):
            req = urllib.request.Request(
                url + "/search", json.dumps(body).encode(), {"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        texts = [f"a {c} shape" for c in ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown")]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda t: post({"text": t, "k": 3}), texts))
        assert all(status == 200 for status, _ in answers)
        for text, (_, data) in zip(texts, answers):  # batched answers = each query on its own
            assert data["results"] == post({"text": text, "k": 3})[1]["results"]
        assert post({"text": ""})[0] == 400 and post({"k": "x"})[0] == 422
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(r.read().decode())
                for s in f.samples
            }
        assert samples[("clipkit_serve_batch_largest", (("batcher", "search"),))] >= 2
        ok = ("clipkit_serve_requests_total", (("method", "POST"), ("route", "/search"), ("status", "200")))
        assert samples[ok] >= 16
    finally:
        proc.send_signal(2)  # Ctrl-C: uvicorn shuts down cleanly
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0
    rest = proc.stdout.read()
    line = r"INFO clipkit\.serve\.requests: method=POST path=/search status=200 ms=[\d.]+\n"
    assert re.search(line, rest), rest[-2000:]
