"""What the simulated records look like: one :class:`ResourceSpec` per list endpoint.

Every record carries every property of its schema in ``../shared/kombo-openapi.json`` (required or not), with
plausible values; nested arrays are small. A spec says four things about its resource:

* ``generate``: the record with a given number, a pure function of ``(seed, integration, resource, number)`` and its
  ``changed_at``, so that 1M seeded records need no storage until they change;
* ``random_update``: a change to the record's *own* fields (these move ``changed_at``);
* ``change_nested``: a change to its nested list ``nested_field`` only (these leave ``changed_at`` alone, yet make
  the record match ``updated_after``, as the spec's table for the endpoint lists: ``system_roles`` for users,
  ``tags`` for candidates, ``hiring_team`` for jobs, ``employments`` for employees);
* ``filters``: its resource-specific query parameters (``ids``, ``remote_ids``, ``cursor``, ``page_size``,
  ``updated_after``, ``include_deleted`` and ``ignore_unsupported_filters`` are common to all).

Functions here never modify the records they are given: stored records are shared with the mutation log.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from typing import Any, NamedTuple

from relay.simulator.dice import ID_LENGTH, TO_BASE58, Dice, kombo_id
from relay.simulator.filters import REMOTE_IDS, AnyOf, Contains, CustomField, Filter, OnOrAfter, nested
from relay.simulator.filters import field as top
from relay.timestamps import format_timestamp_ms

Record = dict[str, Any]
DAY_MS = 86_400_000


class RecordSeed(NamedTuple):
    """Everything a generator may depend on (a named tuple: one is made per seeded record, it must be cheap)."""

    salt: int  # the simulator's seed
    integration: str
    resource: str
    number: int  # the record's number in its (integration, resource); also gives its id and remote_id
    changed_ms: int  # the record's changed_at
    population: Mapping[str, int]  # seeded size of each resource of the integration, for cross references


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation function may depend on besides the record."""

    rng: random.Random
    now_ms: int
    salt: int
    integration: str


@dataclass(frozen=True)
class ResourceSpec:
    name: str  # "ats/users": the path under /v1
    nested_field: str
    generate: Callable[[RecordSeed], Record]
    random_update: Callable[[Record, Change], Record]  # -> the own fields that change, with their new values
    change_nested: Callable[[Record, Change], list[Any]]  # -> the new value of nested_field
    # The keys of the indexed filters of a seeded record, computed without generating it (seeding 1M records must
    # be fast); must agree with what the filters extract from ``generate``'s record (a test checks).
    seed_index_keys: Callable[[RecordSeed], Mapping[str, list[str]]]
    filters: Mapping[str, Filter] = field(default_factory=dict)


def record_id(salt: int, integration: str, resource: str, number: int) -> str:
    """``kombo_id(salt, integration, resource, number)``, spelled out because seeding calls it a million times."""
    key = f"{salt}\x1f{integration}\x1f{resource}\x1f{number}".encode()
    return blake2b(key, digest_size=ID_LENGTH).digest().translate(TO_BASE58).decode()


def remote_id(number: int) -> str:
    """The id in the "remote system": numeric like many ATSs', and never equal to a Kombo id."""
    return str(10_000 + number)


# -- shared vocabulary ---------------------------------------------------------------------------------------------

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Ben", "Carla", "Chen", "Dana", "Diego", "Elif", "Emma", "Farid", "Grace", "Hana", "Ivan",
    "Jonas", "Julia", "Kai", "Lea", "Liam", "Lina", "Malik", "Maria", "Mateo", "Mia", "Nina", "Noah", "Olga", "Omar",
    "Paul", "Priya", "Rosa", "Sami", "Sara", "Tariq", "Tom", "Uma", "Vera", "Yuki", "Zoe", "Zeynep",
)  # fmt: skip
LAST_NAMES = (
    "Adler", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoffmann", "Ito", "Jansen", "Kowalski",
    "Larsen", "Meyer", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Schmidt", "Tanaka", "Urban", "Vogel", "Wagner",
    "Xu", "Yilmaz", "Zimmermann", "Nguyen", "Silva", "Murphy", "Kim",
)  # fmt: skip
PLACES = (
    # city, country (ISO 3166-1 alpha-2), state, zip code, street
    ("Berlin", "DE", "Berlin", "10115", "Invalidenstraße 12"),
    ("Munich", "DE", "Bavaria", "80331", "Marienplatz 1"),
    ("Paris", "FR", "Île-de-France", "75002", "12 Rue de la Paix"),
    ("London", "GB", "England", "EC1A 1BB", "1 King Street"),
    ("Amsterdam", "NL", "North Holland", "1012 JS", "Damrak 70"),
    ("New York", "US", "NY", "10001", "350 5th Avenue"),
    ("Austin", "US", "TX", "73301", "500 Congress Ave"),
    ("Toronto", "CA", "ON", "M5H 2N2", "100 Queen St W"),
)
DEPARTMENTS = ("Engineering", "Sales", "Marketing", "Finance", "People", "Operations", "Support", "Product")
JOB_TITLES = (
    "Software Engineer", "Account Executive", "Product Manager", "Data Analyst", "Recruiter", "Designer",
    "Support Specialist", "Controller", "Marketing Manager", "Site Reliability Engineer",
)  # fmt: skip
COMPANIES = ("Initech", "Globex", "Umbrella", "Hooli", "Vandelay", "Stark Industries", "Wayne Enterprises", None)
SOURCES = ("LinkedIn", "Referral", "Career Page", "Indeed", "Agency", None)


