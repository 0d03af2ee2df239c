"""Reindex in process: a real Valkey, the packaged model and a second version of it.

The job, its validation and refusal, rollback, and the writes made while a reindex runs
(stored for both versions). Real processes, crashes and concurrent calls over gRPC are in
tests/integration/test_reindex.py.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedder import load_artifact
from embedder.registry import ModelRegistry
from embedder.text import load_text_tower
from indexer.calibration import Calibration
from indexer.index import IndexConfig
from indexer.store import Store
from server.catalog import Catalog, Prediction, ReferenceInput
from server.reindex import ReindexConfig, Reindexer, ReindexJob, ReindexState
from tests.helpers import KINDS, make_image, projected_artifact


@pytest.fixture(scope="module")
def second_model(model_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return projected_artifact(model_artifact, tmp_path_factory.mktemp("v2") / "projected")


@pytest.fixture(scope="module")
def collapsed_model(model_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return projected_artifact(
        model_artifact, tmp_path_factory.mktemp("v3") / "collapsed", 8, collapse=True
    )


def open_model(path: Path):  # type: ignore[no-untyped-def]
    embedder = load_artifact(path)
    return embedder, load_text_tower(embedder)


@pytest.fixture
def catalog(store: Store, model_artifact: Path) -> Iterator[Catalog]:
    embedder, text = open_model(model_artifact)
    catalog = Catalog(store, embedder, text=text)
    store.seed_model(embedder.version)
    for kind in KINDS:
        refs = [
            ReferenceInput(make_image(kind, seed), {"group": str(seed % 3)}) for seed in range(12)
        ]
        catalog.add_category(kind, references=refs)
    yield catalog
    catalog.close()


@pytest.fixture
def reindexer(catalog: Catalog, model_artifact: Path, tmp_path: Path) -> Iterator[Reindexer]:
    registry = ModelRegistry(tmp_path / "models" / "registry")
    registry.register(model_artifact)
    reindexer = Reindexer(
        catalog, registry, tmp_path / "models", open_model, ReindexConfig(batch_size=5)
    )
    yield reindexer
    reindexer.close()


def wait(reindexer: Reindexer, timeout: float = 120.0) -> ReindexJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = reindexer.status()
        assert job is not None
        if not job.unfinished:
            return job
        time.sleep(0.05)
    raise TimeoutError("the reindex did not end")


def predict(catalog: Catalog, kind: str, seed: int) -> Prediction:
    [result] = catalog.classify([make_image(kind, seed)])
    assert isinstance(result, Prediction)
    return result


def test_reindex_switches_to_the_new_version_and_rollback_returns(
    catalog: Catalog, reindexer: Reindexer, store: Store, second_model: Path
) -> None:
    old = catalog.serving.version
    started = reindexer.start(str(second_model), metrics={"top1": 0.9})
    job = wait(reindexer)
    assert job.state == ReindexState.DONE, job.message
    new = started.target
    assert new != old and catalog.serving.version == new
    assert (job.done, job.total) == (36, 36)
    assert job.accuracy_before is not None and job.accuracy_after is not None
    # the references with another shoot of their category to be judged by
    assert 0 < job.validation_examples <= 36
    assert f"{job.accuracy_after:.1%}" in job.message
    recorded = store.get_model()
    assert recorded is not None and (recorded.active, recorded.previous) == (new, old)
    # Every reference has a vector of both versions; the new index answers.
    ids = list(store.all_references())
    assert len(store.get_vectors(old, ids)) == len(store.get_vectors(new, ids)) == 36
    assert len(catalog.index) == 36 and catalog.embedder.dim == 256
    answer = predict(catalog, "dots", 3)
    assert answer.model_version == new
    assert answer.categories[0].category == "dots"
    # The registry keeps the operator's metrics and the validation.
    entry = reindexer.registry.get(new)
    assert entry.metrics["eval"] == {"top1": 0.9}
    assert entry.metrics["validation"]["accuracy"] == pytest.approx(job.accuracy_after)
    # The versions were compared on the answer they serve, on honest examples (here
    # leave-one-shoot-out, apart from each reference's group), and the new version keeps the
    # calibration fitted on its examples.
    validation = entry.metrics["validation"]
    assert "leave-one-shoot-out" in validation["method"]
    assert "the answer as served" in validation["method"]
    calibration = Calibration.from_json(store.get_calibration(new) or {})
    assert calibration.head is not None
    assert validation["accuracy"] == pytest.approx(calibration.extra["accuracy"])

    back = reindexer.rollback()
    assert back.target == old and back.rollback
    job = wait(reindexer)
    assert job.state == ReindexState.DONE, job.message
    assert catalog.serving.version == old
    assert job.resumed_from == 36  # nothing re-embedded: the old vectors were kept
    recorded = store.get_model()
    assert recorded is not None and (recorded.active, recorded.previous) == (old, new)
    assert predict(catalog, "stripes", 3).model_version == old


def test_status_says_done_only_once_the_switch_has_happened(
    catalog: Catalog, reindexer: Reindexer, second_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow switch (calls in flight finishing) leaves a window in which the job is
    finished but the old version still answers: status must not say done in it."""
    real_switch = catalog.switch

    def slow_switch(*args: object, **kwargs: object) -> None:
        time.sleep(0.5)
        real_switch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(catalog, "switch", slow_switch)
    target = reindexer.start(str(second_model)).target
    seen = []
    while True:
        job = reindexer.status()
        assert job is not None
        seen.append((job.state, catalog.serving.version))  # the state first, then the version
        if not job.unfinished:
            break
        time.sleep(0.01)
    assert seen[-1] == (ReindexState.DONE, target)
    assert all(version == target for state, version in seen if state == ReindexState.DONE)


