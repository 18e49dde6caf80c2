"""The oracle's rules for re-announcements (``reason: "resnapshot"``), on events written by hand: what a resnapshot
must publish passes, and each way of getting it wrong is caught under the right name."""

from __future__ import annotations

import itertools
from typing import Any

from relay.simulator import Simulator
from tests.faults.oracle import Oracle, Verdict
from tests.integration.harness import Event

ACME = "personio:acme"
USERS = "ats/users"
_ids = itertools.count(1)


def event(record: dict[str, Any], kind: str, at_ms: int, *, reason: str | None = None) -> Event:
    """The event the relay would publish of ``record`` (snapshot when it is a re-announcement)."""
    resnapshot = reason == "resnapshot"
    body = {
        "id": f"event-{next(_ids)}",
        "type": f"ats.users.{kind}",
        "subject": record["id"],
        "data": {
            "integration_id": ACME,
            "resource": USERS,
            "id": record["id"],
            "record": record,
            "snapshot": resnapshot,
            "restored": False,
            "reason": reason,
        },
    }
    return Event(f"kombo.{USERS.replace('/', '.')}", f"{ACME}:{record['id']}", {}, body, at_ms)


class Story:
    """Three users announced; the third deleted (and announced so) before a resnapshot is asked."""

    def __init__(self) -> None:
        self.sim = Simulator(api_key="oracle-key", integrations=[ACME], users=3, seed=3)
        self.oracle = Oracle(self.sim, [ACME])
        self.live = list(self.sim.records(ACME, USERS, include_deleted=False))
        self.events = [event(record, "created", 1) for record in self.live]
        gone = self.sim.delete(ACME, USERS, self.live[2]["id"])
        self.events.append(event(gone, "deleted", 2))
        self.live = self.live[:2]
        with self.oracle.resnapshot(ACME, USERS):
            pass
        self.during = self.oracle.resnapshots[0].sent_ms  # a moment inside the resnapshot's window

    def reannounce(self, record: dict[str, Any], at_ms: int | None = None) -> None:
        self.events.append(event(record, "created", self.during if at_ms is None else at_ms, reason="resnapshot"))

    def judge(self) -> Verdict:
        return self.oracle.judge(self.events, "oracle")


def test_each_live_record_re_announced_once_within_the_resnapshot_is_right() -> None:
    story = Story()
    for record in story.live:
        story.reannounce(record)
    verdict = story.judge()
    assert verdict.ok, verdict.details()
    assert verdict.extra == {"resnapshots": 1, "reannounced": 2}


def test_a_resnapshot_acting_twice_is_a_duplicate_and_one_record_left_out_is_lost() -> None:
    story = Story()
    first, second = story.live
    story.reannounce(first)
    story.reannounce(first)
    verdict = story.judge()
    assert verdict.duplicated == [f"{ACME}/{USERS}/{first['id']}: re-announced 2 times by resnapshot 0, at most 1 due"]
    assert verdict.lost == [f"{ACME}/{USERS}/{second['id']}: live throughout resnapshot 0, and not re-announced by it"]
    assert not verdict.invalid


def test_a_re_announcement_outside_any_resnapshot_or_of_a_deleted_or_other_record_is_invalid() -> None:
    story = Story()
    first, second = story.live
    story.reannounce(first)
    story.reannounce(second, at_ms=story.oracle.resnapshots[0].acked_ms + 1)  # after the ack: nobody asked
    deleted = story.events[3].data["record"]
    story.reannounce(deleted)  # the consumer was told it is gone
    story.reannounce({**first, "first_name": "Other"})  # not what the consumer was told last
    verdict = story.judge()
    problems = "\n".join(verdict.invalid)
    assert "outside any resnapshot asked" in problems
    assert "re-announced while deleted for the consumer" in problems
    assert "re-announced a record other than the one its last event carried" in problems
    assert len(verdict.invalid) == 3, problems


def test_a_record_changed_during_the_resnapshot_may_be_re_announced_once_more_than_it_changed() -> None:
    story = Story()
    first, second = story.live
    story.oracle.resnapshots.clear()
    with story.oracle.resnapshot(ACME, USERS):
        changed = story.sim.update(ACME, USERS, first["id"], {"first_name": "Changed"})
    story.during = story.oracle.resnapshots[0].sent_ms
    story.reannounce(first)  # read before the change
    story.events.append(event(changed, "updated", story.during))
    story.reannounce(changed)  # and again at the end of the listing, where the change moved it
    story.reannounce(second)
    verdict = story.judge()
    assert verdict.ok, verdict.details()
    story.reannounce(changed)  # a third time: more than the one change explains
    assert len(story.judge().duplicated) == 1