@lru_cache(maxsize=256)
def _domain(integration: str) -> str:
    """An email domain from the integration id, e.g. ``sim:acme`` -> ``acme.example.com``."""
    slug = "".join(c for c in integration.rpartition(":")[2].lower() if c.isascii() and c.isalnum()) or "sim"
    return f"{slug}.example.com"


def _person(salt: int, integration: str, resource: str, number: int) -> tuple[str, str, str]:
    """First name, last name and a unique work email of the person behind record ``number``.

    Seeding computes this for every record (for the emails index), hence one small hash instead of a Dice.
    """
    draw = blake2b(f"{salt}\x1f{integration}\x1f{resource}\x1f{number}\x1fperson".encode(), digest_size=8).digest()
    first = FIRST_NAMES[int.from_bytes(draw[:4], "big") % len(FIRST_NAMES)]
    last = LAST_NAMES[int.from_bytes(draw[4:], "big") % len(LAST_NAMES)]
    return first, last, f"{first}.{last}.{number}@{_domain(integration)}".lower()


def _address(dice: Dice) -> dict[str, Any]:
    city, country, state, zip_code, street = dice.pick(PLACES)
    return {
        "city": city,
        "country": country,
        "raw": f"{street}, {zip_code} {city}, {country}",
        "state": state,
        "street_1": street,
        "street_2": None,
        "zip_code": zip_code,
    }


def _integration_fields(dice: Dice, owner_id: str) -> list[dict[str, Any]]:
    if not dice.chance(0.5):
        return []
    return [
        {
            "id": kombo_id(owner_id, "integration_field"),
            "key": "preferred_language",
            "type": "CUSTOM",
            "value": None,  # the spec types an integration field's value as null
            "label": "Preferred language",
        }
    ]


def _times(dice: Dice, changed_ms: int) -> tuple[int, int]:
    """(remote_created, remote_updated) in ms: created up to two years before the record last changed."""
    created = changed_ms - dice.between(1, 730) * DAY_MS
    return created, changed_ms - dice.between(0, 3_600_000)


def _changed(current: Any, options: tuple[Any, ...], rng: random.Random) -> Any:
    """A value from ``options`` different from ``current``."""
    return rng.choice([o for o in options if o != current])


# -- ats/users -----------------------------------------------------------------------------------------------------

SYSTEM_ROLES = (
    ("1", "Admin", "SYSTEM", "ADMIN"),
    ("2", "Recruiter", "SYSTEM", "RECRUITER"),
    ("3", "Hiring Manager", "JOB", "HIRING_MANAGER"),
    ("4", "Coordinator", "JOB", "COORDINATOR"),
    ("5", "Sourcer", "SYSTEM", "SOURCER"),
    ("6", "Interviewer", "JOB", "INTERVIEWER"),
)
# The spec's nullable enums (``type: [string, null]`` with an ``enum`` lacking null) reject null, so enum fields
# always get a listed value here.


def _system_role(role: tuple[str, str, str, str]) -> dict[str, Any]:
    remote, label, scope, unified = role
    return {"remote_id": remote, "remote_label": label, "scope": scope, "unified_type": unified}


def generate_user(seed: RecordSeed) -> Record:
    dice = Dice(seed.salt, seed.integration, seed.resource, seed.number)
    first, last, email = _person(seed.salt, seed.integration, seed.resource, seed.number)
    active = dice.chance(0.9)
    number_of_roles = dice.between(0, 2)
    return {
        "id": record_id(seed.salt, seed.integration, seed.resource, seed.number),
        "remote_id": remote_id(seed.number),
        "first_name": first,
        "last_name": last,
        "email": email,
        "status": "ACTIVE" if active else "INACTIVE",
        "remote_data": {"/users": {"id": 10_000 + seed.number, "name": f"{first} {last}", "active": active}},
        "changed_at": format_timestamp_ms(seed.changed_ms),
        "remote_deleted_at": None,
        "system_roles": [_system_role(r) for r in dice.sample(SYSTEM_ROLES, number_of_roles)],
    }