def test_a_reindex_that_loses_accuracy_is_refused(
    catalog: Catalog, reindexer: Reindexer, store: Store, collapsed_model: Path
) -> None:
    old = catalog.serving.version
    job = reindexer.start(str(collapsed_model))
    job = wait(reindexer)
    assert job.state == ReindexState.REFUSED, job.message
    assert job.accuracy_before is not None and job.accuracy_after is not None
    assert job.accuracy_after < job.accuracy_before - 0.02
    assert f"{job.accuracy_before:.1%}" in job.message
    assert f"{job.accuracy_after:.1%}" in job.message
    assert catalog.serving.version == old and catalog.pending is None
    recorded = store.get_model()
    assert recorded is not None and recorded.active == old
    assert predict(catalog, "dots", 2).model_version == old
    # The store keeps the outcome for every server, and GetReindexStatus after a restart.
    stored = store.get_reindex()
    assert stored is not None and stored["state"] == "refused"


def test_a_catalogue_moves_to_the_default_backbone_by_its_name(
    catalog: Catalog, reindexer: Reindexer, store: Store
) -> None:
    """A catalogue started on Lite0 (before Lite1 became the default) moves by name: the
    packaged model is built, every reference re-embedded, validated and switched."""
    from embedder.config import DEFAULT_MODEL

    assert catalog.serving.version.startswith("efficientnet_lite0-")
    reindexer.start(DEFAULT_MODEL)
    job = wait(reindexer, timeout=300)
    assert job.state == ReindexState.DONE, job.message
    assert catalog.serving.version.startswith(f"{DEFAULT_MODEL}-") and len(catalog.index) == 36
    assert predict(catalog, "stripes", 5).categories[0].category == "stripes"


