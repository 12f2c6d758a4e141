"""Sticky assignment of a unit (user or tenant) to an arm.

Hash version 1 (``abgate-h1``), documented in docs/assignment.md and pinned by the golden
vectors in tests/vectors/assignment.json::

    digest = SHA-256( utf8(salt) || 0x00 || utf8(unit_id) )
    bucket = uint64_big_endian(digest[0:8]) mod 10000
    arm    = "treatment" if bucket < treatment_bps else "control"

The function is pure and platform-independent (never Python's `hash()`). Because the bucket of
a unit never changes, raising the share only moves units from control to treatment, and setting
it to 0 sends everyone to control. Each experiment has its own salt, so experiments are
independent of one another.
"""

from __future__ import annotations

import hashlib
import secrets

from router.dataplane.routing import CompiledExperiment
from router.errors import InvalidRequest
from router.experiments import Arm

HASH_VERSION = 1
BUCKETS = 10_000


def bucket(salt: bytes, unit_id: bytes) -> int:
    """The unit's bucket in [0, 10000) under hash version 1."""
    digest = hashlib.sha256(salt + b"\x00" + unit_id).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def arm_for_bucket(b: int, treatment_bps: int) -> Arm:
    return "treatment" if b < treatment_bps else "control"


def assign(exp: CompiledExperiment, unit_id: str | None) -> Arm:
    """The arm for `unit_id` in `exp`, honouring overrides and the missing-unit policy."""
    if unit_id is None:
        if exp.policy == "reject":
            raise InvalidRequest(
                "this route needs a user id: send one of the headers "
                + ", ".join(h.decode() for h in exp.unit_headers)
                + (" or the body's `user` field" if exp.use_body_user else ""),
                param="user",
            )
        if exp.policy == "random":
            return arm_for_bucket(secrets.randbelow(BUCKETS), exp.bps)
        return "control"
    forced = exp.overrides.get(unit_id)
    if forced is not None:
        return forced
    if exp.bps <= 0:
        return "control"
    if exp.bps >= BUCKETS:
        return "treatment"
    return arm_for_bucket(bucket(exp.salt, unit_id.encode()), exp.bps)
