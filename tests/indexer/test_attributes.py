"""Attributes voted by the neighbours that carry them, and their temperature fitted on
held-out references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.attributes import (
    MIN_ATTRIBUTE_EXAMPLES,
    AttributeExample,
    attribute_scores,
    attribute_shares,
    fit_attributes,
)
from indexer.holdout import attribute_examples
from indexer.ids import reference_id
from indexer.index import Hit, VectorIndex
from indexer.vote import CategoryScore, VoteConfig

VOTE = VoteConfig(k=10, temperature=0.05)


def test_the_neighbours_that_carry_an_attribute_vote_on_it_by_closeness() -> None:
    hits = [Hit("a", "Shirt", 0.90), Hit("b", "Pants", 0.85), Hit("c", "Shirt", 0.80)]
    attributes = {"a": {"kids": "true"}, "b": {"kids": "false", "colour": "red"}}
    shares = attribute_shares(hits, attributes, VOTE)
    w_a, w_b = 1.0, math.exp((0.85 - 0.90) / 0.05)
    kids, voters = shares["kids"]
    assert voters == 2 and [s.category for s in kids] == ["true", "false"]
    assert kids[0].score == pytest.approx(w_a / (w_a + w_b))
    assert shares["colour"] == ([CategoryScore("red", 1.0)], 1)
    # Across categories: a Pants neighbour votes on a Shirt's attribute. c carries none.
    assert attribute_shares(hits[2:], attributes, VOTE) == {}


def test_a_fitted_temperature_tempers_the_shares_and_an_unfitted_one_leaves_them() -> None:
    hits = [Hit("a", "x", 0.9), Hit("b", "x", 0.88)]
    attributes = {"a": {"kids": "true"}, "b": {"kids": "false"}}
    raw = attribute_scores(hits, attributes, VOTE, {})[0]
    flat = attribute_scores(hits, attributes, VOTE, {"kids": {"temperature": 4.0}})[0]
    assert raw.name == "kids" and raw.voters == 2
    assert raw.values[0][0] == flat.values[0][0] == "true"
    assert 0.5 < flat.values[0][1] < raw.values[0][1]
    assert sum(p for _, p in flat.values) == pytest.approx(1.0)


def test_overconfident_shares_get_a_temperature_above_one_and_a_smaller_error() -> None:
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(400):  # the top value is said 0.95 sure, and right 70% of the time
        right = rng.random() < 0.7
        shares = [CategoryScore("yes", 0.95), CategoryScore("no", 0.05)]
        examples.append(AttributeExample("kids", shares, "yes" if right else "no"))
    few = [AttributeExample("colour", [CategoryScore("red", 1.0)], "red")] * (
        MIN_ATTRIBUTE_EXAMPLES - 1
    )
    fitted = fit_attributes(examples + few)
    assert set(fitted) == {"kids"}  # too few colour examples to fit on
    kids = fitted["kids"]
    assert kids["temperature"] > 1.0 and kids["examples"] == 400
    assert kids["ece_after"] < kids["ece_before"] / 2
    assert kids["accuracy"] == pytest.approx(0.7, abs=0.06)


def test_a_held_out_reference_is_never_judged_by_its_own_burst() -> None:
    """Bursts of near-identical shots carry their product's attribute; distinct products of
    the same look carry random ones. Judged by its burst, every reference would be right."""
    rng = np.random.default_rng(1)
    ids, vectors, categories, attributes = [], [], [], {}
    for product in range(60):
        centre = rng.standard_normal(32)
        value = str(rng.integers(0, 2))
        for shot in range(4):
            v = centre + 0.01 * rng.standard_normal(32)
            rid = reference_id("c", f"{product}-{shot}")
            ids.append(rid)
            vectors.append(v / np.linalg.norm(v))
            categories.append("c" if product % 2 else "d")
            attributes[rid] = {"odd": value}
    matrix = np.array(vectors, dtype=np.float32)
    index = VectorIndex.build(32, ids, categories, matrix, use_gpu=False)
    examples = attribute_examples(index, ids, matrix, categories, attributes, VOTE)
    assert len(examples) == len(ids)
    accuracy = np.mean([e.correct for e in examples])
    assert accuracy < 0.75  # chance is 0.5; a burst judging itself would give 1.0
