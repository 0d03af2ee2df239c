"""Labelled examples the catalogue has not seen: what every estimate nearcat makes about
itself is computed on (calibration, the auto-accept threshold, the reindex check, eval).

A catalogue's references come in bursts — several shots of one product, one sender's
photos — and its traffic never does. Letting a burst's shots judge each other inflates
everything (clothing, 4-shot bursts: leave-one-out top-1 99.8%, the queries' 71.0%). Two
sources of honest examples, best first:

- **Labelled traffic** (`labelled_examples`): photos a person labelled that are not
  references. Each is asked of the whole catalogue, as traffic is.
- **Cold start** (`reference_examples`): each sampled reference asked of the others, never of
  its own *shoot*, nor of its own stored group (e.g. a sender, `nearcat import
  --group-column`) when there is one. Shoots are found without labels or metadata: join
  two references of a category when each is among the other's four nearest of that
  category, and take the connected pieces (`shoots`). A
  burst's shots are each other's nearest neighbours, so a burst ends up in one shoot;
  distinct products are joined only in small chains, so little honest evidence is lost. No
  similarity threshold is involved: a fixed cut was fragile across catalogues (grocery:
  leave-one-out 62.7% at 0.85, 90.3% at 0.90, queries 65.2%). On the clothing trees with
  4-shot bursts (the vote alone, seeds 0-3) its leave-one-out top-1 was 67.8-69.5%, against
  66.0-71.5% on each tree's labelled photos and 99.8% with nothing held out (`SHOOT_LINKS`
  has the measurements). Where it fails: a burst of many shots that falls into tight
  sub-bursts, each closer to itself than to the rest, lets the sub-bursts judge each other;
  a catalogue of all-distinct products is judged a little too harshly (small chains of
  look-alikes are held out together); and a category whose references are all one shoot
  has no honest example.

Both also ask each example again with its own category left out (`open_set`): a look-alike
of a category the catalogue lacks, always wrong, which the auto-accept threshold must keep
out (indexer.calibration).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from indexer.answer import HeadInput, evidence
from indexer.attributes import AttributeExample, Attributes, attribute_shares
from indexer.calibration import LabelledExample
from indexer.head import ConfidenceHead, cross_fitted_head, fit_head, fittable
from indexer.index import Hit, VectorIndex
from indexer.vote import CategoryScore, VoteConfig

# Two references of a category are joined when each is among the other's SHOOT_LINKS nearest
# references of that category. Clothing trees with 4-shot bursts, the vote alone, leave-one-
# out top-1 of 3,000 sampled references against the top-1 of each tree's labelled part (the
# validation photos; test queries not used), seeds 0-3:
#   labelled photos              66.0%  71.5%  69.8%  71.5%
#   nothing held out             99.8% (seed 0)
#   one-sided, each to its 1st   79.1% (seed 0; 82% of bursts whole)
#   mutual among the 3 nearest   74.3%  74.2%  74.1%  76.0%   largest shoot 12-20
#   mutual among the 4 nearest   67.8%  68.1%  68.0%  69.5%   largest shoot 40-78
#   mutual among the 5 nearest   63.5%  63.4%  63.7%  66.1%   largest shoot 156-232
# Four is the closest to the labelled photos (within 1.8-3.4 points, on the cautious side):
# besides a product's bursts it takes in the look-alike shots one sender makes of a category
# (same background, same light), which three leaves to judge each other. Mutual links chain
# fewer distinct products together than one-sided ones, which a small category needs.
SHOOT_LINKS = 4
# Neighbours looked at to find them.
SHOOT_NEIGHBOURS = 12
# The deepest search for an example's neighbours outside its shoot or category: the search
# returns this many hits per example (memory: examples x MAX_DEPTH hits).
MAX_DEPTH = 4096
# References sampled for the cold-start fit and the head. The head gains from more
# (clothing, before the blend: 52.8% auto-accepted with a head on 2,000 references, 56.8% on
# 3,426). Calibrating 5,000 clothing references takes about a minute on 2 cores.
CALIBRATION_EXAMPLES = 5000


def calibration_sample(
    ids: Sequence[str], categories: Sequence[str], size: int = CALIBRATION_EXAMPLES
) -> list[int]:
    """The rows of the references a calibration samples, drawn the same way wherever it is
    drawn (the server, eval, training, both versions of a reindex): sorted by category and
    id, then `size` of them by a generator seeded 0."""
    order = sorted(range(len(ids)), key=lambda i: (categories[i], ids[i]))
    return sorted(random.Random(0).sample(order, min(size, len(order))))


def served_head(
    vectors: np.ndarray, categories: Sequence[str], rows: Sequence[int]
) -> ConfidenceHead | None:
    """The head a server fits on these sampled references (those of categories with enough
    of them); None with fewer than two such categories."""
    kept = [rows[i] for i in fittable([categories[j] for j in rows])]
    if len({categories[i] for i in kept}) < 2:
        return None
    return fit_head(np.asarray(vectors)[kept], [categories[i] for i in kept])


def held_out_examples(
    index: VectorIndex,
    ids: Sequence[str],
    vectors: np.ndarray,
    categories: Sequence[str],
    vote: VoteConfig,
    labelled: tuple[np.ndarray, Sequence[str]] | None = None,
    group_of: Mapping[str, str] | None = None,
    size: int = CALIBRATION_EXAMPLES,
) -> tuple[list[LabelledExample], ConfidenceHead | None]:
    """What a calibration of the catalogue in `index` (its references: `ids`, `vectors`,
    `categories`) fits on, and the head to serve with it: the `labelled` photos (vectors,
    truths) when given, asked of the whole catalogue with the head fitted on the sampled
    references; else leave-one-shoot-out over those sampled references. The server, eval
    and the reindex check all take their examples from here."""
    sample = calibration_sample(ids, categories, size)
    if labelled is not None:
        head = served_head(vectors, categories, sample)
        return labelled_examples(index, labelled[0], labelled[1], vote, head), head
    return reference_examples(
        index,
        [ids[i] for i in sample],
        np.asarray(vectors)[sample],
        [categories[i] for i in sample],
        shoots(index, ids, vectors, categories),
        vote,
        group_of,
    )


def shoots(
    index: VectorIndex, ids: Sequence[str], vectors: np.ndarray, categories: Sequence[str]
) -> dict[str, int]:
    """Reference id -> its shoot: the connected pieces of the graph joining two references of
    a category when each is among the other's `SHOOT_LINKS` nearest of that category."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    row = {rid: i for i, rid in enumerate(ids)}
    found = index.search(np.asarray(vectors), SHOOT_NEIGHBOURS) if len(ids) else []
    near = [
        {
            row[h.reference_id]
            for h in [
                h
                for h in hits  # nearest first
                if h.reference_id != ids[i]
                and h.category == categories[i]
                and h.reference_id in row
            ][:SHOOT_LINKS]
        }
        for i, hits in enumerate(found)
    ]
    edges = [(i, j) for i in range(len(near)) for j in near[i] if i in near[j]]
    if not edges:
        return {rid: i for i, rid in enumerate(ids)}
    a, b = zip(*edges, strict=True)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(ids), len(ids)))
    labels = connected_components(graph, directed=False)[1]
    return {rid: int(labels[i]) for i, rid in enumerate(ids)}


