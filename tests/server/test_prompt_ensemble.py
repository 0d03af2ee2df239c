"""A category's prompts become one text vector on the tower's own scale; text search
compares directions, and knows a prompt's own text."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.store import Category
from server.serving import Serving, prompt_ensemble, text_cosines, text_key


def test_one_prompt_is_its_own_vector_whatever_its_length() -> None:
    short = np.array([[0.03, 0.04]], dtype=np.float32)  # 0.05 long, like a class weighting
    np.testing.assert_allclose(prompt_ensemble(short), short[0])


def test_several_prompts_give_their_mean_direction_at_their_mean_length() -> None:
    prompts = np.array([[0.05, 0.0], [0.0, 0.05]], dtype=np.float32)
    vector = prompt_ensemble(prompts)
    assert float(np.linalg.norm(vector)) == pytest.approx(0.05, rel=1e-6)
    np.testing.assert_allclose(vector / np.linalg.norm(vector), [2**-0.5, 2**-0.5], rtol=1e-6)


def test_text_cosines_by_hand() -> None:
    vectors = np.array([[0.03, 0.04], [0.6, 0.8], [0.0, 0.2], [-0.4, -0.3]], dtype=np.float32)
    query = np.array([0.3, 0.4], dtype=np.float32)
    # the same direction scores 1 at any length; the dot products were 0.025, 0.5, 0.08, -0.24
    np.testing.assert_allclose(text_cosines(vectors, query), [1.0, 1.0, 0.8, -0.96], rtol=1e-6)
    assert text_cosines(np.zeros((1, 2), dtype=np.float32), query)[0] == 0.0


def test_a_text_is_its_own_whatever_its_case_and_spacing() -> None:
    assert text_key("  A   Kilt\t") == text_key("a kilt") == "a kilt"
    assert text_key("Cafe\u0301") == text_key("CAF\u00c9")
    assert text_key("a kilt") != text_key("kilts")


def test_text_matches_are_prompts_or_the_name_of_a_category_without_prompts() -> None:
    serving = Serving(embedder=None, index=None)  # type: ignore[arg-type]  # text only
    try:
        skirt = Category("Skirt", None, {}, 0, 0, ["a skirt", "A Kilt"])
        serving.remember_prompts([skirt], [np.ones(2, dtype=np.float32)])
        names = ["Skirt", "Kilts", "a kilt"]
        assert serving.text_matches("a  KILT", names) == {"Skirt", "a kilt"}
        assert serving.text_matches("skirt", names) == set()  # prompted: not by its name
        assert serving.text_matches("kilts", names) == {"Kilts"}
        serving.drop_text("Skirt")
        assert serving.text_matches("a skirt", names) == set()
    finally:
        serving.close()
