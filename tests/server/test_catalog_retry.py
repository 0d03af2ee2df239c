"""A write that committed while its reply was lost is indexed when the client retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedder import create_artifact, load_artifact
from indexer.errors import AlreadyExists, InvalidArgument, NotFound
from indexer.store import Store
from server.catalog import Catalog, ReferenceInput
from tests.helpers import make_image, tiny_model_config

TINY = tiny_model_config("test-tiny-timm")


def test_a_retried_write_that_had_committed_is_indexed(store: Store, tmp_path: Path) -> None:
    embedder = load_artifact(create_artifact(TINY, tmp_path / "model"), runtime="torch")
    catalog = Catalog(store, embedder)
    try:
        catalog.add_category("dots")
        image = ReferenceInput(make_image("dots", 1))
        # The first attempt: the transaction commits, then the connection drops before the
        # reply, so the catalogue never indexes it (what the store alone does here).
        prepared = catalog.prepare("dots", [image], None)
        store.add_references("dots", prepared, embedder.version)
        assert len(catalog.index) == 0
        retried = catalog.add_references("dots", [image])  # the client's retry
        assert [r.duplicate for r in retried.references] == [True]
        assert len(catalog.index) == 1
        [hits] = catalog.index.search(prepared[0].vector[None, :], 1)
        assert hits[0].reference_id == prepared[0].id
    finally:
        catalog.close()


@pytest.fixture
def catalog(store: Store, tmp_path: Path) -> Iterator[Catalog]:
    embedder = load_artifact(create_artifact(TINY, tmp_path / "model"), runtime="torch")
    catalog = Catalog(store, embedder)
    yield catalog
    catalog.close()


def test_a_retried_create_that_had_committed_is_indexed(catalog: Catalog, store: Store) -> None:
    images = [ReferenceInput(make_image("dots", seed)) for seed in range(3)]
    catalog.add_category("Patterns")
    prepared = catalog.prepare("dots", images, None)
    # The first attempt committed; its reply was lost (the store alone does it here).
    store.create_category("dots", "Patterns", {}, prepared, catalog.serving.version)
    with pytest.raises(AlreadyExists):
        catalog.add_category("dots", parent="Patterns", references=images)  # the retry
    assert catalog.index.reference_ids() == {r.id for r in prepared}
    assert catalog.path("dots") == ["Patterns", "dots"]


def test_a_retried_removal_that_had_committed_leaves_the_index(
    catalog: Catalog, store: Store
) -> None:
    added = catalog.add_category("dots", references=[ReferenceInput(make_image("dots", 1))])
    gone = added.references[0].reference_id
    store.remove_references([gone])  # committed, reply lost
    with pytest.raises(NotFound):
        catalog.remove_references([gone])
    assert gone not in catalog.index.reference_ids()


def test_a_retried_delete_that_had_committed_leaves_the_index(
    catalog: Catalog, store: Store
) -> None:
    catalog.add_category("dots", references=[ReferenceInput(make_image("dots", 1))])
    catalog.add_category("stripes", references=[ReferenceInput(make_image("stripes", 1))])
    store.delete_category("dots")  # committed, reply lost
    with pytest.raises(NotFound):
        catalog.delete_category("dots")
    assert catalog.index.categories() == {"stripes"}


def test_removing_malformed_ids_is_invalid_argument_not_a_crash(catalog: Catalog) -> None:
    added = catalog.add_category("dots", references=[ReferenceInput(make_image("dots", 1))])
    good = added.references[0].reference_id
    for ids in ([""], ["not-hex"], ["0" * 17], ["a" + "0" * 15], [good, "0" * 15]):
        with pytest.raises(InvalidArgument, match="a reference id is 16 lowercase hexadecimal"):
            catalog.remove_references(ids)
    assert len(catalog.index) == 1  # nothing removed, the good id neither


COMPOSED, DECOMPOSED = "Caf\u00e9", "Cafe\u0301"


def test_names_are_one_whatever_unicode_form_they_arrive_in(catalog: Catalog) -> None:
    image = ReferenceInput(make_image("dots", 5))
    made = catalog.add_category(DECOMPOSED, references=[image])
    assert made.category.name == COMPOSED and made.warnings == ()
    with pytest.raises(AlreadyExists):
        catalog.add_category(COMPOSED)
    added = catalog.add_references(DECOMPOSED, [ReferenceInput(make_image("dots", 6))])
    assert added.category.name == COMPOSED and added.category.reference_count == 2
    assert catalog.get_category(DECOMPOSED).name == COMPOSED
    assert len(catalog.references(DECOMPOSED)) == 2
    assert catalog.has_category(DECOMPOSED)
    child = catalog.add_category("Espresso", parent=DECOMPOSED)
    assert child.category.parent == COMPOSED
    assert catalog.path("Espresso") == [COMPOSED, "Espresso"]
    renamed = catalog.update_category(DECOMPOSED, new_name="Cre\u0300me")
    assert renamed.name == "Cr\u00e8me" and catalog.index.categories() == {"Cr\u00e8me"}
    catalog.delete_category("Espresso")
    assert catalog.delete_category("Cre\u0300me") == 2
    assert catalog.list_categories() == []


def test_a_name_stored_before_names_were_normalised_is_still_reachable(
    catalog: Catalog, store: Store
) -> None:
    store.create_category(DECOMPOSED, None, {}, [], catalog.embedder.version)
    assert catalog.get_category(DECOMPOSED).name == DECOMPOSED
    catalog.add_references(DECOMPOSED, [ReferenceInput(make_image("dots", 7))])
    assert catalog.delete_category(DECOMPOSED) == 1


def test_a_name_that_differs_only_in_case_is_allowed_with_a_warning(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    catalog.add_category("Shoes")
    twin = catalog.add_category("SHOES")
    assert twin.category.name == "SHOES"
    [warning] = twin.warnings
    assert "'SHOES' differs only in case from 'Shoes'" in warning
    assert warning in caplog.text
    caplog.clear()
    catalog.update_category("SHOES", new_name="shoes")  # a rename into a twin: logged too
    assert "'shoes' differs only in case from 'Shoes'" in caplog.text
    assert catalog.add_category("Boots").warnings == ()