def reference_examples(
    index: VectorIndex,
    ids: Sequence[str],
    vectors: np.ndarray,
    categories: Sequence[str],
    shoot_of: Mapping[str, int],
    vote: VoteConfig,
    group_of: Mapping[str, str] | None = None,
) -> tuple[list[LabelledExample], ConfidenceHead | None]:
    """Cold start: each of these references (a sample of the index's) asked of the others
    outside its shoot and its stored group (`group_of`, e.g. its sender), its head row from
    a head fitted without its shoot (5 folds), with its open-set copy; and the head fitted on
    all of them, which is served. A reference whose category has no other reference outside
    its shoot and group is left out: nothing could judge it honestly."""
    vectors = np.asarray(vectors)
    groups = group_of or {}
    own = [shoot_of.get(rid, -1 - i) for i, rid in enumerate(ids)]
    mine = [groups.get(rid) for rid in ids]
    shoot_size, group_size = Counter(shoot_of.values()), Counter(groups.values())
    depths = [
        vote.k + max(shoot_size[o] + (group_size[g] if g else 0), index.count(c))
        for o, g, c in zip(own, mine, categories, strict=True)
    ]
    found = _deep(index, vectors, depths)
    fit = cross_fitted_head(
        vectors,
        list(categories),
        [f"{g}" if g else f"shoot-{s}" for s, g in zip(own, mine, strict=True)],
    )
    present = index.categories()
    members = index.members()
    left: dict[tuple[str, int, str | None], bool] = {}
    examples: list[LabelledExample] = []
    for i, hits in enumerate(found):
        key = (categories[i], own[i], mine[i])
        if key not in left:  # any reference of its category it may be judged by?
            left[key] = any(
                shoot_of.get(r) != own[i] and (mine[i] is None or groups.get(r) != mine[i])
                for r in members.get(categories[i], ())
            )
        seen = _judges(hits, own[i], mine[i], shoot_of, groups)[: vote.k]
        if not seen or not left[key]:  # a category that is one shoot: no honest example
            continue
        head = fit.out_of_fold[i] if fit is not None else None
        examples += _asked(seen, hits, categories[i], vote, head, present)
    return examples, fit.head if fit is not None else None


