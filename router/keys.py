"""The Redis key schema: every key abgate reads or writes is named here, and only here.

Keys of one experiment share the hash tag ``{<experiment>}`` so that the scripts that touch
several of them at once stay within one slot. `SCHEMA` below describes every key; the table in
docs/redis.md is its rendering (`python -m router.keys` prints it, and a test holds the two
together).

The Lua scripts build the per-experiment and request-index keys inside Redis; they get the same
names from `LUA_KEYS`, a prelude of Lua functions generated from the constants below, so a
script never spells a key itself.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "abgate:"

# -- configuration (control plane) ----------------------------------------------------------

CONFIG = PREFIX + "config"  # JSON {"version": n, "experiments": {name: experiment}}
CONFIG_VERSION = PREFIX + "config:version"  # n, for cheap polling
CONFIG_CHANNEL = PREFIX + "config:changes"  # pub/sub channel; the message is the new version
AUDIT = PREFIX + "audit"  # stream of changes: actor, action, experiment, before, after, reason
CONTROLLER_LEADER = PREFIX + "controller:leader"  # the controller's leader lock (string)
EVAL_REPORTS = PREFIX + "eval:reports"  # hash: treatment model -> registered eval report

# -- LoRA adapters and gateway instances ------------------------------------------------------

ADAPTERS = PREFIX + "adapters"  # hash: adapter name -> JSON record (without replica states)
_ADAPTER_LOCK = PREFIX + "adapters:lock:"  # + name: one load or unload at a time
_ADAPTER_STATE = PREFIX + "adapters:state:"  # + name: hash replica URL -> JSON state
RECONCILER = PREFIX + "reconciler"  # which gateway instance reconciles adapters this round
INFLIGHT = PREFIX + "inflight"  # hash: gateway instance id -> expiry and requests per model

# -- per request ----------------------------------------------------------------------------

_REQUEST = PREFIX + "req:"  # + request id: "<arm initial>|<experiment>|<unit>" (feedback window)


def adapter_lock(name: str) -> str:
    return _ADAPTER_LOCK + name


def adapter_state(name: str) -> str:
    return _ADAPTER_STATE + name


def request(request_id: str) -> str:
    return _REQUEST + request_id


# -- per experiment (one hash tag) ----------------------------------------------------------


def experiment_tag(name: str) -> str:
    """The common prefix of an experiment's keys, hash tag included."""
    return f"{PREFIX}{{{name}}}:"


def events(name: str) -> str:
    """Stream of the experiment's recorded requests (capped)."""
    return experiment_tag(name) + "events"


def arm_totals(name: str, arm: str) -> str:
    """Hash of per-arm aggregates: requests, errors, latency sums, tokens, feedback counts,
    ``units_over_cap`` (requests of units the arm's full unit totals did not store)."""
    return f"{experiment_tag(name)}arm:{arm}"


def unit_sums(name: str, arm: str) -> str:
    """Hash of the sums over units: n, moved_in, s1:<field>, s2:<field>, x:<num>|<den>,
    nz:<den>."""
    return f"{experiment_tag(name)}units:{arm}"


def period_sums(name: str, arm: str) -> str:
    """Hash of the sums over units per period of the experiment: ``<period>:n``,
    ``<period>:s1:<field>``, ... (the fields of `unit_sums` after ``<period>:``, without
    ``moved_in``) and the period's latency histogram ``<period>:lh:<k>``. One key per arm,
    whatever the number of periods."""
    return f"{experiment_tag(name)}periods:{arm}"


def periods(name: str) -> str:
    """Hash of the experiment's periods: period -> JSON ``{"started_at", "share", "treatment"}``
    (router/control/store.py writes it with every change that starts a period)."""
    return experiment_tag(name) + "periods"


def unit_totals(name: str, arm: str) -> str:
    """Hash of every unit's totals in one arm: field = unit id, value = its encoded totals
    (router/signals/lua.py). One key per arm, so that the end of the experiment expires a
    handful of keys, however many units it saw; at most ``ABGATE_MAX_UNITS_PER_ARM`` units."""
    return f"{experiment_tag(name)}unit:{arm}"


def minute(name: str, arm: str, epoch_minute: int | str) -> str:
    """Hash of one arm's counters in one minute (expires after the minute retention)."""
    return f"{experiment_tag(name)}minute:{arm}:{epoch_minute}"


def feedback_seen(name: str, request_id: str) -> str:
    """Set of the signals already counted for one request (each counts once)."""
    return f"{experiment_tag(name)}fb:{request_id}"


def last_prompt(name: str, unit: str) -> str:
    """Hash of a unit's last prompt fingerprint, for implicit `regenerated` signals."""
    return f"{experiment_tag(name)}last:{unit}"


def capture(name: str, request_id: str) -> str:
    """Hash of one captured exchange: ``item`` (JSON) and ``fb:<signal>`` per feedback."""
    return f"{experiment_tag(name)}cap:{request_id}"


def captures(name: str) -> str:
    """List of captured request ids, newest first, trimmed to the capture's ``max_items``."""
    return experiment_tag(name) + "captures"


