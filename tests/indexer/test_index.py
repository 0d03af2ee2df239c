"""The FAISS index: exact cosine search, live adds and removes, ids that round-trip."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from indexer.ids import faiss_id, reference_id, reference_id_of_faiss
from indexer.index import IndexConfig, VectorIndex


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_reference_ids_are_deterministic_and_fit_faiss() -> None:
    first = reference_id("Shoes", "ab" * 32)
    assert first == reference_id("Shoes", "ab" * 32)
    assert first != reference_id("Boots", "ab" * 32)
    assert 0 <= faiss_id(first) < 2**63
    assert reference_id_of_faiss(faiss_id(first)) == first


def test_search_matches_brute_force_cosine() -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((200, 16)))
    ids = [reference_id("c", str(i)) for i in range(200)]
    index = VectorIndex(16, use_gpu=False)
    index.add(ids, [f"cat{i % 5}" for i in range(200)], vectors)
    query = unit(rng.standard_normal((3, 16)))
    hits = index.search(query, k=7)
    expected = np.argsort(-(query @ vectors.T), axis=1)[:, :7]
    for q, row, want in zip(query, hits, expected, strict=True):
        assert [h.reference_id for h in row] == [ids[i] for i in want]
        assert [h.category for h in row] == [f"cat{i % 5}" for i in want]
        np.testing.assert_allclose([h.similarity for h in row], vectors[want] @ q, rtol=1e-5)


def test_adds_and_removes_are_live_and_adding_twice_is_harmless() -> None:
    index = VectorIndex(4, use_gpu=False)
    a, b = reference_id("x", "a"), reference_id("x", "b")
    index.add([a], ["x"], unit(np.array([[1, 0, 0, 0]], float)))
    index.add([a, b], ["x", "y"], unit(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], float)))
    assert len(index) == 2
    [[hit]] = index.search(unit(np.array([[0, 1, 0, 0]], float)), k=1)
    assert (hit.reference_id, hit.category) == (b, "y")
    index.remove([b])
    assert len(index) == 1
    [[hit]] = index.search(unit(np.array([[0, 1, 0, 0]], float)), k=5)
    assert hit.reference_id == a


def test_an_id_given_twice_in_one_add_is_held_once() -> None:
    index = VectorIndex(4, use_gpu=False)
    a = reference_id("x", "a")
    index.add([a, a], ["x", "y"], unit(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], float)))
    assert (len(index), index.count("x"), index.count("y")) == (1, 1, 0)
    [[hit]] = index.search(unit(np.array([[1, 1, 0, 0]], float)), k=5)
    assert (hit.reference_id, hit.category) == (a, "x")
    np.testing.assert_allclose(hit.similarity, np.sqrt(0.5), rtol=1e-5)


def test_search_on_an_empty_index_returns_no_hits() -> None:
    assert VectorIndex(4, use_gpu=False).search(np.ones((2, 4), np.float32), k=3) == [[], []]


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Vectors around a few centres, as embeddings of categories are."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, dim)))
    return unit(centres[rng.integers(0, clusters, n)] + 0.15 * rng.standard_normal((n, dim)))


def test_auto_picks_ivf_past_the_threshold_and_it_finds_what_flat_finds() -> None:
    vectors = clustered(4000, 32, clusters=20)
    ids = [reference_id("c", str(i)) for i in range(4000)]
    categories = ["c"] * 4000
    config = IndexConfig(kind="auto", ivf_threshold=1000, nprobe=16)
    ivf = VectorIndex.build(32, ids, categories, vectors, config, use_gpu=False)
    flat = VectorIndex.build(32, ids, categories, vectors, IndexConfig("flat"), use_gpu=False)
    assert (ivf.kind, flat.kind) == ("ivf", "flat")
    queries = clustered(50, 32, clusters=20, seed=1)
    recall = np.mean(
        [
            len({h.reference_id for h in a} & {h.reference_id for h in b}) / 10
            for a, b in zip(ivf.search(queries, 10), flat.search(queries, 10), strict=True)
        ]
    )
    assert recall >= 0.9


def test_ivf_adds_and_removes_stay_live() -> None:
    vectors = clustered(2000, 16, clusters=10)
    ids = [reference_id("c", str(i)) for i in range(2000)]
    index = VectorIndex.build(16, ids, ["c"] * 2000, vectors, IndexConfig("ivf"), use_gpu=False)
    new = clustered(1, 16, clusters=10, seed=7)
    index.add([reference_id("n", "1")], ["n"], new)
    [[hit, *_]] = index.search(new, 5)
    assert (hit.reference_id, hit.category) == (reference_id("n", "1"), "n")
    index.remove([reference_id("n", "1")])
    assert reference_id("n", "1") not in {h.reference_id for h in index.search(new, 5)[0]}
    assert len(index) == 2000


def test_unknown_index_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, flat or ivf"):
        IndexConfig(kind="hnsw")


@pytest.mark.parametrize("size", [0, 10])
def test_ivf_with_too_few_vectors_to_train_on_is_flat(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="indexer.index")
    vectors = clustered(size, 8, clusters=2)
    ids = [reference_id("c", str(i)) for i in range(size)]
    index = VectorIndex.build(8, ids, ["c"] * size, vectors, IndexConfig("ivf"), use_gpu=False)
    assert (index.kind, len(index)) == ("flat", size)
    assert "too few to train IVF" in caplog.text


def test_an_index_filled_by_adds_is_resized_to_the_kind_its_size_calls_for() -> None:
    vectors = clustered(2000, 16, clusters=10)
    ids = [reference_id("c", str(i)) for i in range(2000)]
    categories = [f"cat{i % 3}" for i in range(2000)]
    config = IndexConfig(kind="auto", ivf_threshold=1000)
    filled = VectorIndex(16, config, use_gpu=False)  # as a reindex's fill starts: empty
    filled.add(ids, categories, vectors)
    assert filled.kind == "flat"
    ivf = filled.resized()
    assert (ivf.kind, len(ivf), ivf.config) == ("ivf", 2000, config)
    assert {c: ivf.count(c) for c in ivf.categories()} == {
        c: filled.count(c) for c in filled.categories()
    }
    assert ivf.resized() is ivf
    queries = vectors[:20]
    assert [h[0].reference_id for h in ivf.search(queries, 1)] == ids[:20]
    assert [h[0].category for h in ivf.search(queries, 1)] == categories[:20]

    ivf.remove(ids[100:])  # shrunk below the threshold: flat again, with the same vectors
    flat = ivf.resized()
    assert (flat.kind, len(flat)) == ("flat", 100)
    expected = np.argsort(-(queries @ vectors[:100].T), axis=1)[:, :5]
    for row, want in zip(flat.search(queries, 5), expected, strict=True):
        assert [(h.reference_id, h.category) for h in row] == [
            (ids[i], categories[i]) for i in want
        ]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_restricted_search_is_the_exact_search_over_those_categories_alone(kind: str) -> None:
    vectors = clustered(3000, 16, clusters=10)
    ids = [reference_id("c", str(i)) for i in range(3000)]
    categories = [f"cat{i % 30}" for i in range(3000)]
    index = VectorIndex.build(16, ids, categories, vectors, IndexConfig(kind), use_gpu=False)
    assert index.kind == kind
    within = {"cat3", "cat17"}  # 200 of 3,000: IVF probes more lists to find as many
    queries = clustered(20, 16, clusters=10, seed=3)
    allowed = np.array([c in within for c in categories])
    expected = np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :10]
    allowed_ids = [ids[i] for i in np.flatnonzero(allowed)]
    found = index.search(queries, 10, within)
    assert all(h.category in within for row in found for h in row)
    recall = np.mean(
        [
            len({h.reference_id for h in row} & {allowed_ids[i] for i in want}) / 10
            for row, want in zip(found, expected, strict=True)
        ]
    )
    assert recall >= (1.0 if kind == "flat" else 0.9)
    assert index.search(queries, 10, {"no-such"}) == [[] for _ in range(20)]
    index.relabel("cat3", "renamed")
    assert {h.category for row in index.search(queries, 10, {"renamed"}) for h in row} == {
        "renamed"
    }
    assert index.count("renamed") == 100 and index.count("cat3") == 0


def test_a_restricted_search_works_once_faiss_torch_utils_is_imported() -> None:
    """pytorch-metric-learning imports faiss.contrib.torch_utils, whose `search` takes no
    search parameters: a process that trains and serves must still restrict."""
    import faiss.contrib.torch_utils  # noqa: F401

    vectors = clustered(200, 8, clusters=4)
    ids = [reference_id("c", str(i)) for i in range(200)]
    index = VectorIndex.build(8, ids, [f"c{i % 4}" for i in range(200)], vectors, use_gpu=False)
    assert {h.category for h in index.search(vectors[:3], 5, {"c1"})[0]} == {"c1"}