def update_user(record: Record, change: Change) -> Record:
    which = change.rng.choice(("first_name", "last_name", "email", "status"))
    if which == "first_name":
        return {"first_name": _changed(record["first_name"], FIRST_NAMES, change.rng)}
    if which == "last_name":
        return {"last_name": _changed(record["last_name"], LAST_NAMES, change.rng)}
    if which == "email":
        local, _, domain = str(record["email"] or f"user@{_domain('')}").partition("@")
        return {"email": f"{local.split('+')[0]}+{change.rng.randrange(1_000_000)}@{domain}"}
    return {"status": "INACTIVE" if record["status"] == "ACTIVE" else "ACTIVE"}


def toggle_system_role(record: Record, change: Change) -> list[Any]:
    """Add or remove one role: a nested-only change."""
    role = _system_role(change.rng.choice(SYSTEM_ROLES))
    roles = [r for r in record["system_roles"] if r["remote_id"] != role["remote_id"]]
    if len(roles) == len(record["system_roles"]):
        roles.append(role)
    return roles


def user_index_keys(seed: RecordSeed) -> dict[str, list[str]]:
    email = _person(seed.salt, seed.integration, seed.resource, seed.number)[2]
    return {"remote_ids": [remote_id(seed.number)], "emails": [email]}


USERS = ResourceSpec(
    name="ats/users",
    nested_field="system_roles",
    generate=generate_user,
    random_update=update_user,
    change_nested=toggle_system_role,
    seed_index_keys=user_index_keys,
    filters={
        "remote_ids": REMOTE_IDS,
        "emails": AnyOf("emails", top("email"), case_insensitive=True, indexed=True),
    },
)

# -- ats/candidates ------------------------------------------------------------------------------------------------

TAGS = ("Top Talent", "Remote", "Relocation", "Silver Medalist", "Referral", "Do Not Contact", "Visa Needed")
STAGE_NAMES = ("Applied", "Screening", "Interview", "Offer", "Hired")
OUTCOMES = ("PENDING", "PENDING", "PENDING", "HIRED", "DECLINED")


def _tag(integration: str, salt: int, name: str) -> dict[str, Any]:
    return {"id": kombo_id(salt, integration, "tag", name), "name": name, "remote_id": str(TAGS.index(name) + 1)}


def _job_ref(seed: RecordSeed, job_number: int) -> dict[str, Any]:
    dice = Dice(seed.salt, seed.integration, "ats/jobs", job_number)
    return {
        "id": record_id(seed.salt, seed.integration, "ats/jobs", job_number),
        "name": f"{dice.pick(JOB_TITLES)} ({dice.pick(DEPARTMENTS)})",
        "remote_id": remote_id(job_number),
    }


def _application(seed: RecordSeed, dice: Dice, index: int) -> dict[str, Any]:
    app_number = seed.number * 4 + index
    created, updated = _times(dice, seed.changed_ms)
    outcome = dice.pick(OUTCOMES)
    stage_index = 4 if outcome == "HIRED" else dice.between(0, 3)
    job_number = dice.below(max(seed.population.get("ats/jobs", 0), 1))
    job = _job_ref(seed, job_number)
    return {
        "id": kombo_id(seed.salt, seed.integration, "ats/applications", app_number),
        "remote_id": remote_id(app_number),
        "outcome": outcome,
        "rejection_reason_name": "Position filled" if outcome == "DECLINED" else None,
        "rejected_at": format_timestamp_ms(updated) if outcome == "DECLINED" else None,
        "remote_url": f"https://ats.example.com/applications/{remote_id(app_number)}",
        "changed_at": format_timestamp_ms(updated),
        "remote_created_at": format_timestamp_ms(created),
        "remote_updated_at": format_timestamp_ms(updated),
        "current_stage": {
            "id": kombo_id(seed.salt, seed.integration, "stage", job_number, stage_index),
            "name": STAGE_NAMES[stage_index],
            "remote_id": str(stage_index + 1),
            "index": stage_index,
        },
        "job": job,
    }


def _private_email(first: str, last: str, number: int) -> str:
    return f"{first}.{last}.{number}@mail.example.org".lower()


