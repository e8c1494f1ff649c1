"""The rules a device decides by, pure: what happens next given what it knows and the time.

No peewee, no pykka, no MQTT, no threads and no clock: everything comes in as arguments
(the current time too) and the answer is a value. machine.py applies these rules to the
device's state; tests/devices/test_rules.py walks each of them with an explicit clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

OWED_RESEND_MAX_S = 60.0  # an owed OFF is sent again after ack_timeout_s, doubling up to this
FLAP_WINDOW = dt.timedelta(hours=1)  # controller-started runs are counted over this trailing window
FLAP_RECHECK_S = 60.0  # while flagged, whether the window has emptied enough is checked this often

# The pump's own reason for an OFF, as the run it ends: (activation state, reason).
# Its own timer usually wins the race with ours by a few ms: the run is complete.
OFF_REPORT_OUTCOME = {"timer": ("completed", "completed"), "fault": ("failed", "fault")}
OFF_REPORT_DEFAULT = ("stopped", "device_off")


# --- the state shown to people --------------------------------------------------------------
def derive_state(available: bool | None, pending_action: str | None, reported: str | None) -> str:
    """offline | starting | stopping | on | off | unknown."""
    if available is False:
        return "offline"
    if pending_action is not None:
        return "starting" if pending_action == "on" else "stopping"
    return reported or "unknown"


# --- requests -------------------------------------------------------------------------------
def refusal(*, available: bool | None, off_stuck: bool, broker_connected: bool, busy: bool, queued: int,
            queue_limit: int) -> str | None:
    """Why a new run is refused before its quota is checked (an error code), or None."""
    if available is False:
        return "device_offline"
    if off_stuck:
        return "off_unconfirmed"  # a whole round of an OFF failed: no new runs until it is confirmed
    if not broker_connected:
        return "broker_unavailable"  # accepting now would only end in ack_timeout
    if busy and queued >= queue_limit:
        return "queue_full"
    return None


def may_start_next(*, running: bool, pending: bool, queued: int, off_owed: bool, available: bool | None) -> bool:
    """Whether the head of the queue is sent its ON now: not while a run or a command is under
    way, not while an OFF is owed (finding 16), not while the pump is known to be offline."""
    return not running and not pending and queued > 0 and not off_owed and available is not False


# --- commands and their acks ----------------------------------------------------------------
def after_ack_timeout(attempts: int, retries: int) -> str:
    """``resend`` the same command, or ``give_up`` (an ON fails; an OFF becomes owed)."""
    return "resend" if attempts <= retries else "give_up"


def ack_applies(pending_id: str | None, ack_id: str | None) -> bool:
    """A legacy ack carries no id and answers whatever is awaited; a late or repeated one is ignored."""
    return pending_id is not None and (ack_id is None or ack_id == pending_id)


def on_ack_outcome(ok: bool) -> tuple[str, str] | None:
    """An awaited ON's ack: None starts the run; a refusal fails it as (state, reason)."""
    return None if ok else ("failed", "device_refused")


def owed_delay(round_: int, ack_timeout_s: float) -> float:
    """The owed OFF is sent again after ack_timeout_s, doubling each round up to a minute."""
    return min(OWED_RESEND_MAX_S, ack_timeout_s * 2 ** min(round_, 16))


def may_pay_off_debt(*, off_owed: bool, pending: bool, available: bool | None) -> bool:
    """An owed OFF goes now unless one is on its way or the pump is known offline (its coming
    back online pays the debt)."""
    return off_owed and not pending and available is not False


def likely_off_time(now: dt.datetime, sent_at: dt.datetime | None, started_at: dt.datetime,
                    intended_s: float | None) -> dt.datetime:
    """When an unconfirmed OFF most likely took effect: at the latest when it was first sent or
    when a pumplink controller's own timer ran out; never before the session began."""
    candidates = [now, sent_at or now]
    if intended_s is not None:
        candidates.append(started_at + dt.timedelta(seconds=intended_s))
    return max(started_at, min(candidates))


def closes_unacknowledged(protocol: str, intended_s: float | None) -> bool:
    """An unanswered OFF closes a timed session of a pumplink controller (its own timer stops
    it); a legacy pump has no timer, so its session stays open: it may still run."""
    return protocol != "legacy" and intended_s is not None


# --- the pump's own reports -----------------------------------------------------------------
def on_report(*, awaiting_on_ack: bool, reason: str, has_session: bool, unconfirmed_on: bool) -> str:
    """What a report of ON means: ``await_ack`` (our ON landed; its ack follows),
    ``confirm_unconfirmed`` (an ON sent before a crash did land), ``manual`` (a new session
    the pump started itself), or ``nothing`` (a session is already open)."""
    if awaiting_on_ack and reason == "command":
        return "await_ack"
    if not has_session and unconfirmed_on:
        return "confirm_unconfirmed"
    if not has_session:
        return "manual"
    return "nothing"


ADOPT_SLACK_S = 1.0  # a pump's remaining_s is rounded: this much over the asked duration still fits


