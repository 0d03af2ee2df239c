"""A serving state's calibration, fitted on examples it has not seen, and kept.

The examples are the stored labelled traffic (photos a person labelled) when there are at
least `MIN_LABELLED`, else each sampled reference asked of the others outside its shoot (and
its group): never references judging their own near-duplicates, whose figures are inflated.
The catalogue calls this for its serving state; a reindex for the state it builds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from indexer.attributes import fit_attributes
from indexer.calibration import Bound, Calibration, LabelledExample, fit_calibration
from indexer.errors import FailedPrecondition
from indexer.head import ConfidenceHead
from indexer.holdout import (
    CALIBRATION_EXAMPLES,
    attribute_examples,
    held_out_examples,
    labelled_attribute_examples,
)
from indexer.store import Store
from indexer.vote import VoteConfig
from server.serving import EMBED_BATCH, Serving

log = logging.getLogger(__name__)

# Labelled traffic from which it, rather than the references, calibrates: below this many
# photos a person labelled, the grouped leave-one-out over thousands of references says more.
MIN_LABELLED = 100


class Calibrating:
    """Fits and keeps calibrations for serving states of one catalogue. `attributes` gives
    the attributes the catalogue's references carry now (id -> name -> value)."""

    def __init__(
        self,
        store: Store,
        vote: VoteConfig,
        bound: Bound,
        attributes: Callable[[], Mapping[str, Mapping[str, str]]],
    ) -> None:
        self.store = store
        self.vote = vote
        self.bound = bound
        self._attributes = attributes

    def fit(
        self, s: Serving, group_by: str | None = None, max_examples: int = CALIBRATION_EXAMPLES
    ) -> Calibration:
        """Fit `s`'s calibration on examples it has not seen and keep it: the stored labelled
        traffic when there is enough, else each sampled reference asked of the others outside
        its shoot and, with `group_by`, outside the references sharing its value of that
        metadata, e.g. its sender (`indexer.holdout`)."""
        examples, head, how = self.honest_examples(s, group_by, max_examples)
        try:
            calibration = fit_calibration(examples, how, self.bound, head)
        except ValueError as exc:
            raise FailedPrecondition(
                f"{exc} ({how}): add photos of more distinct products per category (a "
                "reference is only judged by other shoots of its category), or labelled "
                f"photos with `nearcat calibrate --labelled` ({MIN_LABELLED} or more)"
            ) from exc
        calibration = self.keep(s, calibration, group_by)
        log.info(
            "calibrated: temperature %.3f, unknown below %.3f, auto-accept from %s, ECE %.3f "
            "-> %.3f (%s)",
            calibration.temperature,
            calibration.unknown_below,
            "none" if calibration.auto_accept_at is None else f"{calibration.auto_accept_at:.4f}",
            calibration.ece_before or 0.0,
            calibration.ece_after or 0.0,
            how,
        )
        return calibration

    def keep(self, s: Serving, calibration: Calibration, group_by: str | None) -> Calibration:
        """Store this calibration for `s`'s version and serve it."""
        # Kept so that a refit after the categories change (server.recalibrate) is alike.
        calibration = replace(
            calibration,
            extra={**calibration.extra, "group_by": group_by},
            attributes=self._fit_attributes(s, group_by),
        )
        self.store.put_calibration(s.version, calibration.to_json())
        s.calibration = calibration
        return calibration

    def honest_examples(
        self, s: Serving, group_by: str | None, max_examples: int = CALIBRATION_EXAMPLES
    ) -> tuple[list[LabelledExample], ConfidenceHead | None, str]:
        """Labelled examples `s` has not seen, the head to serve with them, and where they
        came from: the labelled traffic stored for `s`'s version when there are at least
        `MIN_LABELLED`, else leave-one-shoot-out over a sample of the references. The sample
        is drawn the same way for every model version, so two versions are measured alike."""
        ids, categories, vectors = self._stored_vectors(s)
        if len(set(categories)) < 2:
            raise FailedPrecondition(
                "calibration needs references in at least two categories; add more first"
            )
        labelled = [x for x in self.store.labelled(s.version) if x.vector is not None]
        if len(labelled) >= MIN_LABELLED:
            photos = (
                np.stack([x.vector for x in labelled if x.vector is not None]),
                [x.label for x in labelled],
            )
            examples, head = held_out_examples(
                s.index, ids, vectors, categories, self.vote, photos, size=max_examples
            )
            sources = sorted({x.source for x in labelled})
            return examples, head, f"{len(labelled)} labelled photos ({', '.join(sources)})"
        examples, head = held_out_examples(
            s.index,
            ids,
            vectors,
            categories,
            self.vote,
            group_of=self._groups(ids, group_by),
            size=max_examples,
        )
        asked = sum(not e.open_set for e in examples)
        how = f"leave-one-shoot-out over {asked} references" + (
            f" and its {group_by!r}" if group_by else ""
        )
        if labelled:
            how += f"; {len(labelled)} labelled photos are fewer than {MIN_LABELLED}"
        return examples, head, how

    def _stored_vectors(self, s: Serving) -> tuple[list[str], list[str], np.ndarray]:
        """Every stored reference with a vector for `s`'s version: ids, categories, vectors."""
        ids: list[str] = []
        categories: list[str] = []
        parts = [np.zeros((0, s.embedder.dim), dtype=np.float32)]
        for batch in self.store.iter_vectors(s.version):
            ids += batch.reference_ids
            categories += batch.categories
            if batch.reference_ids:
                parts.append(batch.vectors)
        return ids, categories, np.concatenate(parts)

    def _groups(self, ids: Sequence[str], group_by: str | None) -> dict[str, str]:
        """Reference id -> its value of the `group_by` metadata (e.g. its sender)."""
        if not group_by:
            return {}
        return {
            ref.id: ref.metadata[group_by]
            for ref in self.store.get_references(ids)
            if ref is not None and group_by in ref.metadata
        }

    def _fit_attributes(self, s: Serving, group_by: str | None) -> dict[str, dict[str, Any]]:
        """Each attribute's temperature, fitted on honest examples, best first: labelled
        photos that carry attributes, when there are `MIN_LABELLED`, asked of the whole
        catalogue as traffic is; else references asked of the others outside their shoot
        and group (`indexer.holdout.attribute_examples`)."""
        held = dict(self._attributes())
        if not held:
            return {}
        labelled = [
            x for x in self.store.labelled(s.version) if x.vector is not None and x.attributes
        ]
        if len(labelled) >= MIN_LABELLED:
            vectors = np.stack([x.vector for x in labelled if x.vector is not None])
            truths = [x.attributes for x in labelled]
            examples = labelled_attribute_examples(s.index, vectors, truths, held, self.vote)
            return fit_attributes(examples, f"{len(labelled)} labelled photos")
        ids, categories, vectors = self._stored_vectors(s)
        examples = attribute_examples(
            s.index, ids, vectors, categories, held, self.vote, self._groups(ids, group_by)
        )
        return fit_attributes(examples, "references asked of other shoots and groups")

    def embed_labelled(self, serving: Serving) -> int:
        """Embed, for `serving`'s version, the stored labelled photos it has no vector for
        (a reindex: the new version is judged on the same labelled traffic); returns how
        many."""
        missing = [x.id for x in self.store.labelled(serving.version) if x.vector is None]
        done = 0
        for start in range(0, len(missing), EMBED_BATCH):
            chunk = missing[start : start + EMBED_BATCH]
            images = {i: self.store.get_labelled_image(i) for i in chunk}
            ids = [i for i in chunk if images[i] is not None]
            if not ids:
                continue
            vectors, _ = serving.embed(
                [images[i] or b"" for i in ids], [f"labelled photo {i}" for i in ids]
            )
            self.store.put_labelled_vectors(serving.version, dict(zip(ids, vectors, strict=True)))
            done += len(ids)
        return done
