"""Categories form a tree; a prediction is also scored at every level of it.

A parent's probability is the sum of its descendants' (and its own, when it has references
itself), so when two sibling leaves split the vote the parent can still be clear: the answer
then says "confident parent, uncertain leaf" instead of guessing a leaf.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from indexer.vote import CategoryScore


def path_of(category: str, parents: Mapping[str, str | None]) -> list[str]:
    """Ancestors then the category itself (a cycle in stored data stops the walk)."""
    path = [category]
    parent = parents.get(category)
    while parent and parent not in path:
        path.append(parent)
        parent = parents.get(parent)
    return path[::-1]


@dataclass(frozen=True)
class LevelScore:
    depth: int  # 1: a top-level category
    category: str
    score: float


def level_scores(
    scores: Sequence[CategoryScore], parents: Mapping[str, str | None]
) -> list[LevelScore]:
    """The most probable node at each level, top-down: at depth 1 the best top-level node,
    then the best child of it, and so on, each with its summed probability."""
    mass: dict[str, float] = defaultdict(float)
    children: dict[str | None, set[str]] = defaultdict(set)
    for s in scores:
        path = path_of(s.category, parents)
        for depth, name in enumerate(path):
            mass[name] += s.score
            children[path[depth - 1] if depth else None].add(name)
    levels: list[LevelScore] = []
    node: str | None = None
    while children.get(node):
        best = min(children[node], key=lambda n: (-mass[n], n))
        levels.append(LevelScore(len(levels) + 1, best, mass[best]))
        node = best
    return levels


def categories_under(nodes: Collection[str], parents: Mapping[str, str | None]) -> set[str]:
    """The categories at or below any of `nodes`: what a caller's restriction to taxonomy
    nodes (a department, or an allow-list of leaves) lets an answer name."""
    chosen = set(nodes)
    return {c for c in parents if chosen.intersection(path_of(c, parents))}
