"""A write that committed while its reply was lost is indexed when the client retries."""

from __future__ import annotations

from pathlib import Path

from embedder import ModelConfig, PreprocessConfig, create_artifact, load_artifact
from indexer.store import Store
from server.catalog import Catalog, ReferenceInput
from tests.helpers import make_image

TINY = ModelConfig(
    name="test-tiny-timm",
    family="timm",
    architecture="test_efficientnet",
    embedding_dim=256,
    preprocess=PreprocessConfig(input_size=64),
    weights="random",
)


def test_a_retried_write_that_had_committed_is_indexed(store: Store, tmp_path: Path) -> None:
    embedder = load_artifact(create_artifact(TINY, tmp_path / "model"), runtime="torch")
    catalog = Catalog(store, embedder)
    try:
        catalog.add_category("dots")
        image = ReferenceInput(make_image("dots", 1))
        # The first attempt: the transaction commits, then the connection drops before the
        # reply, so the catalogue never indexes it (what the store alone does here).
        prepared = catalog._prepare("dots", [image], None)
        store.add_references("dots", prepared, embedder.version)
        assert len(catalog.index) == 0
        retried = catalog.add_references("dots", [image])  # the client's retry
        assert [r.duplicate for r in retried.references] == [True]
        assert len(catalog.index) == 1
        [hits] = catalog.index.search(prepared[0].vector[None, :], 1)
        assert hits[0].reference_id == prepared[0].id
    finally:
        catalog.close()
