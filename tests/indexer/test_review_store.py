"""The review queue's store on a real Valkey: leases, bounds, verdicts once."""

from __future__ import annotations

import time

import pytest

from indexer.errors import FailedPrecondition, NotFound
from indexer.review_store import NewReviewItem, ReviewStore, VerdictRecord, now_ms
from indexer.store import Store

DAY_MS = 24 * 3600 * 1000


def item(n: int, **overrides: object) -> NewReviewItem:
    fields: dict[str, object] = {
        "image": f"image {n}".encode(),
        "answer": f"answer {n}".encode(),
        "decision": "review",
        "top_category": "Shoes" if n % 2 else "Bags",
        "model_version": "v1",
        "item_id": f"sku-{n}",
        "metadata": {"n": str(n)},
    }
    fields.update(overrides)
    return NewReviewItem(**fields)  # type: ignore[arg-type]


def verdict(review_id: str, reviewer: str, category: str, right: bool) -> VerdictRecord:
    return VerdictRecord(
        review_id, "category", category, reviewer, now_ms(), right, True, "", False, ""
    )


@pytest.fixture
def queue(store: Store) -> ReviewStore:
    return ReviewStore(store)


def test_an_item_is_kept_whole_and_claimed_oldest_first(queue: ReviewStore) -> None:
    ids = [queue.enqueue(item(n), 100, DAY_MS) for n in range(3)]
    [first] = queue.claim("rita", 1, 60_000)
    assert first.id == ids[0]
    assert (first.image, first.answer, first.item_id, first.metadata) == (
        b"image 0",
        b"answer 0",
        "sku-0",
        {"n": "0"},
    )
    assert first.leased_to == "rita" and first.lease_until_ms > now_ms()
    # Leased: another reviewer gets the next ones, never the same.
    assert [i.id for i in queue.claim("ravi", 5, 60_000)] == ids[1:]
    assert queue.claim("sam", 5, 60_000) == []
    counts = queue.counts()
    assert (counts.pending, counts.leased) == (3, 3)


def test_a_lapsed_lease_makes_the_item_claimable_again(queue: ReviewStore) -> None:
    review_id = queue.enqueue(item(0), 100, DAY_MS)
    assert [i.id for i in queue.claim("rita", 1, 50)] == [review_id]
    time.sleep(0.1)
    [again] = queue.claim("ravi", 1, 60_000)
    assert again.id == review_id and again.leased_to == "ravi"


def test_filters_and_peek(queue: ReviewStore) -> None:
    queue.enqueue(item(0), 100, DAY_MS)
    audit = queue.enqueue(item(1, decision="auto_accept", audit=True), 100, DAY_MS)
    assert [i.id for i in queue.claim("rita", 5, 60_000, audit=True, peek=True)] == [audit]
    assert [i.top_category for i in queue.claim("rita", 5, 60_000, category="Bags", peek=True)] == [
        "Bags"
    ]
    assert queue.claim("rita", 5, 60_000, decision="flag", peek=True) == []
    assert queue.counts().leased == 0  # peeking leases nothing


def test_the_queue_is_bounded_and_counts_what_it_drops(queue: ReviewStore) -> None:
    ids = [queue.enqueue(item(n), 3, DAY_MS) for n in range(5)]
    counts = queue.counts()
    assert counts.pending == 3 and counts.get("dropped_full") == 2
    assert queue.get(ids[0]) is None and queue.get(ids[4]) is not None
    time.sleep(0.05)
    assert queue.expire(10) == 3
    assert queue.counts().get("dropped_expired") == 3 and queue.counts().pending == 0


def test_queueing_drops_what_expired_in_the_same_round_trip(queue: ReviewStore) -> None:
    old = [queue.enqueue(item(n), 100, DAY_MS) for n in range(2)]
    time.sleep(0.05)
    new = queue.enqueue(item(2), 100, 20)  # whatever is older than 20 ms goes
    assert [queue.get(i) for i in old] == [None, None] and queue.get(new) is not None
    assert queue.counts().get("dropped_expired") == 2
    # Ids: the time in ms then a counter, 20 hex digits, ordered as queued.
    ids = [*old, new]
    assert all(len(i) == 20 and int(i, 16) for i in ids) and ids == sorted(ids)
    assert abs(int(new[:12], 16) - now_ms()) < 60_000


def test_a_verdict_closes_the_item_once(queue: ReviewStore) -> None:
    review_id = queue.enqueue(item(1), 100, DAY_MS)
    taken = queue.take(review_id, "rita", 60_000)
    with pytest.raises(FailedPrecondition, match="leased to rita"):
        queue.take(review_id, "ravi", 60_000)
    first = queue.close(taken, verdict(review_id, "rita", "Shoes", True))
    # A second close (a retry, or a race lost) keeps the first verdict.
    second = queue.close(taken, verdict(review_id, "ravi", "Bags", False))
    assert second == first == queue.verdict_of(review_id)
    with pytest.raises(NotFound, match="not in the queue"):
        queue.take(review_id, "rita", 60_000)
    counts = queue.counts()
    assert counts.pending == 0 and counts.get("reviewed") == 1 and counts.get("agreed") == 1
    assert counts.per_day[-1][1] == 1


def test_a_skipped_item_goes_to_someone_else(queue: ReviewStore) -> None:
    review_id = queue.enqueue(item(0), 100, DAY_MS)
    queue.claim("rita", 1, 60_000)
    queue.skip(review_id, "rita")
    assert queue.claim("rita", 1, 60_000) == []
    assert [i.id for i in queue.claim("ravi", 1, 60_000)] == [review_id]
    assert queue.counts().get("skipped") == 1


def test_audit_verdicts_are_counted_apart(queue: ReviewStore) -> None:
    for n, right in enumerate([True, True, False]):
        audit = item(n, audit=True, decision="auto_accept", band="v1@1")
        review_id = queue.enqueue(audit, 100, DAY_MS)
        queue.close(queue.take(review_id, "rita", 60_000), verdict(review_id, "rita", "X", right))
    counts = queue.counts()
    assert (counts.get("audit_reviewed:v1@1"), counts.get("audit_right:v1@1")) == (3, 2)
    assert counts.get("judged") == 0
