"""Honest examples: on a catalogue of near-duplicate bursts, plain leave-one-out is
over-confident and leave-one-shoot-out is not; labelled traffic and open-set copies."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.calibration import Bound, LabelledExample, fit_calibration
from indexer.holdout import labelled_examples, reference_examples, shoots
from indexer.index import VectorIndex
from indexer.vote import VoteConfig

VOTE = VoteConfig()
DIM = 24


def items(rng: np.random.Generator, centres: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    """n distinct products per category, spread wide enough that categories overlap."""
    labels = [f"c{i}" for i in range(len(centres)) for _ in range(n)]
    points = np.repeat(centres, n, axis=0) + rng.normal(0, 0.55, (len(labels), DIM))
    return points, labels


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def catalogue() -> dict[str, object]:
    """References in bursts of 4 shots of one product; traffic of other, single products."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1 / np.sqrt(DIM), (6, DIM)) * 1.6
    products, labels = items(rng, centres, 40)
    shots = np.repeat(products, 4, axis=0) + rng.normal(0, 0.03, (len(products) * 4, DIM))
    refs = unit(shots)
    ref_labels = [c for c in labels for _ in range(4)]
    ids = [f"{i:016x}" for i in range(len(refs))]
    index = VectorIndex.build(DIM, ids, ref_labels, refs)
    traffic, truth = items(rng, centres, 60)
    return {
        "index": index,
        "ids": ids,
        "refs": refs,
        "labels": ref_labels,
        "traffic": unit(traffic),
        "truth": truth,
    }


def top1(examples: list[LabelledExample]) -> float:
    inside = [e for e in examples if not e.open_set]
    return float(np.mean([e.correct for e in inside]))


def test_a_burst_is_one_shoot(catalogue: dict) -> None:
    shoot_of = shoots(catalogue["index"], catalogue["ids"], catalogue["refs"], catalogue["labels"])
    ids = catalogue["ids"]
    bursts = [ids[i : i + 4] for i in range(0, len(ids), 4)]
    whole = sum(len({shoot_of[r] for r in burst}) == 1 for burst in bursts)
    assert whole / len(bursts) > 0.95
    sizes = np.bincount(list(shoot_of.values()))
    assert np.mean(sizes[sizes > 0]) < 12  # distinct products are joined only in small chains


def test_plain_leave_one_out_is_over_confident_and_the_shoot_estimate_is_not(
    catalogue: dict,
) -> None:
    index, ids, refs, labels = (catalogue[k] for k in ("index", "ids", "refs", "labels"))
    alone = {r: i for i, r in enumerate(ids)}  # every reference its own shoot: plain LOO
    plain, _ = reference_examples(index, ids, refs, labels, alone, VOTE)
    honest, head = reference_examples(
        index, ids, refs, labels, shoots(index, ids, refs, labels), VOTE
    )
    served = labelled_examples(index, catalogue["traffic"], catalogue["truth"], VOTE, head)
    traffic = top1(served)  # what the catalogue really gets right, as served
    assert 0.5 < traffic < 0.9  # a catalogue where mistakes happen
    assert top1(plain) > traffic + 0.15  # the bursts judge each other
    assert abs(top1(honest) - traffic) < 0.08
    # And so the calibration: fitted on plain LOO it is far surer than traffic is right.
    sure = fit_calibration(plain, "plain")
    fair = fit_calibration(honest, "shoots")
    assert sure.temperature < fair.temperature


def test_labelled_traffic_is_asked_of_the_whole_catalogue_with_an_open_set_copy(
    catalogue: dict,
) -> None:
    index, traffic, truth = catalogue["index"], catalogue["traffic"], catalogue["truth"]
    examples = labelled_examples(index, traffic[:50], truth[:50], VOTE, None)
    inside = [e for e in examples if not e.open_set]
    outside = [e for e in examples if e.open_set]
    assert len(inside) == len(outside) == 50
    assert all(e.shares[0].category != e.truth for e in outside)  # its category left out
    assert all(not e.correct for e in outside)
    # a labelled photo of a category the catalogue lacks is an open-set example only
    lacking = labelled_examples(index, traffic[:3], ["Hats"] * 3, VOTE, None)
    assert len(lacking) == 3 and all(e.open_set for e in lacking)


def test_open_set_copies_raise_the_earned_threshold(catalogue: dict) -> None:
    index, traffic, truth = catalogue["index"], catalogue["traffic"], catalogue["truth"]
    examples = labelled_examples(index, traffic, truth, VOTE, None)
    inside = [e for e in examples if not e.open_set]
    plain = fit_calibration(inside, "inside", Bound(0.9, 0.5, 0.0))
    guarded = fit_calibration(examples, "open set", Bound(0.9, 0.5, 0.2))
    assert plain.temperature == guarded.temperature
    if plain.auto_accept_at is not None:
        assert guarded.auto_accept_at is None or guarded.auto_accept_at >= plain.auto_accept_at


def test_a_category_that_is_one_shoot_gives_no_example(catalogue: dict) -> None:
    """Four shots of one product are all a category has: nothing may judge them honestly."""
    refs, labels, ids = catalogue["refs"], list(catalogue["labels"]), list(catalogue["ids"])
    burst = unit(refs[:1] + np.random.default_rng(1).normal(0, 0.01, (4, DIM)))
    vectors = np.vstack([refs, burst])
    labels += ["single"] * 4
    ids += [f"{len(ids) + i:016x}" for i in range(4)]
    index = VectorIndex.build(DIM, ids, labels, vectors)
    examples, _ = reference_examples(
        index, ids, vectors, labels, shoots(index, ids, vectors, labels), VOTE
    )
    assert not [e for e in examples if e.truth == "single"]
    assert len([e for e in examples if not e.open_set]) > 0.9 * len(refs)


def test_a_stored_group_never_judges_its_own() -> None:
    """A sender's photo sits in two categories: ungrouped, the copy in the wrong category is
    its nearest neighbour; with the group, it is left out and the category's other photo
    judges."""
    rng = np.random.default_rng(2)
    base = unit(rng.normal(0, 1, (3, DIM)))
    vectors = np.vstack([base[0], base[0], unit(base[:1] + 0.3 * base[1:2]), base[2], base[2]])
    labels = ["left", "right", "left", "right", "right"]
    ids = [f"{i:016x}" for i in range(5)]
    index = VectorIndex.build(DIM, ids, labels, vectors)
    alone = {r: i for i, r in enumerate(ids)}
    plain, _ = reference_examples(index, ids[:1], vectors[:1], labels[:1], alone, VOTE)
    grouped, _ = reference_examples(
        index, ids[:1], vectors[:1], labels[:1], alone, VOTE, {ids[0]: "g", ids[1]: "g"}
    )
    assert plain[0].shares[0].category == "right" and not plain[0].correct
    assert grouped[0].shares[0].category == "left" and grouped[0].correct
