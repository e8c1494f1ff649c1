"""Schedules: the app's ``POST /schedule`` and ``/schedules`` (list, create, show, enable/disable, delete)."""

from __future__ import annotations

import collections
import time

import falcon
import peewee as pw
from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr

from pumplink.storage import models as m
from pumplink.clock import iso
from pumplink.errors import NotFound
from pumplink.gateway import Gateway
from pumplink.sites import access
from pumplink.schedules.planning import Recurrence, check_new, parse_start
from pumplink.views import schedule_view
from pumplink.api.openapi import MessageBody, doc
from pumplink.api.schemas import Body, Number, ScheduleQuery, Timed, minutes_field, seconds_field
from pumplink.api.paging import keyset
from pumplink.api.support import Resource, owned, page_params, path_id, read_json

SCHEDULE = {"type": "object", "description": "id, device_id, user_id, start_time, rrule, duration_s, enabled, "
            "status, next_run_at, next_runs (five UTC times), runs (latest 20 with outcome), run_count"}
SCHEDULE_ANSWER = {"type": "object", "properties": {"message": {"type": "string"}, "schedule": SCHEDULE}}
SCHEDULE_PAGE = {"type": "object", "properties": {"items": {"type": "array", "items": SCHEDULE},
                                                  "limit": {"type": "integer"}, "offset": {"type": "integer"},
                                                  "next_offset": {"type": "integer", "nullable": True},
                                                  "next_cursor": {"type": "string", "nullable": True}}}

RUNS_SHOWN = 20
LIST_BUDGET_S = 0.05  # CPU time one listing may spend on next runs


class ScheduleBody(Timed):
    device_id: StrictInt = Field(default=1, ge=1)
    # A string, parsed by the resource: a bare number must not pass as a Unix time.
    start_time: StrictStr = Field(min_length=1, max_length=64)
    duration: Number | None = minutes_field()
    duration_s: Number | None = seconds_field()
    rrule: StrictStr | None = Field(default=None, max_length=500)


class SchedulePatch(Body):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: StrictBool


class _Base(Resource):
    def _runs(self, schedule_ids: list[int]) -> tuple[dict, dict]:
        """The latest runs and the run count of each schedule, in two queries."""
        runs: dict[int, list] = collections.defaultdict(list)
        counts: dict[int, int] = {}
        if not schedule_ids:
            return runs, counts
        for sid, count in (m.ScheduleRun.select(m.ScheduleRun.schedule, pw.fn.COUNT(m.ScheduleRun.id))
                           .where(m.ScheduleRun.schedule.in_(schedule_ids))
                           .group_by(m.ScheduleRun.schedule).tuples()):
            counts[sid] = count
        ranked = (m.ScheduleRun.select(m.ScheduleRun.id, pw.fn.ROW_NUMBER().over(
            partition_by=[m.ScheduleRun.schedule], order_by=[m.ScheduleRun.due_at.desc()]).alias("n"))
                  .where(m.ScheduleRun.schedule.in_(schedule_ids)))
        latest = (m.ScheduleRun.select().join(ranked, on=(m.ScheduleRun.id == ranked.c.id))
                  .where(ranked.c.n <= RUNS_SHOWN).order_by(m.ScheduleRun.due_at.desc()))
        for run in latest:
            runs[run.schedule_id].append(run)
        return runs, counts

    def _view(self, s: m.Schedule) -> dict:
        runs, counts = self._runs([s.id])
        return schedule_view(s, self.tz, runs[s.id], counts.get(s.id, 0))

    def _own(self, user: m.User, schedule_id: str) -> m.Schedule:
        s = m.Schedule.get_or_none(m.Schedule.id == path_id(schedule_id))
        if s is None or (user.role != "admin" and (
                s.user_id != user.id or not access.sees_device(user, s.device_id))):
            raise NotFound(f"There is no schedule {schedule_id} of yours.", "schedule_not_found")
        return s

    def _create(self, req, resp) -> None:
        user = self.auth.user(req, "user")
        body = read_json(req, ScheduleBody)
        seconds = body.seconds
        start = parse_start(body.start_time, self.tz)
        device = access.device_for(user, body.device_id, access.RUN)
        config = self.gateway.config
        Gateway.check_run_length(device, seconds, config.min_run_s)
        first = check_new(Recurrence(start, body.rrule, self.tz), seconds, self.clock.now(),
                          min_gap_s=config.schedule_min_gap_s, min_run_s=config.min_run_s)
        schedule = self.gateway.create_schedule(user, device.id, start, body.rrule, seconds)
        resp.status = falcon.HTTP_201
        every = f", then {schedule['rrule']}" if schedule["rrule"] else ""
        resp.media = {
            "message": f"Schedule {schedule['id']} created: {device.name} runs {seconds} s at {iso(first)}{every}.",
            "schedule": schedule,
        }


