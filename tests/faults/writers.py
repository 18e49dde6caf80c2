"""Who wrote what: every record of the state and event topics with the transactional producer that wrote it, and each
replica's ownership of the state partitions from its log. Together they show that no state partition was committed by
two replicas in one generation.

Kafka stamps every record batch with its producer's id and epoch (aiokafka reads them and hands records out without
them: :func:`read_written` keeps them). Each state partition ``p`` has one transactional id,
``{RELAY_TRANSACTIONAL_ID}-{p}``, hence one producer id; every producer started under it (a claim of ``p``, or a new
producer after a Kafka error) gets the next epoch and fences those before it. So the committed records of ``p``, in
offset order, fall into *runs* of one epoch: one producer session each.

A replica's log says when it owned ``p``: from the start of the restore of its claim (its producer fenced the previous
owner's just before) to its handover of ``p`` (its last page committed or aborted), or to its death (SIGKILL). Each
claim lies in one generation of the group (aiokafka speaks the eager protocol: every rebalance hands everything over
and claims anew), so these *tenures*, each cut short where the next claim of ``p`` starts, are ``p``'s generations as
far as writing goes. The check (:func:`judge_writers`):

* one producer id per state partition, whose epochs never go back in offset order: no two writers interleave;
* every run lies within one tenure: its records were made while that replica owned ``p`` and before anyone claimed
  ``p`` next. A zombie's commit after the next owner's claim, or two replicas writing at once, fits no tenure;
* a tenure's later runs each follow a restart of that replica's own producer (after a Kafka error it reads its state
  again, and logs it, before committing): another session within it is another replica's, one that started a
  producer for a partition no longer its own and so fenced the owner;
* every event was written in the transaction of such a run (same producer id and epoch).

What time cannot tell is a transaction a zombie had open when the next owner claimed (its records made before the
claim) and committed afterwards: Kafka forbids that (the claim's producer aborted it and fenced the zombie's), and the
zombie scenario checks it where it happens.

Records carry the time the producer appended them (``CreateTime``, the relay's ``time.time()``), log lines the time
they were written, both from this machine's clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer import fetcher

from tests.faults.chaos import FaultWorld, RelayProcess

TOLERANCE = 0.002  # seconds: log lines and record timestamps are both truncated to milliseconds
TAKEN_OVER = "a state partition was taken over by another replica"
RELOADED = "state re-read from the state topic after a Kafka error"
CLAIMED = "state partitions claimed"
HANDED_OVER = "state partitions handed over"


@dataclass(frozen=True)
class Written:
    """A record as it sits in Kafka, with the producer session that wrote it."""

    topic: str
    partition: int
    offset: int
    producer_id: int
    epoch: int
    timestamp_ms: int
    key: bytes | None


class _Batches:
    """The record batches of a fetch response, remembering the one being read."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.current: Any = None

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        self.current = self._records.next_batch()
        return self.current


async def read_written(
    bootstrap_servers: str, partitions: Iterable[tuple[str, int]], *, committed: bool = True
) -> list[Written]:
    """Every record of ``partitions`` (topic, partition) from the beginning to the current end, with its producer id
    and epoch: the committed ones (``read_committed``), or all (``read_uncommitted``: open and aborted transactions
    too)."""
    found: dict[tuple[str, int, int], Written] = {}

    class Recording(fetcher.PartitionRecords):  # type: ignore[misc]  # aiokafka ships no type hints
        def __init__(self, tp: TopicPartition, records: Any, *args: Any, **kwargs: Any) -> None:
            self._batches = _Batches(records)
            super().__init__(tp, self._batches, *args, **kwargs)

        def _consumer_record(self, tp: TopicPartition, record: Any) -> Any:
            batch = self._batches.current
            where = (tp.topic, tp.partition, record.offset)
            found[where] = Written(*where, batch.producer_id, batch.producer_epoch, record.timestamp, record.key)
            return super()._consumer_record(tp, record)

    assigned = [TopicPartition(topic, partition) for topic, partition in partitions]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed" if committed else "read_uncommitted",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    # Only this process's consumers are affected (the relays are other processes), and only while it reads.
    with mock.patch.object(fetcher, "PartitionRecords", Recording):
        await consumer.start()
        try:
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            remaining = {tp for tp in assigned if ends[tp] > 0}
            while remaining:
                await consumer.getmany(*remaining, timeout_ms=500)
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        finally:
            await consumer.stop()
    return sorted(found.values(), key=lambda w: (w.topic, w.partition, w.offset))