def decisions(name: str) -> str:
    """Stream of the controller's evaluations of the experiment."""
    return experiment_tag(name) + "decisions"


def controller_step(name: str) -> str:
    """The controller's ramp step (JSON): share, start time, unit counts at the start."""
    return experiment_tag(name) + "ctl"


def controller_looks(name: str) -> str:
    """The controller's look memory (JSON, analysis/looks.py): per test its fixed mixing scales,
    running minimum p-value and intersected intervals, for one treatment model since one
    resume."""
    return experiment_tag(name) + "looks"


def ended(name: str) -> str:
    """Hash written when the experiment ends or is deleted (router/control/retention.py):
    ``at`` (when), ``until`` (when its per-unit totals and event stream expire), ``deleted``."""
    return experiment_tag(name) + "ended"


# The same names for Lua: `tag` is `exp_tag(experiment)`. Suffixes match the functions above
# (tests/router/test_keys.py checks both against each other on a real redis-server).
LUA_KEYS = f"""
local function exp_tag(name) return '{PREFIX}{{' .. name .. '}}:' end
local function request_key(rid) return '{_REQUEST}' .. rid end
local function arm_key(tag, arm) return tag .. 'arm:' .. arm end
local function unit_sums_key(tag, arm) return tag .. 'units:' .. arm end
local function unit_key(tag, arm) return tag .. 'unit:' .. arm end
local function periods_key(tag, arm) return tag .. 'periods:' .. arm end
local function minute_key(tag, arm, m) return tag .. 'minute:' .. arm .. ':' .. m end
local function events_key(tag) return tag .. 'events' end
local function feedback_key(tag, rid) return tag .. 'fb:' .. rid end
local function last_key(tag, unit) return tag .. 'last:' .. unit end
local function capture_key(tag, rid) return tag .. 'cap:' .. rid end
local function captures_key(tag) return tag .. 'captures' end
local function ended_key(tag) return tag .. 'ended' end
"""


class KeyDoc(NamedTuple):
    pattern: str
    type: str
    lifetime: str
    written_by: str
    content: str


_KEPT = "kept while the experiment exists (its report reads it); deleted with it"
_ENDED = ("no TTL while the experiment is live; TTL = ended retention from its end; deleted "
          "with it")  # fmt: skip

