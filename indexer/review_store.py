"""The review queue in the store: answers a person should look at, each leased to one
reviewer at a time, and the verdicts given on them.

Durable like the catalogue (same Redis/Valkey, same prefix), bounded (oldest dropped past
`max_items`, anything older than `max_age` expired; both counted), and safe for many
reviewers: a claim leases an item atomically, a verdict first takes the item's lease and
then closes it in one transaction, so two reviewers never both decide one item. What an
item's answer was is opaque bytes here (the server stores the message it served).

Keys, under the store's prefix:

- ``review:queue``       ZSET id -> when it may next be claimed (ms): its creation, or the
                          end of its lease
- ``review:created``     ZSET id -> creation time (ms): expiry and dropping the oldest
- ``review:item:<id>``   HASH the item (answer, decision, top category, audit, caller's
                          item id and metadata, lease holder, who skipped it)
- ``review:img:<id>``    STRING the image
- ``review:done:<id>``   HASH the verdict, kept `DONE_TTL_S` after it (a repeated verdict
                          is answered from it)
- ``review:seq``         STRING a counter, for ids
- ``review:stats``       HASH counters (reviewed, skipped, agreed, judged, dropped_full,
                          dropped_expired, day:<YYYY-MM-DD>, and per auto-accept band
                          audit_reviewed:<band>, audit_right:<band>)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from indexer.errors import FailedPrecondition, NotFound
from indexer.store import Store

DONE_TTL_S = 30 * 24 * 3600
SCAN = 500  # queued items a claim looks through for ones matching its filters

# Drop items (KEYS[1] queue, KEYS[2] created, KEYS[3] stats, KEYS[4] item key prefix, KEYS[5]
# image key prefix): only what this call removed is counted, so two callers never count one
# item twice. Shared by the drop and enqueue scripts.
DROP_FUNCTION = """
local function drop(ids, counter)
  local dropped = 0
  for _, id in ipairs(ids) do
    if redis.call('ZREM', KEYS[2], id) == 1 then
      redis.call('ZREM', KEYS[1], id)
      redis.call('DEL', KEYS[4] .. id, KEYS[5] .. id)
      dropped = dropped + 1
    end
  end
  if dropped > 0 then
    redis.call('HINCRBY', KEYS[3], counter, dropped)
  end
  return dropped
end
"""

# ARGV[1] the counter, then the ids.
DROP_SCRIPT = (
    DROP_FUNCTION
    + """
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
return drop(ids, ARGV[1])
"""
)

# Queue an item in one round trip (a review write is on the answer's path: five round trips
# cost the server about 0.4 ms more CPU per unsure answer than this one): a new id (the time
# in ms, then the counter KEYS[6]: unique across servers and ordered), expired items dropped
# (at most EXPIRE_BATCH a call), the item written, the oldest past the bound dropped. ARGV:
# now_ms, expiry cutoff_ms, max_items, the image, then the item's field/value pairs.
EXPIRE_BATCH = 1000
ENQUEUE_SCRIPT = (
    DROP_FUNCTION
    + f"""
local now = tonumber(ARGV[1])
local seq = redis.call('INCR', KEYS[6])
local id = string.format('%012x%08x', now, seq % 4294967296)
drop(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, {EXPIRE_BATCH}),
     'dropped_expired')