@dataclass(frozen=True)
class Tenure:
    """One claim of a state partition by a replica, from its log: ``start`` to ``end`` (seconds since the epoch)."""

    replica: str
    partition: int
    start: float  # its restore started: the producer of the claim had fenced the previous owner's
    end: float  # handed over, or the replica seen dead; inf while neither
    reloads: tuple[float, ...] = ()  # the replica read its state again after a Kafka error, with a new producer


def tenures_of(relay: RelayProcess) -> list[Tenure]:
    """The claims in ``relay``'s log, each with its end."""
    tenures: list[Tenure] = []
    restore_started: float | None = None
    open_claims: dict[int, float] = {}
    for entry in relay.entries():
        if entry["event"] == "state restored":
            restore_started = entry["at"] - float(entry.get("seconds", 0.0))
        elif entry["event"] == CLAIMED:
            for partition in entry["partitions"]:
                open_claims[partition] = entry["at"] if restore_started is None else restore_started
        elif entry["event"] == HANDED_OVER:
            for partition in entry["partitions"]:
                if partition in open_claims:
                    tenures.append(Tenure(relay.name, partition, open_claims.pop(partition), entry["at"]))
    end = math.inf if relay.exited_at is None else relay.exited_at
    tenures.extend(Tenure(relay.name, partition, start, end) for partition, start in open_claims.items())
    reloads = [entry["at"] for entry in relay.entries() if entry["event"] == RELOADED]
    return [dataclasses.replace(t, reloads=tuple(r for r in reloads if t.start <= r <= t.end)) for t in tenures]


@dataclass(frozen=True)
class Run:
    """Consecutive committed records of one state partition written by one producer session."""

    partition: int
    producer_id: int
    epoch: int
    first_offset: int
    records: int
    first_ms: int
    last_ms: int
    tenure: Tenure | None  # the owner it was written by; None: no single one (a problem)