def attribute_examples(
    index: VectorIndex,
    ids: Sequence[str],
    vectors: np.ndarray,
    categories: Sequence[str],
    attributes_of: Mapping[str, Attributes],
    vote: VoteConfig,
    group_of: Mapping[str, str] | None = None,
    size: int = CALIBRATION_EXAMPLES,
) -> list[AttributeExample]:
    """What attribute temperatures fit on: a sample of the references that carry attributes
    (`ids` etc. are all the index's references), each asked of the others outside its shoot
    and its stored group, for each attribute it carries. Always references: labelled
    traffic carries no attributes."""
    carrying = sorted(i for i, rid in enumerate(ids) if rid in attributes_of)
    if not carrying:
        return []
    picked = sorted(random.Random(0).sample(carrying, min(size, len(carrying))))
    shoot_of = shoots(index, ids, vectors, categories)
    groups = group_of or {}
    shoot_size, group_size = Counter(shoot_of.values()), Counter(groups.values())
    depths = [
        vote.k
        + shoot_size[shoot_of[ids[i]]]
        + (group_size[groups[ids[i]]] if ids[i] in groups else 0)
        for i in picked
    ]
    found = _deep(index, np.asarray(vectors)[picked], depths)
    examples = []
    for i, hits in zip(picked, found, strict=True):
        rid = ids[i]
        seen = _judges(hits, shoot_of[rid], groups.get(rid), shoot_of, groups)[: vote.k]
        shares = attribute_shares(seen, attributes_of, vote)
        for name, truth in attributes_of[rid].items():
            if name in shares:
                examples.append(AttributeExample(name, shares[name][0], truth))
    return examples


def labelled_attribute_examples(
    index: VectorIndex,
    vectors: np.ndarray,
    truths: Sequence[Attributes],
    attributes_of: Mapping[str, Attributes],
    vote: VoteConfig,
) -> list[AttributeExample]:
    """Labelled photos (`vectors`, each with its own attributes, `truths`) asked of the whole
    catalogue, as traffic is: for each attribute a photo carries that its neighbours vote on."""
    examples = []
    for hits, truth in zip(index.search(np.asarray(vectors), vote.k), truths, strict=True):
        shares = attribute_shares(hits, attributes_of, vote)
        for name, value in truth.items():
            if name in shares:
                examples.append(AttributeExample(name, shares[name][0], value))
    return examples


def _judges(
    hits: Sequence[Hit],
    shoot: int,
    group: str | None,
    shoot_of: Mapping[str, int],
    groups: Mapping[str, str],
) -> list[Hit]:
    """The hits that may judge a reference honestly: outside its shoot and its group."""
    return [
        h
        for h in hits
        if shoot_of.get(h.reference_id) != shoot
        and (group is None or groups.get(h.reference_id) != group)
    ]


def labelled_examples(
    index: VectorIndex,
    vectors: np.ndarray,
    truths: Sequence[str],
    vote: VoteConfig,
    head: ConfidenceHead | None,
) -> list[LabelledExample]:
    """Labelled traffic: each image asked of the whole catalogue, as served (the head fitted
    on the references), with its open-set copy. Images of a category the catalogue lacks are
    open-set examples only."""
    vectors = np.asarray(vectors)
    found = _deep(index, vectors, [vote.k + index.count(t) for t in truths])
    rows = head.probabilities(vectors) if head is not None and len(truths) else None
    present = index.categories()
    examples: list[LabelledExample] = []
    for i, hits in enumerate(found):
        if not hits:
            continue
        row = (head, rows[i]) if head is not None and rows is not None else None
        asked = _asked(hits[: vote.k], hits, truths[i], vote, row, present)
        examples += asked if truths[i] in present else asked[1:]
    return examples


def _deep(index: VectorIndex, vectors: np.ndarray, depths: Sequence[int]) -> list[list[Hit]]:
    """Each row's nearest references, at least `depths[i]` of them (so that k remain after
    its shoot or its category is left out) up to `MAX_DEPTH`, searched in batches of similar
    depth. Past that depth an example keeps the fewer neighbours it has (an open-set copy
    of a photo of a huge category may have none, and is then not made)."""
    found: list[list[Hit]] = [[] for _ in depths]
    buckets: dict[int, list[int]] = {}
    for i, depth in enumerate(min(d, MAX_DEPTH) for d in depths):
        buckets.setdefault(1 << max(depth - 1, 1).bit_length(), []).append(i)
    for depth, rows in buckets.items():
        for row, hits in zip(rows, index.search(vectors[rows], depth), strict=True):
            found[row] = hits
    return found


def _asked(
    seen: Sequence[Hit],
    hits: Sequence[Hit],
    truth: str,
    vote: VoteConfig,
    head: tuple[ConfidenceHead, np.ndarray] | None,
    present: Collection[str],
) -> list[LabelledExample]:
    """The example as asked, and its open-set copy (its category left out), if any other
    category is near."""
    out = [LabelledExample(_shares(seen, vote, head, present), truth, seen[0].similarity)]
    others = [h for h in hits if h.category != truth][: vote.k]
    if others:
        without = set(present) - {truth}
        out.append(
            LabelledExample(
                _shares(others, vote, head, without), truth, others[0].similarity, open_set=True
            )
        )
    return out


def _shares(
    hits: Sequence[Hit],
    vote: VoteConfig,
    head: tuple[ConfidenceHead, np.ndarray] | None,
    present: Collection[str],
) -> list[CategoryScore]:
    given = None if head is None else HeadInput(head[0], head[1], head[0].held(present))
    return evidence(hits, vote, given)
