"""EmbeddingIndex: exact search equals brute force, approximate kinds keep their recall promise on fresh
queries, filtered search equals brute force on the allowed rows, save/load round trips, and the manifest
refuses mismatched queries and models."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from clipkit.retrieval.embeddings.writer import write_embeddings
from clipkit.retrieval.index import filters
from clipkit.retrieval.index.build import BuildPlan
from clipkit.retrieval.index.core import EmbeddingIndex
from clipkit.retrieval.index.kinds import choose_index
from clipkit.retrieval.index.pieces import build_in_pieces
from clipkit.retrieval.index.tuning import per_query_recall, recall_at_k, recall_lower_bound


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, d: int, seed: int, centres: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(database, held-out queries) from one Gaussian mixture on the sphere."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)

    def draw(m):
        x = c[rng.integers(0, centres, m)] + 0.35 * rng.standard_normal((m, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(200)


def brute_force(xb, xq, k):
    """Exact (scores, row ids) of the k largest inner products, by numpy."""
    scores = xq @ xb.T
    if k < scores.shape[1]:
        top = np.argpartition(-scores, k, axis=1)[:, :k]
    else:
        top = np.tile(np.arange(len(xb)), (len(xq), 1))
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), axis=1)
    return np.take_along_axis(scores, top, axis=1), top


def test_flat_equals_brute_force_with_custom_ids():
    xb, xq = clustered(3000, 16, seed=0)
    ids = np.arange(3000, dtype=np.int64) * 7 + 100
    index = EmbeddingIndex.build(xb, ids=ids, kind="flat")
    scores, found = index.search(xq, k=5)
    want_scores, want = brute_force(xb, xq, 5)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert recall_at_k(found, ids[want]) == 1.0
    assert index.kind == "flat" and len(index) == 3000 and found.dtype == np.int64
    # more neighbours than vectors: k is capped at the index size (k=10**9 must not allocate 10**9 columns)
    small = EmbeddingIndex.build(xb[:3], kind="flat")
    scores, found = small.search(xq[:2], k=10**9)
    assert scores.shape == found.shape == (2, 3) and sorted(found[0]) == [0, 1, 2]


def test_iterator_input_matches_array_input():
    xb, xq = clustered(2500, 16, seed=1)
    chunks = (xb[i : i + 700] for i in range(0, len(xb), 700))
    a = EmbeddingIndex.build(xb, kind="flat")
    b = EmbeddingIndex.build(chunks, kind="flat", batch_size=300)
    np.testing.assert_array_equal(a.search(xq, 4)[1], b.search(xq, 4)[1])


def pareto_mixture(n: int, d: int, seed: int, centres: int = 512, noise: float = 1.5):
    """(database, 2,000 fresh queries): bench_index.py's generator (uneven cluster sizes, wide clusters), small.

    Here leave-one-out tuning on indexed rows, the method before issue 28, picked HNSW efSearch 32 for a
    0.95 target, which delivers 0.88 on fresh queries."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    w = rng.pareto(1.5, centres) + 1
    w /= w.sum()

    def draw(m):
        x = c[rng.choice(centres, m, p=w)] + (noise / np.sqrt(d)) * rng.standard_normal((m, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(2000)


@pytest.mark.parametrize("budget,kind,target", [(1 << 30, "hnsw", 0.95), (10 << 20, "ivf", 0.99)])
def test_auto_keeps_its_recall_promise_on_fresh_queries(budget, kind, target, tmp_path):
    xb, xq = pareto_mixture(25_000, 64, seed=0)
    index = EmbeddingIndex.build(xb, kind="auto", max_memory=budget, recall_target=target)
    assert index.kind == kind  # the budget makes auto choose it
    fresh = per_query_recall(index.search(xq, 10)[1], brute_force(xb, xq, 10)[1])
    assert fresh.mean() >= target  # the promise, on queries it never saw
    p = index.params
    assert p["tuning_queries"] == 1_000 and "held-out" in p["tuning_method"] and p["recall_target"] == target
    assert p["tuned_recall_lower"] >= target and p["tuned_recall"] > p["tuned_recall_lower"]
    assert abs(p["tuned_recall"] - fresh.mean()) < 0.015  # held-out rows measure what fresh queries get
    assert len(index) == 25_000  # the held-out rows were indexed too
    index.save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["params"] == p


@pytest.mark.parametrize("budget,kind", [(1 << 30, "hnsw"), (10 << 20, "ivf")])
def test_auto_counts_duplicates_as_right_answers_and_keeps_its_promise(budget, kind):
    # 250 distinct pictures, 100 copies each (a world of few pictures, or a collection with duplicates):
    # which copies exact search returns is arbitrary, so counting by id would never reach the target and
    # would push the search to the end of its ladder.
    distinct, _ = pareto_mixture(250, 64, seed=3)
    rng = np.random.default_rng(4)
    xb = np.ascontiguousarray(distinct[rng.permutation(np.repeat(np.arange(250), 100))])
    xq = np.ascontiguousarray(distinct[rng.integers(0, 250, 500)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "does not reach the target" warning
        index = EmbeddingIndex.build(xb, kind="auto", max_memory=budget, recall_target=0.95)
    assert index.kind == kind
    scores, found = index.search(xq, 10)
    exact_scores, exact = brute_force(xb, xq, 10)
    by_id = per_query_recall(found, exact).mean()
    by_score = per_query_recall(found, exact, scores, exact_scores).mean()
    assert by_id < 0.5  # ids disagree among copies ...
    # ... while the copies found score as the truth's: recall by score near the promise. Not at it to the
    # third decimal: a picture's copies fail or succeed together, so 1,000 held-out rows of 250 pictures
    # tell less than 1,000 independent queries would (measured: HNSW tuned 0.962, fresh 0.937 at efSearch 24).
    assert by_score >= 0.92
    assert index.params["tuned_recall_lower"] >= 0.95


@pytest.mark.parametrize("kind,adds", [("hnsw", 1), ("ivf", 5)])
def test_hnsw_is_filled_in_one_add_and_other_kinds_chunk_by_chunk(kind, adds):
    # FAISS builds a better HNSW graph from one add than from many (BuildPlan.chunks has the figures)
    xb, _ = pareto_mixture(5_000, 16, seed=5)
    plan = BuildPlan(xb, kind=kind, batch_size=1_000, num_queries=100)
    blocks = list(plan.chunks())
    assert len(blocks) == adds
    held = 100 if kind == "hnsw" else 0  # HNSW leaves its held-out rows out until tuned
    assert sum(len(b) for b in blocks) == 5_000 - held


def test_recall_counts_ties_by_score_only_when_scores_are_given():
    found, truth = np.array([[7, 8]]), np.array([[1, 2]])
    assert per_query_recall(found, truth).tolist() == [0.0]
    tie = per_query_recall(found, truth, np.array([[0.9, 0.5]]), np.array([[0.9, 0.9]]))
    assert tie.tolist() == [0.5]  # 7 ties the truth's last score, 8 does not
    l2 = per_query_recall(found, truth, np.array([[0.1, 0.2]]), np.array([[0.1, 0.2]]), metric="l2")
    assert l2.tolist() == [1.0]


def test_recall_bound_widens_with_spread_and_few_queries():
    assert per_query_recall(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [-1, -1, -1]])).tolist() == [
        pytest.approx(2 / 3),
        1.0,
    ]
    perfect, mixed = np.ones(1000), np.repeat([0.9, 1.0], 500)
    with_pseudo = np.r_[perfect, 0.0, 1.0]  # one pseudo-query at each end
    assert recall_lower_bound(perfect) == pytest.approx(
        with_pseudo.mean() - 1.645 * with_pseudo.std(ddof=1) / np.sqrt(1002)
    )
    assert recall_lower_bound(np.ones(10)) < 0.85 < recall_lower_bound(perfect)  # 10 perfect queries prove little
    assert recall_lower_bound(mixed) < mixed.mean() - 0.003


def test_hnsw_puts_held_out_rows_back_in_row_order():
    xb, xq = clustered(3_000, 16, seed=11)
    for index in (
        EmbeddingIndex.build(xb, kind="hnsw", num_queries=200),
        build_in_pieces(xb, pieces=1, kind="hnsw", num_queries=200),
    ):
        np.testing.assert_array_equal(index.index.reconstruct_n(0, 3_000), xb)  # position p holds row p
        assert index.params["tuning_queries"] == 200 and index.ids is None
    assert index.params == EmbeddingIndex.build(xb, kind="hnsw", num_queries=200).params


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_filtered_search_equals_brute_force_on_the_allowed_rows(kind, monkeypatch):
    # A small exact-search threshold, so that a 6,000-row index takes every path: widened, exact, padded.
    monkeypatch.setattr(filters, "FLAT_BELOW", 500)
    xb, xq = pareto_mixture(6_000, 32, seed=12, centres=128)
    xq = xq[:200]
    ids = np.arange(6_000, dtype=np.int64) * 3 + 1  # the mask is over positions, not ids
    index = EmbeddingIndex.build(
        xb, ids=ids, kind=kind, num_queries=200, train_size=2_000, recall_target=0.5 if kind == "ivfpq" else 0.95
    )
    unfiltered = per_query_recall(index.search(xq, 10)[1], ids[brute_force(xb, xq, 10)[1]]).mean()
    rng = np.random.default_rng(0)
    for allowed in (3_000, 1_200, 300, 3):  # widened search, exact on the rows, padded
        mask = np.zeros(6_000, dtype=bool)
        mask[rng.choice(6_000, allowed, replace=False)] = True
        scores, found = index.search(xq, 10, mask=mask)
        rows, m = np.flatnonzero(mask), min(10, allowed)
        want_scores, want = brute_force(xb[rows], xq, m)
        want, got = ids[rows[want]], found[:, :m]
        assert np.isin(found[found >= 0], ids[rows]).all()  # nothing outside the filter
        recall = per_query_recall(got, want).mean()
        if kind != "ivfpq" and (kind == "flat" or allowed <= 500):  # exact: brute force's answer (up to float ties)
            np.testing.assert_allclose(scores[:, :m], want_scores, atol=1e-5)
            np.testing.assert_allclose(np.einsum("qd,qkd->qk", xq, xb[index.positions(got)]), want_scores, atol=1e-5)
            assert recall >= 0.999
        else:  # widened: filtering costs no recall
            assert recall >= unfiltered - 0.01
        if allowed < 10:  # fewer rows than k: all of them, then -1
            assert recall == 1.0 and (found[:, allowed:] == -1).all() and np.isneginf(scores[:, allowed:]).all()
    assert (index.search(xq[:2], 4, mask=np.zeros(6_000, dtype=bool))[1] == -1).all()
    np.testing.assert_array_equal(index.search(xq, 10, mask=np.ones(6_000, dtype=bool))[1], index.search(xq, 10)[1])
    np.testing.assert_array_equal(index.positions(ids[[5, 0, 5_999]].tolist() + [2, -1]), [5, 0, 5_999, -1, -1])
    with pytest.raises(ValueError, match=r"shape \(6000,\)"):
        index.search(xq, 10, mask=np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        index.search(xq, 10, mask=np.ones(6_000, dtype=np.int64))


def test_ivfpq_trains_from_an_iterator_and_tunes():
    xb, xq = clustered(6_000, 16, seed=3, centres=30)
    chunks = (xb[i : i + 2000] for i in range(0, len(xb), 2000))
    with pytest.warns(RuntimeWarning, match="recall"):  # PQ codes alone stall below 0.95 (FIELD-NOTES)
        index = EmbeddingIndex.build(chunks, kind="ivfpq", recall_target=0.999, num_queries=100)
    _, truth = brute_force(xb, xq, 10)
    assert "PQ" in index.params["factory"] and len(index) == 6_000
    assert recall_at_k(index.search(xq, 10)[1], truth) >= 0.5


@pytest.mark.parametrize(
    "n,budget,kind",
    [
        (5_000, 1 << 30, "flat"),
        (100_000, 1 << 30, "hnsw"),
        (1_000_000, 4 << 30, "ivf"),
        (1_000_000, 200 << 20, "ivfpq"),
        (100_000, 60 << 20, "ivf"),
    ],
)
def test_auto_chooses_by_size_and_memory(n, budget, kind):
    assert choose_index(n, 128, max_memory=budget)[0] == kind


def test_save_load_round_trip(tmp_path):
    xb, xq = clustered(25_000, 16, seed=4)
    meta = {"key": [f"k{i}" for i in range(len(xb))]}
    index = EmbeddingIndex.build(xb, ids=np.arange(len(xb)) + 10, kind="ivf", metadata=meta)
    before = index.search(xq, 5)
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["dim"] == 16 and manifest["kind"] == "ivf" and manifest["count"] == 25_000
    assert "nprobe" in manifest["params"] and "clipkit_version" in manifest
    for mmap in (False, True):
        loaded = EmbeddingIndex.load(tmp_path / "idx", mmap=mmap)
        after = loaded.search(xq, 5)
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0])
    assert loaded.lookup([10, -1]) == [{"id": 10, "key": "k0"}, None]
    assert loaded.lookup(after[1])[0][0]["key"] == f"k{after[1][0, 0] - 10}"


def test_wrong_dim_and_bad_inputs():
    xb, xq = clustered(500, 16, seed=5)
    index = EmbeddingIndex.build(xb)
    with pytest.raises(ValueError, match="dim 8.*dim-16"):
        index.search(np.zeros((2, 8), np.float32), 3)
    with pytest.raises(ValueError, match="k=0"):
        index.search(xq, 0)
    with pytest.raises(TypeError, match="floating"):
        index.search(np.zeros((2, 16), np.int32), 3)
    with pytest.raises(ValueError, match="kind='annoy'"):
        EmbeddingIndex.build(xb, kind="annoy")
    with pytest.raises(ValueError, match="ids"):
        EmbeddingIndex.build(xb, ids=np.arange(3))
    with pytest.raises(ValueError, match="empty"):
        EmbeddingIndex.build(iter([]))


def test_manifest_refuses_other_model_and_format(tmp_path, tiny_model):
    import clipkit

    vectors = tiny_model.encode_texts(["a red circle", "a blue square", "a green star"]).numpy()
    index = EmbeddingIndex.build(vectors, model=tiny_model, metadata={"caption": ["r", "b", "g"]})
    scores, ids = index.search_text(tiny_model, "a red circle", k=1)
    assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    other = clipkit.create("shapes-tiny", seed=1)
    with pytest.raises(ValueError, match="built from model shapes-tiny:"):
        index.search_text(other, "a red circle")
    bigger = clipkit.create("shapes-small", seed=0)
    with pytest.raises(ValueError, match="dim 128"):
        index.search_image(bigger, np.zeros((32, 32, 3), np.uint8))
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["model"]["identity"] == tiny_model.identity and manifest["model"]["embed_dim"] == 64
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        EmbeddingIndex.load(tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match="nothing' does not exist"):
        EmbeddingIndex.load(tmp_path / "nothing")


def test_cli_index_build_and_search(tmp_path, shapes_dir, capsys):
    from clipkit.cli import main

    emb, idx = tmp_path / "emb", tmp_path / "idx"
    assert (
        main(["embed", "--model", "shapes-tiny", "--shards", str(shapes_dir / "val" / "00000.tar"), "--out", str(emb)])
        == 0
    )
    assert main(["index", "build", str(emb), str(idx)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--text", "a red circle", "-k", "3", "--grid", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    hits = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(hits) == 3 and (tmp_path / "g.png").is_file()
    assert main(["search", str(idx), "--text", "x", "--model", "shapes-small"]) == 2  # wrong model: clear error
    assert "dim" in capsys.readouterr().err


# ----------------------------------------------------------------------------- an index that changes (issue 15)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_add_keeps_ids_metadata_and_search_consistent(kind, tmp_path):
    xb, xq = clustered(6_000, 16, seed=6, centres=30)
    meta = {"key": [f"k{i}" for i in range(len(xb))]}
    index = EmbeddingIndex.build(
        xb[:5_000], kind=kind, metadata={"key": meta["key"][:5_000]}, num_queries=100, recall_target=0.5
    )
    added = index.add(xb[5_000:], metadata={"key": meta["key"][5_000:]})
    assert added == 1_000 and len(index) == 6_000 and index.manifest["count"] == 6_000
    # every added vector finds itself, under the next ids, with its own metadata
    scores, ids = index.search(xb[5_000:5_050], 1)
    assert (ids[:, 0] == np.arange(5_000, 5_050)).mean() >= (0.9 if kind == "ivfpq" else 0.98)
    assert index.lookup([5_001])[0]["key"] == "k5001"
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert len(loaded) == 6_000 and loaded.lookup([5_999])[0]["key"] == "k5999"
    if kind == "flat":
        _, want = brute_force(xb, xq, 10)
        np.testing.assert_array_equal(loaded.search(xq, 10)[1], want)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_remove_drops_exactly_those_ids(kind):
    xb, _ = clustered(4_000, 16, seed=7, centres=30)
    ids = np.arange(4_000, dtype=np.int64) * 3 + 1
    index = EmbeddingIndex.build(
        xb, ids=ids, kind=kind, metadata={"row": list(range(4_000))}, num_queries=100, recall_target=0.5
    )
    gone = ids[[0, 10, 3_999]]
    assert index.remove(np.concatenate([gone, [999_999]])) == 3 and len(index) == 3_997
    _, found = index.search(xb[[0, 10, 3_999]], 50)
    assert not np.isin(found, gone).any()
    scores, found = index.search(xb[[11, 2_000]], 1)
    assert found[:, 0].tolist() == ids[[11, 2_000]].tolist()  # the others keep their ids ...
    assert index.lookup(found[:, 0].tolist())[1]["row"] == 2_000  # ... and their metadata
    assert index.add(xb[:1]) == 1 and index.search(xb[:1], 1)[1][0, 0] == ids.max() + 1  # removed ids not reused


def test_hnsw_remove_and_other_models_are_refused(tmp_path, tiny_model, shapes_dir):
    import clipkit

    xb, _ = clustered(1_000, 64, seed=8)
    with pytest.raises(ValueError, match="HNSW index cannot delete"):
        EmbeddingIndex.build(xb, kind="hnsw").remove([1])
    other = clipkit.create("shapes-tiny", seed=1)
    write_embeddings(other, tmp_path / "other", texts=["a red circle", "a hat"], progress=False)
    index = EmbeddingIndex.build(tiny_model.encode_texts(["a blue square"]).numpy(), model=tiny_model)
    with pytest.raises(ValueError, match="embeddings of model shapes-tiny:.*this index holds model"):
        index.add(tmp_path / "other")
    assert len(index) == 1
    with pytest.raises(ValueError, match="already in the index"):
        index.add(xb[:2, :64], ids=[0, 5])
    assert len(index) == 1


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_pieces_from_one_trained_index_merge_into_the_same_index(kind, tmp_path):
    xb, xq = clustered(4_000, 16, seed=9, centres=40)
    meta = {"key": [f"k{i}" for i in range(len(xb))]}
    options = dict(kind=kind, num_queries=100, recall_target=0.7, train_size=2_000)
    whole = EmbeddingIndex.build(xb, metadata=meta, **options)
    pieces = build_in_pieces(xb, pieces=3, batch_size=1_000, **options)
    assert pieces.manifest["pieces"] == 3 and len(pieces) == 4_000
    assert pieces.params == whole.params  # same training, same tuned parameter
    np.testing.assert_array_equal(pieces.search(xq, 10)[1], whole.search(xq, 10)[1])
    # by hand: one trained index, pieces filled separately (e.g. one per rank), merged
    trained = EmbeddingIndex.trained(xb, kind=kind, count=len(xb), train_size=2_000)
    parts = [trained.empty_copy() for _ in range(2)]
    parts[0].add(xb[:2_500], metadata={"key": meta["key"][:2_500]})
    parts[1].add(xb[2_500:], ids=np.arange(2_500, 4_000), metadata={"key": meta["key"][2_500:]})
    merged = EmbeddingIndex.merge(parts)
    assert len(merged) == 4_000 and merged.lookup([3_999])[0]["key"] == "k3999"
    at_once = trained.empty_copy()  # the same trained index, filled in one go
    at_once.add(xb)
    for index in (merged, at_once):
        index.set_search_params(**{n: v for n, v in whole.params.items() if n in ("nprobe", "efSearch")})
    np.testing.assert_array_equal(merged.search(xq, 10)[1], at_once.search(xq, 10)[1])
    if kind != "flat":  # on-disk inverted lists (faiss contrib merge_ondisk): same answers, saved and loaded
        disk = build_in_pieces(xb, pieces=3, batch_size=700, on_disk=tmp_path / "work", **options)
        np.testing.assert_array_equal(disk.search(xq, 10)[1], whole.search(xq, 10)[1])
        disk.save(tmp_path / "idx")
        loaded = EmbeddingIndex.load(tmp_path / "idx")
        assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.faiss", "index.ivfdata", "manifest.json"]
        np.testing.assert_array_equal(loaded.search(xq, 10)[1], whole.search(xq, 10)[1])
        with pytest.raises(ValueError, match="on disk"):
            loaded.add(xb[:1])
    if kind == "ivf":
        stranger = EmbeddingIndex.trained(xb[::-1].copy(), kind=kind, count=len(xb), seed=1)
        with pytest.raises(ValueError, match="trained_sha256"):
            EmbeddingIndex.merge([trained.empty_copy(), stranger])


def test_cli_index_add_and_build_options(tmp_path, shapes_dir, capsys):
    from clipkit.cli import main

    a, b, idx = tmp_path / "a", tmp_path / "b", tmp_path / "idx"
    assert (
        main(["embed", "--model", "shapes-tiny", "--shards", str(shapes_dir / "val" / "00000.tar"), "--out", str(a)])
        == 0
    )
    assert (
        main(
            ["embed", "--model", "shapes-tiny", "--shards", str(shapes_dir / "holdout" / "00000.tar"), "--out", str(b)]
        )
        == 0
    )
    assert (
        main(
            [
                "index",
                "build",
                str(a),
                str(idx),
                "--kind",
                "ivf",
                "--train-on",
                "150",
                "--pieces",
                "2",
                "--max-memory",
                "1G",
                "--on-disk",
            ]
        )
        == 0
    )
    assert (idx / "index.ivfdata").is_file() and not (tmp_path / ".idx.pieces").exists()
    assert main(["index", "build", str(a), str(idx), "--kind", "ivf", "--train-on", "150", "--pieces", "2"]) == 0
    assert main(["index", "add", str(idx), str(b)]) == 0
    assert "added 100 vectors" in capsys.readouterr().out
    index = EmbeddingIndex.load(idx)
    assert len(index) == 300 and index.manifest["pieces"] == 2
    assert [(s["path"], s["count"]) for s in index.manifest["sources"]] == [(str(a), 200), (str(b), 100)]
    shutil.copytree(a, tmp_path / "a-copy")
    for again in (b, a, tmp_path / "a-copy"):  # added before, built from, a copy of it elsewhere
        assert main(["index", "add", str(idx), str(again)]) == 2
        err = capsys.readouterr().err
        assert "are already in this index" in err and "nothing was added" in err, err
    assert len(EmbeddingIndex.load(idx)) == 300
    assert index.lookup([250])[0]["path"].endswith("holdout/00000.tar")
    assert (
        main(["embed", "--model", "shapes-small", "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "c")])
        == 2
    )  # no such texts file: one line
    (tmp_path / "t.txt").write_text("a hat\n")
    assert (
        main(["embed", "--model", "shapes-small", "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "c")])
        == 0
    )
    assert main(["index", "add", str(idx), str(tmp_path / "c")]) == 2  # another model: refused
    assert "this index holds" in capsys.readouterr().err and len(EmbeddingIndex.load(idx)) == 300