def generate_candidate(seed: RecordSeed) -> Record:
    dice = Dice(seed.salt, seed.integration, seed.resource, seed.number)
    first, last, _ = _person(seed.salt, seed.integration, seed.resource, seed.number)
    ident = record_id(seed.salt, seed.integration, seed.resource, seed.number)
    created, updated = _times(dice, seed.changed_ms)
    email = _private_email(first, last, seed.number)
    return {
        "id": ident,
        "remote_id": remote_id(seed.number),
        "first_name": first,
        "last_name": last,
        "company": dice.pick(COMPANIES),
        "title": dice.pick(JOB_TITLES),
        "confidential": dice.chance(0.05),
        "source": dice.pick(SOURCES),
        "phone_numbers": [{"phone_number": f"+49 30 {dice.between(1_000_000, 9_999_999)}", "type": "MOBILE"}],
        "email_addresses": [{"email_address": email, "type": "PERSONAL"}],
        "social_media": [
            {
                "link": f"https://www.linkedin.com/in/{first.lower()}-{last.lower()}-{seed.number}",
                "type": "LINKEDIN",
                "username": None,
            }
        ],
        "location": _address(dice),
        "custom_fields": {"desired_salary": dice.between(40, 150) * 1000},
        "integration_fields": _integration_fields(dice, ident),
        "remote_url": f"https://ats.example.com/candidates/{remote_id(seed.number)}",
        "remote_created_at": format_timestamp_ms(created),
        "remote_updated_at": format_timestamp_ms(updated),
        "remote_data": {"/candidates": {"id": 10_000 + seed.number, "name": f"{first} {last}"}},
        "changed_at": format_timestamp_ms(seed.changed_ms),
        "remote_deleted_at": None,
        "applications": [_application(seed, dice, i) for i in range(dice.between(1, 2))],
        "tags": [_tag(seed.integration, seed.salt, t) for t in dice.sample(TAGS, dice.between(0, 2))],
    }


def update_candidate(record: Record, change: Change) -> Record:
    which = change.rng.choice(("title", "company", "first_name", "source"))
    options = {"title": JOB_TITLES, "company": COMPANIES, "first_name": FIRST_NAMES, "source": SOURCES}[which]
    return {
        which: _changed(record[which], options, change.rng),
        "remote_updated_at": format_timestamp_ms(change.now_ms),
    }


def toggle_tag(record: Record, change: Change) -> list[Any]:
    """Add or remove one tag: a nested-only change ("Added/Removed: yes" in the spec's table)."""
    name = change.rng.choice(TAGS)
    tags = [t for t in record["tags"] if t["name"] != name]
    if len(tags) == len(record["tags"]):
        tags.append(_tag(change.integration, change.salt, name))
    return tags


def candidate_index_keys(seed: RecordSeed) -> dict[str, list[str]]:
    first, last, _ = _person(seed.salt, seed.integration, seed.resource, seed.number)
    return {"remote_ids": [remote_id(seed.number)], "email": [_private_email(first, last, seed.number)]}


CANDIDATES = ResourceSpec(
    name="ats/candidates",
    nested_field="tags",
    generate=generate_candidate,
    random_update=update_candidate,
    change_nested=toggle_tag,
    seed_index_keys=candidate_index_keys,
    filters={
        "remote_ids": REMOTE_IDS,
        "email": AnyOf(
            "email", nested("email_addresses", "email_address"), multiple=False, case_insensitive=True, indexed=True
        ),
        "job_ids": AnyOf("job_ids", nested("applications", "job", "id")),
        "first_name": AnyOf("first_name", top("first_name"), multiple=False, case_insensitive=True),
        "last_name": AnyOf("last_name", top("last_name"), multiple=False, case_insensitive=True),
    },
)

# -- ats/jobs ------------------------------------------------------------------------------------------------------

JOB_STATUSES = ("OPEN", "CLOSED", "DRAFT", "ARCHIVED")
JOB_EMPLOYMENT_TYPES = ("FULL_TIME", "PART_TIME", "CONTRACT", "SEASONAL", "INTERNSHIP")
VISIBILITIES = ("PUBLIC", "INTERNAL", "UNLISTED", "CONFIDENTIAL")
HIRING_TEAM_ROLES = ("RECRUITER", "HIRING_MANAGER", "COORDINATOR", "SOURCER", "INTERVIEWER")


def _hiring_team_member(seed: RecordSeed, user_number: int, role: str) -> dict[str, Any]:
    first, last, email = _person(seed.salt, seed.integration, "ats/users", user_number)
    return {
        "id": record_id(seed.salt, seed.integration, "ats/users", user_number),
        "remote_id": remote_id(user_number),
        "first_name": first,
        "last_name": last,
        "email": email,
        "hiring_team_roles": [role],
        "job_roles": [
            {"remote_id": str(HIRING_TEAM_ROLES.index(role) + 10), "remote_label": role.replace("_", " ").title(),
             "scope": "JOB", "unified_type": role}
        ],
    }  # fmt: skip


