"""clipkit embed: clip-retrieval layout written in parts, read back aligned by our streaming reader."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipkit.retrieval.embeddings.reader import EmbeddingFolder, read_embeddings
from clipkit.retrieval.embeddings.writer import write_embeddings


@pytest.fixture(scope="module")
def shard_embeddings(tmp_path_factory, shapes_dir, tiny_model):
    out = tmp_path_factory.mktemp("emb")
    summary = write_embeddings(
        tiny_model,
        out,
        shards=str(shapes_dir / "train" / "{00000..00002}.tar"),
        part_size=250,
        batch_size=128,
        progress=False,
        model_source="shapes-tiny",
    )
    return out, summary


def test_layout_and_parts(shard_embeddings, tiny_model):
    out, summary = shard_embeddings
    assert summary["count"] == 600 and summary["parts_count"] == 3  # one part per shard
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [f"img_emb_{i:05d}.npy" for i in range(3)]
    assert sorted(p.name for p in (out / "text_emb").iterdir()) == [f"text_emb_{i:05d}.npy" for i in range(3)]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"metadata_{i:05d}.parquet" for i in range(3)]
    assert [np.load(out / "img_emb" / f"img_emb_{i:05d}.npy").shape for i in range(3)] == [(200, 64)] * 3
    assert sorted(p.name for p in out.iterdir()) == ["img_emb", "manifest.json", "metadata", "text_emb"]
    info = json.loads((out / "manifest.json").read_text())
    assert info["format"] == "clipkit-embeddings" and info["complete"] is True
    assert info["model"] == tiny_model.identity and info["embed_dim"] == 64 and info["count"] == 600
    assert info["parts"]["img_emb/img_emb_00001.npy"]["rows"] == 200
    assert len(info["parts"]["metadata/metadata_00002.parquet"]["sha256"]) == 64
    assert sum(info["skipped"].values()) == 0


def _shard_image(url: str, key: str) -> Image.Image:
    with tarfile.open(url) as tar:
        return Image.open(io.BytesIO(tar.extractfile(f"{key}.png").read())).convert("RGB")


def test_reader_rows_are_aligned(shard_embeddings, tiny_model):
    out, _ = shard_embeddings
    folder = EmbeddingFolder(out)
    assert folder.count == 600 and folder.dim == 64 and folder.modalities == ("img", "text")
    meta = folder.metadata()
    assert len(set(meta["key"])) == 600 and {"key", "path", "caption", "shape", "hat"} <= set(meta)
    img_all, txt_all = folder.load("img"), folder.load("text")
    rows = [0, 249, 250, 599]
    want_txt = tiny_model.encode_texts([meta["caption"][r] for r in rows]).numpy()
    want_img = tiny_model.encode_images([_shard_image(meta["path"][r], meta["key"][r]) for r in rows]).numpy()
    np.testing.assert_allclose(txt_all[rows], want_txt, atol=1e-5)
    np.testing.assert_allclose(img_all[rows], want_img, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(img_all, axis=1), 1, atol=1e-5)


def test_chunks_and_pairs_stream_in_order(shard_embeddings):
    out, _ = shard_embeddings
    folder = EmbeddingFolder(out)
    chunks = list(read_embeddings(out, "img", chunk_size=100))
    assert all(len(v) <= 100 and v.dtype == np.float32 for v, _ in chunks)
    keys = [k for _, m in chunks for k in m["key"]]
    assert keys == folder.metadata(["key"])["key"]
    np.testing.assert_array_equal(np.concatenate([v for v, _ in chunks]), folder.load("img"))
    pairs = list(folder.pairs(chunk_size=64, metadata=True, columns=["key"]))
    assert sum(len(i) for i, _, _ in pairs) == 600
    assert all(len(i) == len(t) == len(m["key"]) for i, t, m in pairs)
    with pytest.raises(ValueError, match="chunk_size"):
        list(folder.chunks("img", chunk_size=0))


def test_refuses_to_overwrite_and_bad_inputs(shard_embeddings, tiny_model, tmp_path):
    out, _ = shard_embeddings
    with pytest.raises(ValueError, match="already holds embeddings made with other arguments"):
        write_embeddings(tiny_model, out, texts=["a"], progress=False)
    with pytest.raises(ValueError, match="nothing to embed"):
        write_embeddings(tiny_model, tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError):
        EmbeddingFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="modality"):
        list(EmbeddingFolder(out).chunks("audio"))


def test_image_folder_with_captions_and_texts_only(tmp_path, tiny_model):
    from clipkit.shapes.world import generate

    folder = tmp_path / "imgs"
    folder.mkdir()
    samples = list(generate("val", 5, seed=3))
    for s in samples:
        s.image.save(folder / f"{s.key}.png")
        (folder / f"{s.key}.txt").write_text(s.caption)
    summary = write_embeddings(tiny_model, tmp_path / "e1", images=folder, part_size=2, batch_size=2, progress=False)
    assert summary["count"] == 5 and summary["parts_count"] == 3 and summary["modalities"] == ["img", "text"]
    f = EmbeddingFolder(tmp_path / "e1")
    meta = f.metadata()
    assert meta["caption"] == [s.caption for s in samples] and meta["key"] == [s.key for s in samples]
    np.testing.assert_allclose(f.load("img"), tiny_model.encode_images([s.image for s in samples]).numpy(), atol=1e-4)

    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\n\na hat\n")
    summary = write_embeddings(tiny_model, tmp_path / "e2", texts=texts, progress=False)
    f = EmbeddingFolder(tmp_path / "e2")
    assert f.modalities == ("text",) and f.count == 3
    want = tiny_model.encode_texts(["a red circle", "a blue square", "a hat"]).numpy()
    np.testing.assert_allclose(f.load("text"), want, atol=1e-5)


def test_cli_embed(tmp_path, shapes_dir):
    from clipkit.cli import main

    rc = main(
        [
            "embed",
            "--model",
            "shapes-tiny",
            "--shards",
            str(shapes_dir / "val" / "00000.tar"),
            "--out",
            str(tmp_path / "e"),
            "--float16",
            "--no-captions",
        ]
    )
    assert rc == 0
    f = EmbeddingFolder(tmp_path / "e")
    assert f.modalities == ("img",) and f.count == 200
    assert np.load(tmp_path / "e" / "img_emb" / "img_emb_00000.npy").dtype == np.float16


def test_embedding_reader_reads_our_layout(shard_embeddings):
    """The reference reader (clip-retrieval's ecosystem) sees the same vectors and metadata as ours."""
    er = pytest.importorskip("embedding_reader")
    out, _ = shard_embeddings
    reader = er.EmbeddingReader(
        embeddings_folder=str(out / "img_emb"),
        file_format="parquet_npy",
        metadata_folder=str(out / "metadata"),
        meta_columns=["key", "caption"],
    )
    assert (reader.count, reader.dimension) == (600, 64)
    vectors, keys = [], []
    for emb, meta in reader(batch_size=250, start=0, end=reader.count, show_progress=False):
        vectors.append(emb)
        keys.extend(meta["key"].tolist())
    ours = EmbeddingFolder(out)
    np.testing.assert_allclose(np.concatenate(vectors), ours.load("img"), atol=1e-6)
    assert keys == ours.metadata(["key"])["key"]


def _launch(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    return subprocess.run([*launcher, "-m", "clipkit", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_write_the_single_process_rows(shapes_dir, tiny_model, tmp_path):
    """torchrun --nproc_per_node 2 -m clipkit embed: ranks split the shards, one manifest lists every part,
    and the union of the rows is exactly the single-process output."""
    bin_dir = os.path.dirname(sys.executable)
    shards = str(shapes_dir / "train" / "{00000..00002}.tar") + "::" + str(shapes_dir / "val" / "00000.tar")
    single = write_embeddings(tiny_model, tmp_path / "one", shards=shards, batch_size=64, progress=False)
    args = ["embed", "--model", "shapes-tiny", "--shards", shards, "--out", str(tmp_path / "two"), "--batch-size", "64"]
    done = _launch([os.path.join(bin_dir, "torchrun"), "--standalone", "--nproc_per_node", "2"], args)
    assert done.returncode == 0, done.stderr[-3000:]
    two = EmbeddingFolder(tmp_path / "two")
    one = EmbeddingFolder(tmp_path / "one")
    assert two.count == one.count == 800 and two.info["parts"].keys() == single["parts"].keys()
    assert two.metadata(["key", "path"]) == one.metadata(["key", "path"])
    np.testing.assert_allclose(two.load("img"), one.load("img"), atol=1e-5)
    np.testing.assert_allclose(two.load("text"), one.load("text"), atol=1e-5)
    assert two.info["signature"] == single["signature"] and two.info["count"] == 800