redis.call('HSET', KEYS[4] .. id, unpack(ARGV, 5))
redis.call('SET', KEYS[5] .. id, ARGV[4])
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZADD', KEYS[1], now, id)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  drop(redis.call('ZRANGE', KEYS[2], 0, over - 1), 'dropped_full')
end
return id
"""
)

# Lease an item if it is claimable now (KEYS[1] queue, KEYS[2] item; ARGV now, until, who).
LEASE_SCRIPT = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[4])
if not at or tonumber(at) > tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], 'leased_to', ARGV[3], 'lease_until_ms', ARGV[2])
return 1
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NewReviewItem:
    image: bytes
    answer: bytes  # the answer as served, opaque here
    decision: str
    top_category: str
    model_version: str
    request_id: str = ""
    item_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    audit: bool = False
    # Which auto-accept band an audit measures (model version and calibration): audits of
    # an earlier band do not judge a refitted one.
    band: str = ""


@dataclass(frozen=True)
class ReviewItem:
    id: str
    image: bytes
    answer: bytes
    decision: str
    top_category: str
    model_version: str
    request_id: str
    created_at_ms: int
    item_id: str
    metadata: dict[str, str]
    audit: bool
    leased_to: str
    lease_until_ms: int
    skipped_by: tuple[str, ...]
    band: str = ""


@dataclass(frozen=True)
class VerdictRecord:
    """What a verdict decided and did; stored, so that the same verdict again gets the same
    answer."""

    review_id: str
    kind: str  # "category" or "none"
    category: str  # the confirmed category; "" for "none of these" without a name
    reviewer: str
    at_ms: int
    model_was_right: bool
    labelled: bool
    reference_id: str
    category_created: bool
    message: str


@dataclass(frozen=True)
class QueueCounts:
    pending: int
    leased: int
    counters: dict[str, int]
    per_day: list[tuple[str, int]]

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)


class ReviewStore:
    """The review queue's keys in a `Store`'s database."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._redis: Any = store.client
        self._drop = self._redis.register_script(DROP_SCRIPT)
        self._lease = self._redis.register_script(LEASE_SCRIPT)
        self._enqueue_script = self._redis.register_script(ENQUEUE_SCRIPT)

    def _k(self, *parts: str) -> str:
        return self._store.key("review", *parts)

    # -- queueing ------------------------------------------------------------------------

    def enqueue(self, item: NewReviewItem, max_items: int, max_age_ms: int) -> str:
        """Queue an item; returns its id. Expired items go first, then the oldest past
        `max_items`."""
        now = now_ms()
        fields = {
            "answer": item.answer,
            "decision": item.decision,
            "top_category": item.top_category,
            "model_version": item.model_version,
            "request_id": item.request_id,
            "created_at_ms": now,
            "item_id": item.item_id,
            "metadata": json.dumps(item.metadata, sort_keys=True),
            "audit": int(item.audit),
            "band": item.band,
            "leased_to": "",
            "lease_until_ms": 0,
            "skipped_by": "[]",
        }
        args = [now, now - max_age_ms, max_items, item.image]
        args += [part for pair in fields.items() for part in pair]
        keys = [*self._drop_keys(), self._k("seq")]
        review_id = self._store.call(lambda: self._enqueue_script(keys=keys, args=args))
        return bytes(review_id).decode()

    def expire(self, max_age_ms: int, now: int | None = None) -> int:
        """Drop items older than `max_age_ms`; returns how many this call dropped."""
        cutoff = (now or now_ms()) - max_age_ms
        old = self._store.call(
            lambda: self._redis.zrangebyscore(self._k("created"), "-inf", cutoff)
        )
        return self._drop_ids([i.decode() for i in old], "dropped_expired")

    def _drop_keys(self) -> list[str]:
        """The keys DROP_FUNCTION reads, in its order."""
        return [
            self._k("queue"),
            self._k("created"),
            self._k("stats"),
            self._k("item", ""),
            self._k("img", ""),
        ]

    def _drop_ids(self, ids: Sequence[str], counter: str) -> int:
        if not ids:
            return 0
        keys = self._drop_keys()
        return int(self._store.call(lambda: self._drop(keys=keys, args=[counter, *ids])))

    # -- reading and claiming ------------------------------------------------------------

    def get(self, review_id: str) -> ReviewItem | None:
        def read() -> tuple[dict[bytes, bytes], bytes | None]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(self._k("item", review_id))
            pipe.get(self._k("img", review_id))
            fields, image = pipe.execute()
            return fields, image

        fields, image = self._store.call(read)
        if not fields or image is None:
            return None
        return _item(review_id, fields, bytes(image))

    def claim(
        self,
        reviewer: str,
        max_items: int,
        lease_ms: int,
        *,
        category: str = "",
        decision: str = "",
        audit: bool | None = None,
        peek: bool = False,
    ) -> list[ReviewItem]:
        """The oldest claimable items that pass the filters (and that `reviewer` did not
        skip), leased to `reviewer` for `lease_ms` unless `peek`."""
        now = now_ms()
        ids = self._store.call(
            lambda: self._redis.zrangebyscore(self._k("queue"), "-inf", now, start=0, num=SCAN)
        )
        candidates = [i.decode() for i in ids]

        def read() -> list[dict[bytes, bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for review_id in candidates:
                pipe.hgetall(self._k("item", review_id))
            return list(pipe.execute())

        out: list[ReviewItem] = []
        for review_id, fields in zip(candidates, self._store.call(read), strict=True):
            if len(out) >= max_items:
                break
            if not fields:
                continue
            item = _item(review_id, fields, b"")
            if (
                (category and item.top_category != category)
                or (decision and item.decision != decision)
                or (audit is not None and item.audit != audit)
                or reviewer in item.skipped_by
            ):
                continue
            until = now + lease_ms
            if not peek and not self._take_lease(item.id, now, until, reviewer):
                continue
            image = self._image(item.id)
            if image is None:  # dropped meanwhile
                continue
            item = replace(item, image=image)
            out.append(item if peek else _with_lease(item, reviewer, until))
        return out

    def _image(self, review_id: str) -> bytes | None:
        image = self._store.call(lambda: self._redis.get(self._k("img", review_id)))
        return bytes(image) if image is not None else None

    def _take_lease(self, review_id: str, now: int, until: int, reviewer: str) -> bool:
        keys = [self._k("queue"), self._k("item", review_id)]
        args = [now, until, reviewer, review_id]
        return bool(self._store.call(lambda: self._lease(keys=keys, args=args)))

    # -- verdicts ------------------------------------------------------------------------

    def verdict_of(self, review_id: str) -> VerdictRecord | None:
        fields = self._store.call(lambda: self._redis.hgetall(self._k("done", review_id)))
        if not fields:
            return None
        data = json.loads(fields[b"record"])
        return VerdictRecord(**data)

    def take(self, review_id: str, reviewer: str, lease_ms: int) -> ReviewItem:
        """Lease an item to `reviewer` for deciding it: NotFound when it is not queued,
        FailedPrecondition while another reviewer holds it. (A decided item is the caller's
        to check first, with verdict_of.)"""
        key = self._k("item", review_id)

        def body(pipe: Any) -> ReviewItem:
            fields = pipe.hgetall(key)
            image = pipe.get(self._k("img", review_id))
            if not fields or image is None:
                raise NotFound(
                    f"review item {review_id!r} is not in the queue (never queued, expired or "
                    "dropped); claim another with ClaimReviews"
                )
            item = _item(review_id, fields, bytes(image))
            now = now_ms()
            if item.leased_to and item.leased_to != reviewer and item.lease_until_ms > now:
                left = (item.lease_until_ms - now) / 1000
                raise FailedPrecondition(
                    f"review item {review_id!r} is leased to {item.leased_to} for another "
                    f"{left:.0f}s; claim another item"
                )
            until = now + lease_ms
            pipe.multi()
            pipe.hset(key, mapping={"leased_to": reviewer, "lease_until_ms": until})
            pipe.zadd(self._k("queue"), {review_id: until})
            return _with_lease(item, reviewer, until)

        return self._store.transaction(body, [key], "the item stays leased to you")

    def close(self, item: ReviewItem, record: VerdictRecord) -> VerdictRecord:
        """Record the verdict and take the item off the queue, in one transaction; returns
        the verdict that stands (an earlier one, if another call closed it first)."""
        key = self._k("item", item.id)
        done = self._k("done", item.id)
        day = datetime.fromtimestamp(record.at_ms / 1000, UTC).strftime("%Y-%m-%d")

        def body(pipe: Any) -> VerdictRecord | None:
            if pipe.exists(done):
                return None
            pipe.multi()
            pipe.hset(done, mapping={"record": json.dumps(record.__dict__)})
            pipe.expire(done, DONE_TTL_S)
            pipe.delete(key, self._k("img", item.id))
            pipe.zrem(self._k("queue"), item.id)
            pipe.zrem(self._k("created"), item.id)
            stats = self._k("stats")
            pipe.hincrby(stats, "reviewed", 1)
            pipe.hincrby(stats, f"day:{day}", 1)
            if item.audit:
                pipe.hincrby(stats, f"audit_reviewed:{item.band}", 1)
                pipe.hincrby(stats, f"audit_right:{item.band}", int(record.model_was_right))
            else:
                pipe.hincrby(stats, "judged", 1)
                pipe.hincrby(stats, "agreed", int(record.model_was_right))
            return record

        closed = self._store.transaction(body, [done, key], "the verdict stands")
        if closed is None:
            earlier = self.verdict_of(item.id)
            assert earlier is not None
            return earlier
        return closed

    def skip(self, review_id: str, reviewer: str) -> None:
        """Give an item back to the queue, not to be offered to `reviewer` again."""
        key = self._k("item", review_id)

        def body(pipe: Any) -> None:
            fields = pipe.hgetall(key)
            if not fields:
                raise NotFound(f"review item {review_id!r} is not in the queue")
            skipped = set(json.loads(fields.get(b"skipped_by", b"[]")))
            pipe.multi()
            pipe.hset(
                key,
                mapping={
                    "leased_to": "",
                    "lease_until_ms": 0,
                    "skipped_by": json.dumps(sorted(skipped | {reviewer})),
                },
            )
            pipe.zadd(self._k("queue"), {review_id: now_ms()})
            pipe.hincrby(self._k("stats"), "skipped", 1)

        self._store.transaction(body, [key], "the item is back in the queue")

    # -- counts --------------------------------------------------------------------------

    def counts(self, days: int = 14) -> QueueCounts:
        now = now_ms()

        def read() -> tuple[int, int, dict[bytes, bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zcard(self._k("created"))
            pipe.zcount(self._k("queue"), f"({now}", "+inf")
            pipe.hgetall(self._k("stats"))
            pending, leased, stats = pipe.execute()
            return int(pending), int(leased), stats

        pending, leased, stats = self._store.call(read)
        counters = {k.decode(): int(v) for k, v in stats.items()}
        today = datetime.fromtimestamp(now / 1000, UTC).date()
        per_day = []
        for back in range(days - 1, -1, -1):
            day = (today - timedelta(days=back)).strftime("%Y-%m-%d")
            per_day.append((day, counters.get(f"day:{day}", 0)))
        return QueueCounts(pending, leased, counters, per_day)


def _item(review_id: str, fields: dict[bytes, bytes], image: bytes) -> ReviewItem:
    return ReviewItem(
        id=review_id,
        image=image,
        answer=bytes(fields[b"answer"]),
        decision=fields[b"decision"].decode(),
        top_category=fields[b"top_category"].decode(),
        model_version=fields[b"model_version"].decode(),
        request_id=fields[b"request_id"].decode(),
        created_at_ms=int(fields[b"created_at_ms"]),
        item_id=fields[b"item_id"].decode(),
        metadata=json.loads(fields[b"metadata"]),
        audit=fields[b"audit"] == b"1",
        leased_to=fields[b"leased_to"].decode(),
        lease_until_ms=int(fields[b"lease_until_ms"]),
        skipped_by=tuple(json.loads(fields.get(b"skipped_by", b"[]"))),
        band=fields.get(b"band", b"").decode(),
    )


def _with_lease(item: ReviewItem, reviewer: str, until: int) -> ReviewItem:
    return replace(item, leased_to=reviewer, lease_until_ms=until)
