"""The state topic's record format: how what the relay remembers is written to Kafka as keys and values, and read back.

What belongs here: the layout of state-topic keys and values, nothing about where they go or how they are read from
Kafka (:mod:`relay.state_topic`) nor about the memory they fill (:mod:`relay.state`). Pure: no I/O.

Keys are JSON arrays, so ids containing ``:`` or anything else stay unambiguous:

============================================  ================================================================
key                                           value
============================================  ================================================================
``["e", integration, resource, entity_id]``   ``b"\\x02"`` + the entity's fingerprint (see :mod:`relay.diff`)
``["s", integration, resource, shape_id]``    JSON list of the field names of a record shape
``["c", integration, resource]``              JSON :class:`~relay.state.Checkpoint` (watermark, in-progress poll)
============================================  ================================================================

Format ``b"\\x01"`` (fingerprints with 32-bit field hashes, written by earlier versions) is still read: each field
hash keeps its low 16 bits (:func:`relay.diff.narrow_fingerprint`).

A tombstone (null value) of an entity or checkpoint key forgets it: ``relay state reset`` writes them for a pair. The
owner of an integration removed from the registry writes tombstones for every key of its pairs, shapes included, once
``RELAY_REMOVED_STATE_RETENTION`` has passed (:mod:`relay.retention`).

Deleted entities keep their (small) fingerprint: the relay must remember that they are deleted, to detect restores
and never announce them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

import orjson

from relay.diff import narrow_fingerprint
from relay.errors import StateError

FINGERPRINT_FORMAT: Final = b"\x02"
WIDE_FINGERPRINT_FORMAT: Final = b"\x01"  # 32-bit field hashes: read, never written
ENTITY: Final = "e"
SHAPE: Final = "s"
CHECKPOINT: Final = "c"


class StateRecord(NamedTuple):  # immutable, and several times faster to build than a frozen dataclass
    """One record for the state topic."""

    key: bytes
    value: bytes
    partition: int


def encode_records(
    integration: str,
    resource: str,
    partition: int,
    *,
    delta: Mapping[str, bytes],
    new_shapes: Iterable[tuple[int, tuple[str, ...]]],
    checkpoint: bytes | None,
) -> list[StateRecord]:
    """The records that persist ``delta``, new shapes and (optionally) a checkpoint, already as JSON."""
    records = [
        StateRecord(orjson.dumps([SHAPE, integration, resource, shape_id]), orjson.dumps(names), partition)
        for shape_id, names in new_shapes
    ]
    # The key of an entity record is the JSON array ["e", integration, resource, entity_id]: its first three
    # items are the same for the whole delta, so they are serialized once.
    prefix = orjson.dumps([ENTITY, integration, resource])[:-1] + b","
    dumps = orjson.dumps
    records.extend(
        StateRecord(prefix + dumps(entity_id) + b"]", FINGERPRINT_FORMAT + fp, partition)
        for entity_id, fp in delta.items()
    )
    if checkpoint is not None:
        records.append(StateRecord(orjson.dumps([CHECKPOINT, integration, resource]), checkpoint, partition))
    return records


def forget_keys(integration: str, resource: str, entity_ids: Iterable[str]) -> list[bytes]:
    """The keys whose tombstones forget a pair (``relay state reset``): its entities', then its checkpoint's. Shapes
    are kept (entities written later refer to their ids)."""
    prefix = orjson.dumps([ENTITY, integration, resource])[:-1] + b","
    keys = [prefix + orjson.dumps(entity_id) + b"]" for entity_id in entity_ids]
    keys.append(orjson.dumps([CHECKPOINT, integration, resource]))
    return keys


def every_key(integration: str, resource: str, entity_ids: Iterable[str], shape_ids: Iterable[int]) -> list[bytes]:
    """Every key of a pair's state, whose tombstones forget it entirely: its entities', its shapes', then its
    checkpoint's (last)."""
    keys = forget_keys(integration, resource, entity_ids)
    checkpoint = keys.pop()
    keys.extend(orjson.dumps([SHAPE, integration, resource, shape_id]) for shape_id in shape_ids)
    keys.append(checkpoint)
    return keys


def read_fingerprint(key: bytes, value: bytes) -> bytes:
    """The fingerprint in an entity record's value, in the current layout whatever the record's format."""
    fmt = value[:1]
    if fmt == FINGERPRINT_FORMAT:
        return value[1:]
    if fmt == WIDE_FINGERPRINT_FORMAT:
        return narrow_fingerprint(value[1:])
    raise StateError(f"state record {key[:80]!r} has unknown format {fmt!r}")


def read_shape(value: bytes) -> tuple[str, ...]:
    """The field names in a shape record's value (checked by :meth:`relay.diff.ShapeTable.add_known`)."""
    return tuple(orjson.loads(value))