class Schedules(_Base):
    @doc("Schedules (own, on devices of your sites; admins see all), with next runs and past outcomes", query=ScheduleQuery, answer=SCHEDULE_PAGE, errors=(400, 422))
    def on_get(self, req, resp):
        user = self.auth.user(req)
        page = page_params(req)
        query = owned(m.Schedule.select(), m.Schedule, user, req)
        query = access.rows_of_visible_devices(query, m.Schedule, user)
        enabled = req.get_param_as_bool("enabled")
        if enabled is not None:
            query = query.where(m.Schedule.enabled == enabled)
        rows, next_cursor = keyset(query, [m.Schedule.id], page.cursor, page.limit, offset=page.offset)
        more = next_cursor is not None
        runs, counts = self._runs([s.id for s in rows])
        # A page of schedules works out next runs within one time budget; past it, each shows
        # only its stored next run (every rule is bounded, but a page holds many rules).
        deadline = time.thread_time() + LIST_BUDGET_S
        resp.media = {
            "items": [schedule_view(s, self.tz, runs[s.id], counts.get(s.id, 0), expand=time.thread_time() < deadline)
                      for s in rows],
            "limit": page.limit, "offset": page.offset,
            "next_offset": page.offset + page.limit if more and page.cursor is None else None, "next_cursor": next_cursor,
        }

    @doc("Create a one-off or recurring (rrule) schedule (operators of the device's site)", body=ScheduleBody, status=201, answer=SCHEDULE_ANSWER, auth="site operator", errors=(403, 404, 422, 503))
    def on_post(self, req, resp):
        self._create(req, resp)


class AppSchedule(_Base):
    """The mobile app's name for creating a schedule."""

    @doc("Create a schedule (the mobile app's call; operators of the device's site)", body=ScheduleBody, status=201, answer=SCHEDULE_ANSWER, auth="site operator", errors=(403, 404, 422, 503))
    def on_post(self, req, resp):
        self._create(req, resp)


class Schedule(_Base):
    @doc("One schedule", answer=SCHEDULE)
    def on_get(self, req, resp, schedule_id):
        user = self.auth.user(req)
        resp.media = self._view(self._own(user, schedule_id))

    @doc("Enable or disable a schedule", body=SchedulePatch, answer=SCHEDULE, auth="approved", errors=(422, 503))
    def on_patch(self, req, resp, schedule_id):
        user = self.auth.user(req, "user")
        body = read_json(req, SchedulePatch)
        s = self._own(user, schedule_id)
        self.gateway.set_schedule_enabled(user, s, body.enabled)
        resp.media = self._view(self._own(user, schedule_id))

    @doc("Delete a schedule", answer=MessageBody, auth="approved", errors=(503,))
    def on_delete(self, req, resp, schedule_id):
        user = self.auth.user(req, "user")
        s = self._own(user, schedule_id)
        self.gateway.delete_schedule(user, s)
        resp.media = {"message": f"Schedule {s.id} deleted; it will not run again."}


def routes(**base) -> dict:
    return {
        "/schedule": AppSchedule(**base),
        "/schedules": Schedules(**base),
        "/schedules/{schedule_id}": Schedule(**base),
    }
