"""The served answer, computed by hand: vote, head, text, temperature, bands, unknown, levels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.answer import HeadInput, TextEvidence, answer, evidence
from indexer.calibration import Calibration
from indexer.decision import Decision, DecisionPolicy
from indexer.head import ConfidenceHead
from indexer.index import Hit
from indexer.vote import VoteConfig

VOTE = VoteConfig(k=3, votes_per_category=3, temperature=0.1)
PARENTS: dict[str, str | None] = {"Apple": "Fruit", "Pear": "Fruit", "Fruit": None, "Shoe": None}
INDEXED = {"Apple", "Pear", "Shoe"}


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(f"{c}-{i}", c, s) for i, (c, s) in enumerate(pairs)]


def served(found: list[Hit], calibration: Calibration, **kwargs: object) -> object:
    return answer(
        found,
        vote=VOTE,
        calibration=calibration,
        policy=DecisionPolicy(),
        indexed=INDEXED,
        parents=PARENTS,
        **kwargs,  # type: ignore[arg-type]
    )


def shares_by_hand(*weights: float, temperature: float = 1.0) -> list[float]:
    tempered = [w ** (1 / temperature) for w in weights]
    return [t / sum(tempered) for t in tempered]


def test_vote_then_temperature_then_the_earned_band() -> None:
    found = hits(("Apple", 0.9), ("Pear", 0.8), ("Apple", 0.7))
    wa = math.exp(0.9 / 0.1) + math.exp(0.7 / 0.1)
    wp = math.exp(0.8 / 0.1)
    calibration = Calibration(temperature=2.0, examples=100, auto_accept_at=0.6)
    prediction = served(found, calibration)
    apple, pear = shares_by_hand(wa, wp, temperature=2.0)
    assert [c.category for c in prediction.categories] == ["Apple", "Pear"]
    assert prediction.categories[0].score == pytest.approx(apple)
    assert prediction.confidence == pytest.approx(apple)  # what the bands read
    assert apple == pytest.approx(0.637, abs=1e-3)
    assert prediction.decision == Decision.AUTO_ACCEPT  # 0.637 >= 0.6
    assert prediction.categories[0].path == ["Fruit", "Apple"]
    stricter = served(found, Calibration(temperature=2.0, examples=100, auto_accept_at=0.7))
    assert stricter.decision == Decision.REVIEW  # under 0.7, and under the flag's 0.80
    assert len(stricter.categories) >= 2


def test_far_from_every_reference_is_unknown() -> None:
    far = Calibration(examples=100, auto_accept_at=0.5, unknown_below=0.95)
    assert served(hits(("Shoe", 0.9)), far).decision == Decision.UNKNOWN


def test_the_parent_is_the_confident_ancestor_when_the_leaves_split() -> None:
    # Apple and Pear split the vote evenly: the answer is unsure, Fruit is sure.
    found = hits(("Apple", 0.9), ("Pear", 0.9), ("Shoe", 0.5))
    prediction = served(found, Calibration(examples=100, auto_accept_at=0.9))
    assert prediction.decision == Decision.REVIEW
    assert prediction.levels[0].category == "Fruit"
    assert prediction.levels[0].score == pytest.approx(1 - prediction.categories[-1].score)
    assert prediction.confident_ancestor is not None
    assert prediction.confident_ancestor.category == "Fruit"


def test_the_head_moves_half_the_share_of_the_categories_it_knows() -> None:
    n = 2
    head = ConfidenceHead(("Apple", "Pear"), np.zeros(2, np.float32),
                          np.zeros((n, 2), np.float32), np.zeros(n, np.float32))  # fmt: skip
    found = hits(("Apple", 0.9), ("Pear", 0.9))  # the vote: half and half
    shares = evidence(found, VOTE, HeadInput(head, np.array([0.9, 0.1])))
    assert {s.category: s.score for s in shares} == pytest.approx(
        {"Apple": 0.5 * 0.5 + 0.5 * 0.9, "Pear": 0.5 * 0.5 + 0.5 * 0.1}
    )


def test_text_claims_fade_with_references_and_a_prompt_only_answer_is_reviewed() -> None:
    found = hits(("Shoe", 0.9))
    text = TextEvidence({"Boot": 0.8, "Shoe": 0.2}, {"Boot": 1.0})  # Boot: prompts, no image
    shares = {s.category: s.score for s in evidence(found, VOTE, None, text)}
    assert shares == pytest.approx({"Boot": 0.8, "Shoe": 0.2})
    prediction = served(found, Calibration(examples=100, auto_accept_at=0.5), text=text)
    assert prediction.categories[0].category == "Boot"
    assert prediction.decision == Decision.REVIEW  # known from text alone: a person confirms


def test_before_a_calibration_the_surest_answer_is_only_flagged() -> None:
    prediction = served(hits(("Shoe", 0.9)), Calibration())
    assert prediction.confidence == pytest.approx(1.0)
    assert prediction.decision == Decision.FLAG


def test_no_neighbours_is_unknown() -> None:
    prediction = served([], Calibration(examples=100, auto_accept_at=0.5))
    assert prediction.decision == Decision.UNKNOWN and prediction.categories == []