def _screening_question(seed: RecordSeed, index: int) -> dict[str, Any]:
    question_id = kombo_id(seed.salt, seed.integration, "screening_question", seed.number, index)
    formats: list[dict[str, Any]] = [
        {"display_type": "MULTI_LINE", "max_length": 2000, "type": "TEXT"},
        {
            "display_type": "DROPDOWN",
            "options": [
                {"id": kombo_id(question_id, answer), "remote_id": str(i + 1), "name": answer}
                for i, answer in enumerate(("Yes", "No"))
            ],
            "type": "SINGLE_SELECT",
        },
        {"type": "BOOLEAN"},
    ]
    titles = ("Why do you want to join us?", "Do you need a visa?", "Can you start within a month?")
    return {
        "id": question_id,
        "remote_id": str(index + 1),
        "title": titles[index % len(titles)],
        "description": "Your answer is voluntary." if index == 2 else None,
        "format": formats[index % len(formats)],
        "category": "DEMOGRAPHIC" if index == 2 else "EEO",
        "index": index,
        "required": index == 0,
        "precondition_question_id": None,
        "precondition_options": None,
    }


def _stage(seed: RecordSeed, index: int, name: str) -> dict[str, Any]:
    return {
        "id": kombo_id(seed.salt, seed.integration, "stage", seed.number, index),
        "remote_id": str(index + 1),
        "name": name,
        "remote_data": None,
        "index": index,
    }


def _job_posting(ident: str, number: int, title: str, department: str, post_url: str) -> dict[str, Any]:
    return {
        "id": kombo_id(ident, "posting"),
        "remote_id": remote_id(number),
        "title": title,
        "description_html": f"<p>Join our {department} team as a {title}.</p>",
        "status": "ACTIVE",
        "visibility": "PUBLIC",
        "url": post_url,
        "remote_data": None,
    }


def _hiring_team(seed: RecordSeed, dice: Dice) -> list[dict[str, Any]]:
    users = max(seed.population.get("ats/users", 0), 1)
    return [
        _hiring_team_member(seed, dice.below(users), role)
        for role in dice.sample(HIRING_TEAM_ROLES[:2], dice.between(1, 2))
    ]


def generate_job(seed: RecordSeed) -> Record:
    dice = Dice(seed.salt, seed.integration, seed.resource, seed.number)
    ident = record_id(seed.salt, seed.integration, seed.resource, seed.number)
    title, department = dice.pick(JOB_TITLES), dice.pick(DEPARTMENTS)
    created, updated = _times(dice, seed.changed_ms)
    status = dice.pick(JOB_STATUSES)
    salary_from = dice.between(40, 120) * 1000
    post_url = f"https://jobs.example.com/{remote_id(seed.number)}" if status == "OPEN" else None
    return {
        "id": ident,
        "remote_id": remote_id(seed.number),
        "name": f"{title} ({department})",
        "job_code": f"JOB-{seed.number:05d}",
        "description": f"<p>We are looking for a {title} to join our {department} team.</p>",
        "confidential": False,
        "weekly_hours": dice.pick((40.0, 38.5, 30.0, 20.0)),
        "employment_type": dice.pick(JOB_EMPLOYMENT_TYPES),
        "status": status,
        "visibility": dice.pick(VISIBILITIES),
        "category": department,
        "department": department,
        "post_url": post_url,
        "experience_level": dice.pick(("Junior", "Mid", "Senior", None)),
        "remote_work_status": dice.pick(("REMOTE", "HYBRID", "ON_SITE")),
        "salary_amount": None,
        "salary_amount_from": float(salary_from),
        "salary_amount_to": float(salary_from + 20_000),
        "salary_currency": "EUR",
        "salary_period": "YEAR",
        "location": _address(dice),
        "custom_fields": {"cost_center": f"CC-{dice.between(100, 999)}"},
        "integration_fields": _integration_fields(dice, ident),
        "remote_url": f"https://ats.example.com/jobs/{remote_id(seed.number)}",
        "opened_at": format_timestamp_ms(created) if status != "DRAFT" else None,
        "closed_at": format_timestamp_ms(updated) if status in ("CLOSED", "ARCHIVED") else None,
        "remote_created_at": format_timestamp_ms(created),
        "remote_updated_at": format_timestamp_ms(updated),
        "contact_id": None,
        "remote_data": {"/jobs": {"id": 10_000 + seed.number, "title": title}},
        "changed_at": format_timestamp_ms(seed.changed_ms),
        "remote_deleted_at": None,
        "stages": [_stage(seed, index, name) for index, name in enumerate(STAGE_NAMES)],
        "screening_questions": [_screening_question(seed, i) for i in range(dice.between(0, 2))],
        "job_postings": [_job_posting(ident, seed.number, title, department, post_url)] if post_url else [],
        "hiring_team": _hiring_team(seed, dice),
    }


