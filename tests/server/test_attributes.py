"""Attributes end to end in process (real Valkey, the packaged model): stored with the
references, answered for new images from the neighbours, calibrated, followed on removal
and on a fresh start; a CSV's attribute columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedder import load_artifact
from embedder.datasets import load_csv
from indexer.errors import InvalidArgument
from indexer.store import Store
from server.catalog import Catalog, Prediction, ReferenceInput
from tests.helpers import make_image

# The categories mix patterns, so the pattern is known only from the neighbours' attribute.
MIX = {"A": ["stripes", "dots"], "B": ["checkers", "dots"]}


@pytest.fixture(scope="module")
def embedder(model_artifact: Path):  # type: ignore[no-untyped-def]
    return load_artifact(model_artifact)


def filled(store: Store, embedder) -> Catalog:  # type: ignore[no-untyped-def]
    catalog = Catalog(store, embedder)
    store.seed_model(embedder.version)
    for category, kinds in MIX.items():
        refs = [
            ReferenceInput(
                make_image(kind, 100 * n + seed),
                {"group": f"{kind}-{seed % 4}"},
                {"pattern": kind, **({"odd": "yes"} if seed % 2 else {})},
            )
            for n, kind in enumerate(kinds)
            for seed in range(16)
        ]
        catalog.add_category(category, references=refs)
    return catalog


@pytest.fixture
def catalog(store: Store, embedder) -> Iterator[Catalog]:  # type: ignore[no-untyped-def]
    catalog = filled(store, embedder)
    yield catalog
    catalog.close()


def pattern(prediction: Prediction) -> str:
    [found] = [a for a in prediction.attributes if a.name == "pattern"]
    assert sum(p for _, p in found.values) == pytest.approx(1.0, abs=1e-5)
    return found.values[0][0]


def test_a_new_image_gets_its_attribute_from_the_neighbours_whatever_their_category(
    catalog: Catalog,
) -> None:
    kinds = ["stripes", "checkers", "dots"]
    images = [make_image(kind, 900 + seed) for kind in kinds for seed in range(4)]
    results = catalog.classify(images)
    answers = [pattern(r) for r in results if isinstance(r, Prediction)]
    truths = [kind for kind in kinds for _ in range(4)]
    assert sum(a == t for a, t in zip(answers, truths, strict=True)) >= 10
    [first] = catalog.classify([images[0]])
    assert isinstance(first, Prediction)
    assert {a.name for a in first.attributes} <= {"pattern", "odd"}


def test_the_calibration_fits_each_attribute_on_other_shoots_and_keeps_it(
    catalog: Catalog, store: Store
) -> None:
    calibration = catalog.calibrate(group_by="group")
    fit = calibration.attributes["pattern"]
    assert fit["examples"] >= 30 and fit["temperature"] > 0
    assert 0.0 <= fit["accuracy"] <= 1.0
    stored = store.get_calibration(catalog.serving.version) or {}
    assert stored["attributes"]["pattern"]["temperature"] == fit["temperature"]


def test_attributes_are_stored_returned_followed_on_removal_and_loaded_at_start(
    catalog: Catalog,
    store: Store,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    [reference, *_] = catalog.references("A")
    assert reference.attributes["pattern"] in {"stripes", "dots"}
    assert store.attributes_of([reference.id]) == {reference.id: reference.attributes}
    catalog.remove_references([reference.id])
    assert store.attributes_of([reference.id]) == {}
    assert reference.id not in catalog._attributes
    catalog.delete_category("B")
    assert all(store.get_references([i])[0] is not None for i in store.all_attributes())
    fresh = Catalog(store, embedder)  # a server starting on this store
    try:
        fresh.load()
        assert fresh._attributes == store.all_attributes() and fresh._attributes
    finally:
        fresh.close()


def test_labelled_photos_with_attributes_are_what_the_attributes_fit_on_once_enough(
    catalog: Catalog,
) -> None:
    kinds = ["stripes", "checkers", "dots"]
    photos = [(make_image(kind, 2000 + n), "A") for n in range(34) for kind in kinds]
    labels = [{"pattern": kind} for _ in range(34) for kind in kinds]
    assert catalog.add_labelled(photos[:99], "test", attributes=labels[:99]) == 99
    fewer = catalog.calibrate().attributes["pattern"]
    assert fewer["source"] == "references asked of other shoots and groups"
    catalog.add_labelled(photos[99:], "test", attributes=labels[99:])
    fit = catalog.calibrate().attributes["pattern"]
    assert fit["source"] == "102 labelled photos" and fit["examples"] == 102
    with pytest.raises(InvalidArgument, match="1 attribute sets for 2 photos"):
        catalog.add_labelled(photos[:2], "test", attributes=labels[:1])


@pytest.mark.parametrize(
    "attributes, said",
    [
        ({"": "x"}, "attribute name ''"),
        ({"kids": "  "}, "attribute value '  '"),
        ({"kids": "a\x00b"}, "printable"),
        ({f"a{i}": "x" for i in range(17)}, "17 attributes; the limit is 16"),
    ],
)
def test_bad_attributes_are_refused_and_nothing_is_written(
    catalog: Catalog, attributes: dict[str, str], said: str
) -> None:
    before = catalog.index.count("A")
    with pytest.raises(InvalidArgument, match=said.replace("(", r"\(")):
        catalog.add_references("A", [ReferenceInput(make_image("dots", 5000), {}, attributes)])
    assert catalog.index.count("A") == before


def test_a_csv_attribute_column_becomes_each_image_s_attribute(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(make_image("dots", 1))
    (tmp_path / "rows.csv").write_text("image,label,kids\na.jpg,Shirt,True\nb.jpg,Shirt,\n")
    images = load_csv(tmp_path / "rows.csv", attribute_columns=["kids"]).images
    assert [dict(i.attributes) for i in images] == [{"kids": "True"}, {}]
    with pytest.raises(ValueError, match="no column 'colour'"):
        load_csv(tmp_path / "rows.csv", attribute_columns=["colour"])
