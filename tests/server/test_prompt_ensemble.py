"""A category's prompts become one text vector on the tower's own scale."""

from __future__ import annotations

import numpy as np
import pytest

from server.serving import prompt_ensemble


def test_one_prompt_is_its_own_vector_whatever_its_length() -> None:
    short = np.array([[0.03, 0.04]], dtype=np.float32)  # 0.05 long, like a class weighting
    np.testing.assert_allclose(prompt_ensemble(short), short[0])


def test_several_prompts_give_their_mean_direction_at_their_mean_length() -> None:
    prompts = np.array([[0.05, 0.0], [0.0, 0.05]], dtype=np.float32)
    vector = prompt_ensemble(prompts)
    assert float(np.linalg.norm(vector)) == pytest.approx(0.05, rel=1e-6)
    np.testing.assert_allclose(vector / np.linalg.norm(vector), [2**-0.5, 2**-0.5], rtol=1e-6)