def update_job(record: Record, change: Change) -> Record:
    which = change.rng.choice(("name", "status", "weekly_hours"))
    if which == "name":
        name = f"{_changed(record['name'].split(' (')[0], JOB_TITLES, change.rng)} ({record['department']})"
        return {"name": name, "remote_updated_at": format_timestamp_ms(change.now_ms)}
    if which == "status":
        status = _changed(record["status"], JOB_STATUSES, change.rng)
        closed = format_timestamp_ms(change.now_ms) if status in ("CLOSED", "ARCHIVED") else None
        return {"status": status, "closed_at": closed, "remote_updated_at": format_timestamp_ms(change.now_ms)}
    return {"weekly_hours": _changed(record["weekly_hours"], (40.0, 38.5, 30.0, 20.0), change.rng)}


def change_hiring_team(record: Record, change: Change) -> list[Any]:
    """Add or remove one hiring team member: a nested-only change."""
    team = list(record["hiring_team"])
    if len(team) > 1 and change.rng.random() < 0.5:
        team.pop(change.rng.randrange(len(team)))
        return team
    number = change.rng.randrange(1_000_000)
    first, last = change.rng.choice(FIRST_NAMES), change.rng.choice(LAST_NAMES)
    role = change.rng.choice(HIRING_TEAM_ROLES)
    team.append(
        {
            "id": kombo_id(record["id"], "hiring_team", number),
            "remote_id": remote_id(number),
            "first_name": first,
            "last_name": last,
            "email": f"{first}.{last}.{number}@example.com".lower(),
            "hiring_team_roles": [role],
            "job_roles": [],
        }
    )
    return team


JOBS = ResourceSpec(
    name="ats/jobs",
    nested_field="hiring_team",
    generate=generate_job,
    random_update=update_job,
    change_nested=change_hiring_team,
    seed_index_keys=lambda seed: {"remote_ids": [remote_id(seed.number)]},
    filters={
        "remote_ids": REMOTE_IDS,
        "job_codes": AnyOf("job_codes", top("job_code")),
        "post_url": AnyOf("post_url", top("post_url"), multiple=False),
        "status": AnyOf("status", top("status"), multiple=False, allowed=frozenset(JOB_STATUSES)),
        "statuses": AnyOf("statuses", top("status"), allowed=frozenset(JOB_STATUSES)),
        "employment_types": AnyOf("employment_types", top("employment_type"), allowed=frozenset(JOB_EMPLOYMENT_TYPES)),
        "visibilities": AnyOf("visibilities", top("visibility"), allowed=frozenset(VISIBILITIES)),
        "remote_created_after": OnOrAfter("remote_created_after", "remote_created_at"),
        "name_contains": Contains("name_contains", "name"),
    },
)

# -- hris/employees ------------------------------------------------------------------------------------------------

EMPLOYMENT_STATUSES = ("ACTIVE", "PENDING", "INACTIVE", "LEAVE")
HRIS_EMPLOYMENT_TYPES = ("FULL_TIME", "PART_TIME", "CONTRACT", "INTERNSHIP", "WORKING_STUDENT")
GROUPS = (("Engineering", "DEPARTMENT"), ("Sales", "DEPARTMENT"), ("Platform", "TEAM"), ("CC-100", "COST_CENTER"))
LEGAL_ENTITIES = ("Acme GmbH", "Acme Inc.", "Acme Ltd")
WORK_LOCATIONS = ("Headquarters", "Remote", "Satellite Office")


def _group(salt: int, integration: str, index: int) -> dict[str, Any]:
    name, kind = GROUPS[index]
    return {"id": kombo_id(salt, integration, "group", index), "remote_id": str(index + 1), "name": name, "type": kind}


def _employment(employee_id: str, salt: int, dice: Dice, changed_ms: int) -> dict[str, Any]:
    return {
        "id": kombo_id(salt, employee_id, "employment", 0),
        "remote_id": dice.id()[:8],
        "employee_id": employee_id,
        "job_title": dice.pick(JOB_TITLES),
        "pay_rate": float(dice.between(30, 140) * 1000),
        "pay_period": "YEAR",
        "pay_frequency": "MONTHLY",
        "employment_type": "FULL_TIME",
        "pay_currency": "EUR",
        "effective_date": format_timestamp_ms(changed_ms - dice.between(30, 700) * DAY_MS),
        "changed_at": format_timestamp_ms(changed_ms),
        "remote_deleted_at": None,
        "remote_data": None,
        "custom_fields": None,
        "integration_fields": [],
    }