def adoption(*, state: str, reason: str, remaining_s: float | None, duration_s: int) -> str:
    """What a report means for a run whose ON was sent before a crash and never acknowledged:
    ``adopt`` (the pump runs our command on its own timer: the run goes on to its original
    end) or ``refute`` (the pump says otherwise: the run fails)."""
    fits = remaining_s is not None and remaining_s <= duration_s + ADOPT_SLACK_S
    return "adopt" if state == "on" and reason == "command" and fits else "refute"


def off_report_ends_run(*, run_state: str | None, awaiting_on_ack: bool) -> bool:
    """A report of OFF ends the run only once it is running and no ON of ours is on its way."""
    return run_state == "running" and not awaiting_on_ack


def off_report_outcome(reason: str) -> tuple[str, str]:
    return OFF_REPORT_OUTCOME.get(reason, OFF_REPORT_DEFAULT)


# --- flapping (finding 15) --------------------------------------------------------------------
def flap_decision(count: int, limit: int, flagged: bool) -> str:
    """``clear`` (or ``calm`` when it was not flagged) once the trailing hour holds no more than
    the limit; else ``flag`` the first time (one alert), ``keep`` while it lasts."""
    if count <= limit:
        return "clear" if flagged else "calm"
    return "keep" if flagged else "flag"


# --- the database outage ----------------------------------------------------------------------
def without_database(kind: str, token, *, current_id: int | None, off_owed: bool, owed_token: int,
                     pending_off_id: str | None) -> str | None:
    """What a timer does while the database is away: a due OFF is not kept waiting.

    ``off_now`` (the run is due to end: send an untracked OFF, owe it), ``owed_again`` (send
    the owed OFF again, arm the next round), ``pending_again`` (an OFF not acked yet is sent
    again and owed), or None (waits for the database)."""
    if kind == "off" and current_id is not None and current_id == token:
        return "off_now"
    if kind == "owed" and off_owed and token == owed_token:
        return "owed_again"
    if kind == "ack" and pending_off_id is not None and pending_off_id == token:
        return "pending_again"
    return None


# --- recovery at start-up (API.md, Crash recovery) --------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
    """What recovery needs of an unfinished activation."""

    id: int
    state: str  # queued | starting | running
    ends_at: dt.datetime | None = None  # of a starting run: when it would end had its ON landed when sent


@dataclasses.dataclass(frozen=True)
class Close:
    id: int
    state: str  # completed | failed
    ended_at: dt.datetime
    close_session: bool  # its open session closes too, as "recovered"
    unconfirmed_on: bool  # its ON may have landed: a report of ON is this run's


@dataclasses.dataclass
class Recovery:
    queued: list[int] = dataclasses.field(default_factory=list)
    resume: tuple[int, float] | None = None  # (activation id, seconds left)
    adopt: int | None = None  # a starting run whose ON may have landed: it waits for the pump's word
    close: list[Close] = dataclasses.field(default_factory=list)
    off_owed: bool = False


def recover(runs: list[Run], *, session_activation_id: int | None, has_session: bool, protocol: str,
            off_owed_before: bool, now: dt.datetime) -> Recovery:
    """Each unfinished activation's fate after a restart: queued ones wait again; the first
    running one with time left resumes; a starting one with time left on a pump with its own
    timer waits for the pump's retained report (``adopt``), unless an OFF is owed anyway; the
    rest are closed as recovered (a running one completed at its end, a starting one failed)
    and an OFF is owed."""
    plan = Recovery()
    session_run_open = has_session and session_activation_id is not None
    for run in runs:
        if run.state == "queued":
            plan.queued.append(run.id)
        elif run.state == "running" and run.ends_at is not None and run.ends_at > now and plan.resume is None:
            plan.resume = (run.id, (run.ends_at - now).total_seconds())
        elif (run.state == "starting" and run.ends_at is not None and run.ends_at > now and protocol != "legacy"
              and plan.adopt is None and plan.resume is None):
            plan.adopt = run.id
        else:
            state = "completed" if run.state == "running" else "failed"
            ended_at = min(run.ends_at, now) if run.ends_at and run.state == "running" else now
            # A pumplink controller's own timer stopped it by then. A legacy one has no timer:
            # its session stays open until it confirms the owed OFF.
            closes = session_run_open and session_activation_id == run.id and protocol != "legacy"
            if closes:
                session_run_open = False
            plan.close.append(Close(run.id, state, ended_at, closes, run.state == "starting"))
            plan.off_owed = True
    if session_run_open and plan.resume is None:
        plan.off_owed = True  # a session of an activation that has ended: the pump may still be on
    # An OFF owed before the restart is owed still: only the pump's confirmation pays it.
    plan.off_owed = plan.off_owed or off_owed_before
    if plan.adopt is not None and (plan.off_owed or plan.resume is not None):
        # The OFF that is owed would stop it anyway: closed as before, without waiting.
        plan.close.append(Close(plan.adopt, "failed", now, False, True))
        plan.adopt, plan.off_owed = None, True
    return plan