@dataclass
class WritersVerdict:
    runs: list[Run] = field(default_factory=list)
    tenures: list[Tenure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    events_by: dict[str, int] = field(default_factory=dict)  # events written per replica
    state: list[Written] = field(default_factory=list)  # the committed state records judged
    events: list[Written] = field(default_factory=list)  # the committed events judged

    def tenure_of(self, written: Written) -> Tenure | None:
        """The tenure whose producer session wrote ``written`` (a state record or an event)."""
        for run in self.runs:
            if (run.producer_id, run.epoch) == (written.producer_id, written.epoch):
                return run.tenure
        return None

    def summary(self) -> dict[str, object]:
        return {"claims": len(self.tenures), "writers": len(self.runs), "double_writes": len(self.problems)}


def judge_writers(
    state: Sequence[Written], events: Sequence[Written], tenures: Sequence[Tenure], state_topic: str
) -> WritersVerdict:
    """Check that every committed state record was written by the one replica owning its partition at that time,
    before the partition's next claim, and every event by one of those producer sessions (see the module docstring).
    ``state`` and ``events``: committed records, from :func:`read_written`."""
    verdict = WritersVerdict(tenures=sorted(tenures, key=lambda t: (t.partition, t.start)))
    by_partition: dict[int, list[Written]] = defaultdict(list)
    for written in state:
        assert written.topic == state_topic
        by_partition[written.partition].append(written)
    for partition, records in sorted(by_partition.items()):
        producers = {w.producer_id for w in records}
        if len(producers) > 1:
            verdict.problems.append(f"state partition {partition} written by {len(producers)} producer ids")
        claims = [t for t in verdict.tenures if t.partition == partition]
        for run in _runs(partition, records):
            owner = _owner(run, claims)
            if owner is None:
                verdict.problems.append(
                    f"state partition {partition}: {run.records} records from offset {run.first_offset} (producer "
                    f"{run.producer_id}, epoch {run.epoch}, made {run.first_ms / 1000:.3f}..{run.last_ms / 1000:.3f})"
                    f" fit no single replica's tenure: {_describe(claims)}"
                )
            previous = next((r for r in reversed(verdict.runs) if r.partition == partition), None)
            if previous is not None and run.epoch <= previous.epoch:
                verdict.problems.append(
                    f"state partition {partition}: epoch {run.epoch} at offset {run.first_offset} after epoch "
                    f"{previous.epoch}: two producer sessions interleave"
                )
            if (
                owner is not None
                and previous is not None
                and previous.tenure == owner
                and not any(
                    previous.last_ms / 1000 - TOLERANCE <= r <= run.first_ms / 1000 + TOLERANCE for r in owner.reloads
                )
            ):
                # A tenure's producer is replaced only by its own replica, after a Kafka error, which reads the state
                # again before it commits: another session within it, without that, is another writer's.
                verdict.problems.append(
                    f"state partition {partition}: epoch {run.epoch} at offset {run.first_offset} follows epoch "
                    f"{previous.epoch} within {owner.replica}'s tenure, which restarted no producer: another writer"
                )
            verdict.runs.append(dataclasses.replace(run, tenure=owner))
    sessions = {(run.producer_id, run.epoch): run for run in verdict.runs}
    by_replica: dict[str, int] = defaultdict(int)
    for event in events:
        run = sessions.get((event.producer_id, event.epoch))
        if run is None or run.tenure is None:
            verdict.problems.append(
                f"event {event.topic}/{event.partition}@{event.offset} written by producer {event.producer_id} "
                f"epoch {event.epoch}, which wrote no owned state"
            )
        else:
            by_replica[run.tenure.replica] += 1
    verdict.events_by = dict(sorted(by_replica.items()))
    return verdict


def _runs(partition: int, records: Sequence[Written]) -> list[Run]:
    groups: list[list[Written]] = []
    for written in records:
        if groups and (groups[-1][0].producer_id, groups[-1][0].epoch) == (written.producer_id, written.epoch):
            groups[-1].append(written)
        else:
            groups.append([written])
    return [
        Run(
            partition=partition,
            producer_id=group[0].producer_id,
            epoch=group[0].epoch,
            first_offset=group[0].offset,
            records=len(group),
            first_ms=min(w.timestamp_ms for w in group),
            last_ms=max(w.timestamp_ms for w in group),
            tenure=None,
        )
        for group in groups
    ]


def _owner(run: Run, claims: Sequence[Tenure]) -> Tenure | None:
    """The one tenure (``claims``: of the run's partition, by start) whose span holds every record of ``run``: from
    its start to its end or to the next claim's start, whichever comes first."""
    first, last = run.first_ms / 1000, run.last_ms / 1000
    owners = []
    for index, claim in enumerate(claims):
        until = claim.end if index + 1 == len(claims) else min(claim.end, claims[index + 1].start)
        if claim.start - TOLERANCE <= first and last <= until + TOLERANCE:
            owners.append(claim)
    return owners[0] if len(owners) == 1 else None


def _describe(claims: Sequence[Tenure]) -> str:
    return "; ".join(f"{t.replica} {t.start:.3f}..{t.end:.3f}" for t in claims) or "no claim at all"


def fenced_count(relays: Iterable[RelayProcess], since: float = 0.0) -> int:
    """How many times a replica found a partition's producer fenced at a commit (a zombie noticing)."""
    return sum(relay.count_log(TAKEN_OVER, since) for relay in relays)


async def who_wrote(world: FaultWorld) -> WritersVerdict:
    """Judge the writers of everything committed to ``world``'s state and event topics (its relays stopped)."""
    topic_partitions = int(world.env()["RELAY_TOPIC_PARTITIONS"])
    state = await read_written(world.bootstrap_servers, [(world.state_topic, p) for p in range(world.state_partitions)])
    events = await read_written(
        world.bootstrap_servers, [(topic, p) for topic in world.event_topics for p in range(topic_partitions)]
    )
    tenures = [tenure for relay in world.processes for tenure in tenures_of(relay)]
    verdict = judge_writers(state, events, tenures, world.state_topic)
    verdict.state, verdict.events = list(state), list(events)
    return verdict
