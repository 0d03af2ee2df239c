"""UpdateCategory in the store: rename, move, prompts and metadata, in one transaction."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.errors import AlreadyExists, FailedPrecondition, NotFound
from indexer.store import LabelledPhoto, Store
from tests.indexer.test_store import new_ref


def test_a_rename_keeps_references_vectors_children_and_labels(store: Store) -> None:
    shoe = new_ref("Shoes", b"a shoe")
    store.create_category("Footwear", None, {}, [], "v1")
    store.create_category("Shoes", "Footwear", {"team": "a"}, [shoe], "v1", ["a shoe"])
    store.create_category("Sneakers", "Shoes", {}, [], "v1")
    store.add_labelled(
        [LabelledPhoto("lab1", "Shoes", "review", "sha", b"photo")], "v1", [np.ones(4)]
    )
    renamed = store.update_category("Shoes", new_name="Boots")
    assert (renamed.name, renamed.parent, renamed.reference_count) == ("Boots", "Footwear", 1)
    assert renamed.prompts == ["a shoe"] and renamed.metadata == {"team": "a"}
    assert store.get_category("Shoes") is None
    assert store.reference_ids("Boots") == [shoe.id]  # the same id
    [ref] = store.get_references([shoe.id])
    assert ref is not None and ref.category == "Boots"
    assert set(store.get_vectors("v1", [shoe.id])) == {shoe.id}
    sneakers = store.get_category("Sneakers")
    assert sneakers is not None and sneakers.parent == "Boots"
    assert [x.label for x in store.labelled("v1")] == ["Boots"]
    assert "Boots" in store.category_names() and "Shoes" not in store.category_names()
    # The same image again is a duplicate by its id under the former name.
    assert store.add_references("Boots", [new_ref("Boots", b"a shoe")], "v1") == [True]
    assert store.changes()[-1]["op"] == "update_category"  # the duplicate wrote nothing


def test_move_prompts_and_metadata(store: Store) -> None:
    store.create_category("A", None, {}, [], "v1")
    store.create_category("B", None, {}, [], "v1")
    store.create_category("C", "A", {"x": "1"}, [], "v1")
    moved = store.update_category("C", parent="B", prompts=["a c"], metadata={"y": "2"})
    assert (moved.parent, moved.prompts, moved.metadata) == ("B", ["a c"], {"y": "2"})
    top = store.update_category("C", parent="")
    assert top.parent is None
    stored = store.get_category("C")
    assert stored is not None and stored.parent is None and stored.prompts == ["a c"]


def test_refusals_change_nothing(store: Store) -> None:
    store.create_category("A", None, {}, [], "v1")
    store.create_category("B", "A", {}, [], "v1")
    with pytest.raises(NotFound, match="does not exist"):
        store.update_category("Nope", new_name="X")
    with pytest.raises(AlreadyExists, match="'A' already exists"):
        store.update_category("B", new_name="A")
    with pytest.raises(FailedPrecondition, match="descendants"):
        store.update_category("A", parent="B")
    with pytest.raises(NotFound, match="parent category 'Z'"):
        store.update_category("B", parent="Z")
    b = store.get_category("B")
    assert b is not None and b.parent == "A"