def _manager(seed: RecordSeed) -> dict[str, Any] | None:
    if seed.number == 0:
        return None
    number = (seed.number - 1) // 5  # a tree: every employee but the first reports to an earlier one
    first, last, email = _person(seed.salt, seed.integration, seed.resource, number)
    return {
        "first_name": first,
        "last_name": last,
        "display_full_name": f"{first} {last}",
        "id": record_id(seed.salt, seed.integration, seed.resource, number),
        "employee_number": f"E{number:06d}",
        "work_email": email,
        "remote_id": remote_id(number),
        "employment_status": "ACTIVE",
        "termination_date": None,
    }


def _bank_account(dice: Dice, holder_name: str) -> dict[str, Any]:
    return {
        "iban": f"DE{dice.between(10, 99)}{dice.between(10**17, 10**18 - 1)}",
        "bic": "DEUTDEFFXXX",
        "account_number": None,
        "holder_name": holder_name,
        "bank_name": "Deutsche Bank",
        "domestic_bank_routing": {"number": "10070000", "type": "DE_BANKLEITZAHL"},
    }


def _vacation_balance(seed: RecordSeed, employee_id: str, dice: Dice) -> dict[str, Any]:
    return {
        "id": kombo_id(employee_id, "time_off_balance", 0),
        "remote_id": None,
        "employee_id": employee_id,
        "type_id": kombo_id(seed.salt, seed.integration, "absence_type", "vacation"),
        "balance": float(dice.between(0, 30)),
        "balance_unit": "DAYS",
        "changed_at": format_timestamp_ms(seed.changed_ms),
        "remote_deleted_at": None,
        "used": float(dice.between(0, 10)),
        "used_unit": "DAYS",
        "remote_data": None,
    }


def _legal_entity(legal_entity_id: str, index: int, dice: Dice) -> dict[str, Any]:
    return {
        "id": legal_entity_id,
        "remote_id": str(index + 1),
        "name": LEGAL_ENTITIES[index],
        "address": _address(dice),
    }


def _work_location(location_id: str, index: int, dice: Dice, created_ms: int) -> dict[str, Any]:
    return {
        "id": location_id,
        "remote_id": str(index + 1),
        "name": WORK_LOCATIONS[index],
        "address": _address(dice),
        "type": "OFFICE" if index != 1 else "REMOTE",
        "changed_at": format_timestamp_ms(created_ms),
        "remote_deleted_at": None,
        "remote_data": None,
    }


def generate_employee(seed: RecordSeed) -> Record:
    dice = Dice(seed.salt, seed.integration, seed.resource, seed.number)
    ident = record_id(seed.salt, seed.integration, seed.resource, seed.number)
    first, last, email = _person(seed.salt, seed.integration, seed.resource, seed.number)
    created, _ = _times(dice, seed.changed_ms)
    entity_index, location_index = dice.below(len(LEGAL_ENTITIES)), dice.below(len(WORK_LOCATIONS))
    legal_entity_id = kombo_id(seed.salt, seed.integration, "legal_entity", entity_index)
    location_id = kombo_id(seed.salt, seed.integration, "work_location", location_index)
    status = dice.pick(("ACTIVE",) * 8 + ("LEAVE", "INACTIVE"))
    manager = _manager(seed)
    start_ms = created + DAY_MS
    return {
        "id": ident,
        "remote_id": remote_id(seed.number),
        "employee_number": f"E{seed.number:06d}",
        "first_name": first,
        "last_name": last,
        "nationality": dice.pick(("German", "French", "British", "American", None)),
        "display_full_name": f"{first} {last}",
        "job_title": dice.pick(JOB_TITLES),
        "work_email": email,
        "personal_email": _private_email(first, last, seed.number),
        "mobile_phone_number": f"+49 151 {dice.between(1_000_000, 9_999_999)}",
        "ssn": None,
        "tax_id": f"{dice.between(10**10, 10**11 - 1)}",
        "gender": dice.pick(("MALE", "FEMALE", "NON_BINARY", "NOT_SPECIFIED")),
        "ethnicity": None,
        "marital_status": dice.pick(("SINGLE", "MARRIED", "NOT_MARRIED", None)),
        "employment_status": status,
        "employment_type": dice.pick(HRIS_EMPLOYMENT_TYPES),
        "weekly_hours": dice.pick((40.0, 32.0, 20.0)),
        "avatar": None,
        "work_location_id": location_id,
        "legal_entity_id": legal_entity_id,
        "manager_id": manager["id"] if manager else None,
        "home_address": _address(dice),
        "bank_accounts": [_bank_account(dice, f"{first} {last}")],
        "date_of_birth": format_timestamp_ms(created - dice.between(20 * 365, 60 * 365) * DAY_MS),
        "start_date": format_timestamp_ms(start_ms),
        "termination_date": format_timestamp_ms(seed.changed_ms) if status == "INACTIVE" else None,
        "remote_created_at": format_timestamp_ms(created),
        "changed_at": format_timestamp_ms(seed.changed_ms),
        "remote_deleted_at": None,
        "custom_fields": {"shirt_size": dice.pick(("S", "M", "L", "XL"))},
        "integration_fields": _integration_fields(dice, ident),
        "remote_data": {"/employees": {"id": 10_000 + seed.number, "firstName": first, "lastName": last}},
        "employments": [_employment(ident, seed.salt, dice, seed.changed_ms)],
        "time_off_balances": [_vacation_balance(seed, ident, dice)],
        "manager": manager,
        "groups": [_group(seed.salt, seed.integration, i) for i in dice.sample(range(len(GROUPS)), 2)],
        "legal_entity": _legal_entity(legal_entity_id, entity_index, dice),
        "teams": [_group(seed.salt, seed.integration, 2)],
        "work_location": _work_location(location_id, location_index, dice, created),
    }