SCHEMA: tuple[KeyDoc, ...] = (
    KeyDoc(CONFIG, "string", "kept (the configuration)", "config store",
           'JSON `{"version": n, "experiments": {name: experiment}}`'),
    KeyDoc(CONFIG_VERSION, "string", "kept", "config store",
           "`n`, polled by every gateway instance"),
    KeyDoc(CONFIG_CHANNEL, "pub/sub", "no key", "config store",
           "the new version, on every change"),
    KeyDoc(AUDIT, "stream", "kept, capped at about 100,000 entries (`MAXLEN ~`)", "config store",
           "`ts, version, actor, action, experiment, before, after, reason`"),
    KeyDoc(request("<request_id>"), "string", "TTL = feedback window", "event writer",
           "`<a>|<experiment>|<unit>` (`a`: `c` or `t`; `C|<experiment>|` or `T|...` for a "
           "request served after its experiment ended: feedback answered, not counted), about "
           "150 bytes with its key"),
    KeyDoc(events("<exp>"), "stream, capped (`MAXLEN ~`)", _ENDED, "event writer",
           "one entry per proxied request: `request_id, ts, route, arm, unit, model, status, "
           "error, stream, latency_ms, ttft_ms, prompt_tokens, completion_tokens, cost_usd`"),
    KeyDoc(arm_totals("<exp>", "<arm>"), "hash", _KEPT, "event writer, feedback",
           "`requests, errors, client_closed, status_2xx/4xx/5xx, latency_ms_sum, "
           "latency_ms_sq_sum, ttft_count, ttft_ms_sum, ttft_ms_sq_sum, prompt_tokens, "
           "completion_tokens, cost_usd`; `feedback`, `fb:<signal>` (count) and `fv:<signal>` "
           "(value sum); `units_over_cap`: requests whose unit was new to the arm when it "
           "already held `ABGATE_MAX_UNITS_PER_ARM` units (not stored, counted here only); "
           "`lh:<k>`: requests whose latency fell in bucket k, "
           "`k = floor(ln(max(ms, 1)) / ln 1.02)`, at most 800 (at most 801 fields)"),
    KeyDoc(minute("<exp>", "<arm>", "<epoch minute>"), "hash", "TTL = minute retention",
           "event writer, feedback",
           "`requests, errors, client_closed, latency_ms_sum, completion_tokens, feedback`"),
    KeyDoc(unit_totals("<exp>", "<arm>"), "hash", _ENDED, "event writer, feedback",
           "unit id -> the unit's totals (at most `ABGATE_MAX_UNITS_PER_ARM` units, about "
           "350 bytes each), `requests=3,latency_ms=812.5,...` with the fields "
           "`requests, errors, client_closed, latency_ms, ttft_ms, ttft_n, prompt_tokens, "
           "completion_tokens, cost_usd, votes, fb:<signal>, fv:<signal>`, and those of the "
           "unit's current period: `@p=<period>`, `p.<field>=<value>`"),
    KeyDoc(unit_sums("<exp>", "<arm>"), "hash", _KEPT, "event writer, feedback",
           "`n` (distinct units), `moved_in`, `s1:<field>` Σy, `s2:<field>` Σy², "
           "`x:<num>|<den>` Σy·n for every field with `requests`, and `ttft_ms|ttft_n`, "
           "`fb:thumbs_up|votes`, `fb:thumbs_down|votes`; `nz:<den>` units whose `requests`, "
           "`votes` or `ttft_n` is non-zero"),
    KeyDoc(period_sums("<exp>", "<arm>"), "hash", _KEPT, "event writer, feedback",
           "the sums over units of each period: `<period>:n`, `<period>:s1:<field>`, "
           "`<period>:s2:<field>`, `<period>:x:<num>|<den>`, `<period>:nz:<den>`; a unit "
           "counts in the period of its events (its totals field keeps those of its current "
           "period: `@p=<period>`, `p.<field>=<value>`); `<period>:lh:<k>` the latency "
           "histogram of the requests routed in the period"),
    KeyDoc(periods("<exp>"), "hash", _KEPT, "config store",
           "period -> JSON `{started_at, share, treatment}`: a new period starts with every "
           "change of the treatment share or target and with a resume"),
    KeyDoc(feedback_seen("<exp>", "<request_id>"), "set", "TTL = feedback window", "feedback",
           "signals already recorded for the request (duplicates are answered 200)"),
    KeyDoc(last_prompt("<exp>", "<unit>"), "hash", "TTL = regeneration window", "event writer",
           "fingerprint, request id, time and arm of the unit's last prompt"),
    KeyDoc(capture("<exp>", "<request_id>"), "hash", "TTL = capture retention",
           "capture writer", "`item` (the redacted exchange, JSON) and `fb:<signal>` per feedback"),
    KeyDoc(captures("<exp>"), "list",
           "TTL = capture retention, renewed by each capture; deleted with the experiment",
           "capture writer", "captured request ids, newest first, trimmed to `max_items`"),
    KeyDoc(controller_step("<exp>"), "string",
           "TTL = ended retention, renewed by each evaluation; deleted with the experiment",
           "controller", "the ramp step (JSON): share, start time, unit counts at its start"),
    KeyDoc(controller_looks("<exp>"), "string",
           "TTL = ended retention, renewed by each evaluation; deleted with the experiment",
           "controller", "the look memory (JSON): the treatment model and `resumed_at` it "
           "belongs to; per always-valid test (the primary metric, each guardrail) its mixing "
           "scales, fixed at its first look with evidence, the running minimum p-value and the "
           "running intersections of its intervals"),
    KeyDoc(decisions("<exp>"), "stream, capped (`MAXLEN ~` 5,000)", _KEPT, "controller",
           "every evaluation and decision"),
    KeyDoc(ended("<exp>"), "hash",
           "kept while the ended experiment exists; after a deletion, TTL = ended retention",
           "config store", "`at` (when it ended or was deleted), `until` (when the per-unit "
           "totals and the event stream expire), `deleted` (1: events still on their way are "
           "not recorded)"),
    KeyDoc(CONTROLLER_LEADER, "string", "TTL = lock TTL, renewed while held", "controller",
           "the leader's identity (compare-and-renew, compare-and-delete)"),
    KeyDoc(EVAL_REPORTS, "hash", "kept (admin data: one entry per treatment model)",
           "admin API (`abgate eval --register`)",
           "treatment model -> its newest registered eval report"),
    KeyDoc(ADAPTERS, "hash", "kept (admin data: one entry per adapter)", "adapter registry",
           "adapter name -> JSON record (name, path, base model, replica URLs, origin: "
           "admin or server_start)"),
    KeyDoc(adapter_state("<name>"), "hash",
           "kept (one entry per replica of a registered adapter)", "adapter registry",
           "model-server replica URL -> JSON state (`loading`, `ready`, `failed`, `draining`, "
           "`unloaded`, with a reason)"),
    KeyDoc(adapter_lock("<name>"), "string", "TTL 30 s, renewed while held", "adapter registry",
           "one load or unload of the adapter at a time, across gateway instances "
           "(compare-and-renew, compare-and-delete)"),
    KeyDoc(RECONCILER, "string", "TTL = reconcile interval", "gateway instances",
           "which gateway instance reconciles adapters this round"),
    KeyDoc(INFLIGHT, "hash", "TTL = 3 health intervals, renewed by each write",
           "gateway instances",
           "gateway instance id -> `<expiry ms> <JSON {model: requests running}>`, written "
           "every health interval while it runs requests; adapter drains wait for the sum. An "
           "entry past its expiry (3 health intervals, by Redis's clock) is ignored and removed"),
)  # fmt: skip


def markdown_table() -> str:
    """`SCHEMA` as the Markdown table of docs/redis.md."""
    rows = ["| key | type | lifetime | written by | content |", "|---|---|---|---|---|"]
    rows += [
        f"| `{k.pattern}` | {k.type} | {k.lifetime} | {k.written_by} | {k.content} |"
        for k in SCHEMA
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