def test_a_model_whose_weights_cannot_be_downloaded_is_refused_with_the_way_out(
    reindexer: Reindexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered hub model on an offline machine: the download fails inside building its
    artifact; the caller gets INVALID_ARGUMENT saying so, not an internal error."""
    from embedder import WeightsError
    from indexer.errors import InvalidArgument

    def offline(model: str, models_dir: Path) -> Path:
        raise WeightsError(
            "could not download timm weights for convnext_tiny (tag 'default'): no network; "
            "this machine may be offline: pass a local checkpoint with weights 'file:PATH'"
        )

    monkeypatch.setattr("server.reindex.resolve_model", offline)
    with pytest.raises(InvalidArgument, match="cannot use model 'convnext_tiny'.*'file:PATH'"):
        reindexer.start("convnext_tiny")


def test_a_second_reindex_while_one_runs_and_bad_models_are_refused(
    catalog: Catalog, reindexer: Reindexer, second_model: Path, tmp_path: Path
) -> None:
    from indexer.errors import FailedPrecondition, InvalidArgument

    with pytest.raises(InvalidArgument, match="neither a model artifact"):
        reindexer.start(str(tmp_path / "nothing-here"))
    tampered = tmp_path / "tampered"
    shutil.copytree(second_model, tampered)
    weights = json.loads((tampered / "config.json").read_text())["weights_file"]
    with open(tampered / weights, "ab") as changed:
        changed.write(b"x")
    with pytest.raises(InvalidArgument, match="cannot use model .*is corrupt or was modified"):
        reindexer.start(str(tampered))
    with pytest.raises(FailedPrecondition, match="already the one served"):
        reindexer.start(catalog.serving.version)
    with pytest.raises(FailedPrecondition, match="no previous model version"):
        reindexer.rollback()
    reindexer.start(str(second_model))
    with pytest.raises(FailedPrecondition, match="is running|is validating"):
        reindexer.start(str(second_model))
    assert wait(reindexer).state == ReindexState.DONE


def test_writes_during_a_reindex_are_stored_for_both_versions(
    catalog: Catalog, store: Store, second_model: Path
) -> None:
    pending = catalog.new_serving(*open_model(second_model))
    catalog.begin_reindex(pending)
    try:
        added = catalog.add_references("dots", [ReferenceInput(make_image("dots", 100))])
        created = catalog.add_category("hats", references=[ReferenceInput(make_image("dots", 101))])
    finally:
        catalog.end_reindex()
        pending.close()
    ids = [added.references[0].reference_id, created.references[0].reference_id]
    old, new = catalog.serving.version, pending.version
    assert set(store.get_vectors(old, ids)) == set(ids)
    vectors = store.get_vectors(new, ids)
    assert set(vectors) == set(ids)
    assert all(v.shape == (256,) for v in vectors.values())


def test_switch_brings_the_new_index_level_with_the_store(
    catalog: Catalog, store: Store, second_model: Path
) -> None:
    """References added or removed after the new index was filled are there, or gone."""
    pending = catalog.new_serving(*open_model(second_model))
    catalog.begin_reindex(pending)
    catalog.fill(pending)
    added = catalog.add_references("dots", [ReferenceInput(make_image("dots", 200))])
    removed = catalog.references("stripes")[0].id
    catalog.remove_references([removed])
    catalog.switch(pending, commit=lambda: None)
    held = catalog.index.reference_ids()
    assert added.references[0].reference_id in held
    assert removed not in held
    assert held == set(store.all_references())
    [hits] = catalog.index.search(
        np.stack(
            list(store.get_vectors(pending.version, [added.references[0].reference_id]).values())
        ),
        1,
    )
    assert hits[0].reference_id == added.references[0].reference_id


def test_a_reference_removed_while_the_new_index_fills_is_skipped(
    catalog: Catalog, store: Store, second_model: Path
) -> None:
    """A merchandiser may delete while a reindex runs: the fill skips what is gone."""
    pending = catalog.new_serving(*open_model(second_model))
    victim = catalog.references("dots")[0].id

    def remove_victim_once(done: int, total: int) -> None:
        if victim in store.all_references():
            catalog.remove_references([victim])

    catalog.begin_reindex(pending)
    try:
        loaded, embedded = catalog.fill(pending, remove_victim_once, batch_size=5)
        held = pending.index.reference_ids()
    finally:
        catalog.end_reindex()
        pending.close()
    assert (loaded, embedded) == (0, len(store.all_references()))
    assert victim not in held
    assert held == set(store.all_references())
    assert store.get_vectors(pending.version, [victim]) == {}


def test_a_reindexed_catalogue_gets_the_index_kind_its_size_calls_for(
    catalog: Catalog, store: Store, second_model: Path
) -> None:
    """A reindex fills its index from no stored vectors; at the end it is rebuilt as the
    kind its size calls for (IVF past the threshold), not left flat."""
    for kind in ("stripes", "dots"):
        catalog.add_references(kind, [ReferenceInput(make_image(kind, 300 + s)) for s in range(8)])
    catalog.index_config = IndexConfig(ivf_threshold=20)
    pending = catalog.new_serving(*open_model(second_model))
    try:
        assert pending.index.kind == "flat"
        loaded, embedded = catalog.fill(pending)
        assert (loaded, embedded) == (0, len(store.all_references()))
        assert pending.index.kind == "ivf"
        assert pending.index.reference_ids() == set(store.all_references())
    finally:
        pending.close()


def test_a_reindex_is_judged_on_the_labelled_traffic_embedded_for_the_new_version(
    catalog: Catalog, reindexer: Reindexer, store: Store, second_model: Path
) -> None:
    photos = [(make_image(kind, 400 + seed), kind) for kind in KINDS for seed in range(34)]
    assert catalog.add_labelled(photos, "test labels") == 102
    started = reindexer.start(str(second_model))
    job = wait(reindexer)
    assert job.state == ReindexState.DONE, job.message
    stored = store.labelled(started.target)
    assert len(stored) == 102 and all(x.vector is not None for x in stored)
    assert stored[0].vector is not None and stored[0].vector.shape == (256,)
    assert "102 labelled photos (test labels)" in job.message
    assert job.validation_examples == 102
    calibration = Calibration.from_json(store.get_calibration(started.target) or {})
    assert calibration.source.startswith("102 labelled photos")