def update_employee(record: Record, change: Change) -> Record:
    which = change.rng.choice(("job_title", "first_name", "mobile_phone_number", "weekly_hours"))
    if which == "mobile_phone_number":
        return {which: f"+49 151 {change.rng.randrange(1_000_000, 10_000_000)}"}
    if which == "first_name":
        first = _changed(record["first_name"], FIRST_NAMES, change.rng)
        return {"first_name": first, "display_full_name": f"{first} {record['last_name']}"}
    options = {"job_title": JOB_TITLES, "weekly_hours": (40.0, 32.0, 20.0)}[which]
    return {which: _changed(record[which], options, change.rng)}


def change_employment(record: Record, change: Change) -> list[Any]:
    """A raise: the linked employment changes (its own ``changed_at`` moves), the employee's does not."""
    employments = [dict(e) for e in record["employments"]]
    employment = employments[change.rng.randrange(len(employments))]
    employment["pay_rate"] = float(employment["pay_rate"] or 0) + change.rng.randrange(1, 10) * 1000
    employment["changed_at"] = format_timestamp_ms(change.now_ms)
    return employments


def _group_ids(record: Record) -> list[Any]:
    return [g.get("id") for g in (record.get("groups") or []) + (record.get("teams") or [])]


def employee_index_keys(seed: RecordSeed) -> dict[str, list[str]]:
    first, last, email = _person(seed.salt, seed.integration, seed.resource, seed.number)
    return {
        "remote_ids": [remote_id(seed.number)],
        "work_emails": [email],
        "personal_emails": [_private_email(first, last, seed.number)],
    }


EMPLOYEES = ResourceSpec(
    name="hris/employees",
    nested_field="employments",
    generate=generate_employee,
    random_update=update_employee,
    change_nested=change_employment,
    seed_index_keys=employee_index_keys,
    filters={
        "remote_ids": REMOTE_IDS,
        "employment_status": AnyOf(
            "employment_status", top("employment_status"), multiple=False, allowed=frozenset(EMPLOYMENT_STATUSES)
        ),
        "employment_statuses": AnyOf(
            "employment_statuses", top("employment_status"), allowed=frozenset(EMPLOYMENT_STATUSES)
        ),
        "group_ids": AnyOf("group_ids", _group_ids),
        "legal_entity_ids": AnyOf("legal_entity_ids", top("legal_entity_id")),
        "work_location_ids": AnyOf("work_location_ids", top("work_location_id")),
        "work_emails": AnyOf("work_emails", top("work_email"), case_insensitive=True, indexed=True),
        "personal_emails": AnyOf("personal_emails", top("personal_email"), case_insensitive=True, indexed=True),
        "custom_fields": CustomField("custom_fields"),
    },
)

RESOURCES: dict[str, ResourceSpec] = {spec.name: spec for spec in (USERS, CANDIDATES, JOBS, EMPLOYEES)}
"""Every resource the simulator serves, by its path under ``/v1``."""

PROTECTED_FIELDS = frozenset({"id", "changed_at", "remote_deleted_at"})
"""Fields an update may not set: they are the simulator's to manage."""
