"""A device's rows: what its actor starts from (DeviceRecords) and how the machine's row
effects (state.Insert, Update, UpdateDevice, WriteLog) are written. The only module of a
device that speaks peewee besides the shell's quota reads."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt

import peewee as pw

from pumplink.clock import from_db, to_db
from pumplink.devices import rules, state
from pumplink.quota import usage
from pumplink.storage import models as m

OPEN_STATES = usage.OPEN_STATES


@dataclasses.dataclass
class DeviceRecords:
    """What a device actor starts from: its row, its open session, its unfinished activations."""

    device: m.Device
    session: m.Session | None
    activations: list[m.Activation]
    manual_starts: list[dt.datetime] = dataclasses.field(default_factory=list)  # for flapping

    @classmethod
    def load(cls, device_id: int, now: dt.datetime) -> "DeviceRecords":
        manual = _manual_starts(now, m.Session.device == device_id)
        return cls(
            device=m.Device.get_by_id(device_id),
            session=m.Session.get_or_none((m.Session.device == device_id) & m.Session.ended_at.is_null()),
            activations=list(m.Activation.select()
                             .where((m.Activation.device == device_id) & m.Activation.state.in_(OPEN_STATES))
                             .order_by(m.Activation.created_at, m.Activation.id)),
            manual_starts=manual.get(device_id, []),
        )

    @classmethod
    def load_all(cls, now: dt.datetime, ids: list[int] | None = None) -> list["DeviceRecords"]:
        """Every live device's records (or those of ``ids``: a partition) in four queries, for start-up."""
        def of(field):
            return True if ids is None else field.in_(ids)

        sessions = {s.device_id: s for s in m.Session.select().where(m.Session.ended_at.is_null()
                                                                      & of(m.Session.device))}
        activations = collections.defaultdict(list)
        for act in (m.Activation.select().where(m.Activation.state.in_(OPEN_STATES) & of(m.Activation.device))
                    .order_by(m.Activation.created_at, m.Activation.id)):
            activations[act.device_id].append(act)
        manual = _manual_starts(now, of(m.Session.device))
        return [cls(d, sessions.get(d.id), activations.get(d.id, []), manual.get(d.id, []))
                for d in m.Device.select().where(m.Device.deleted_at.is_null() & of(m.Device.id))
                .order_by(m.Device.id)]

    def values(self) -> state.Loaded:
        """As the machine takes them."""
        return state.Loaded(device_value(self.device), session_value(self.session) if self.session else None,
                            [activation_value(a) for a in self.activations], list(self.manual_starts))

    def needs_writes(self, now: dt.datetime) -> bool:
        """Whether recovery has an activation to close (else it only reads): anything but queued
        ones and the one run that resumes."""
        resumed = next((a for a in self.activations if a.state == "running" and from_db(a.ends_at) > now), None)
        return any(a.state != "queued" and a is not resumed for a in self.activations)


def _manual_starts(now: dt.datetime, where) -> dict[int, list[dt.datetime]]:
    """Starts of pump-started sessions (no activation) in the trailing flapping window."""
    out = collections.defaultdict(list)
    for device_id, started_at in (m.Session.select(m.Session.device, m.Session.started_at)
                                  .where(where & m.Session.activation.is_null()
                                         & (m.Session.started_at > to_db(now - rules.FLAP_WINDOW)))
                                  .tuples()):
        out[device_id].append(from_db(started_at))
    return out


def device_value(d: m.Device) -> state.Device:
    return state.Device(d.id, d.name, d.protocol, d.daily_quota_minutes, d.off_owed_since, d.flapping_since)


def activation_value(a: m.Activation) -> state.Activation:
    return state.Activation(a.device_id, a.user_id, a.schedule_id, a.duration_s, a.source, a.created_at, a.state,
                            a.id, a.reason, a.ended_by, a.command_id, a.started_at, a.ends_at, a.ended_at)


def session_value(s: m.Session) -> state.Session:
    return state.Session(s.started_at, s.start_cause, None, s.activation_id, s.user_id, s.intended_s, s.id,
                         s.ended_at, s.actual_s, s.end_reason)


_ACTIVATION = ("device_id", "user_id", "schedule_id", "duration_s", "source", "created_at", "state", "reason",
               "ended_by", "command_id", "started_at", "ends_at", "ended_at")


def _id(record) -> int | None:
    return record.id if record is not None else None


def _inserted(r: state.Activation | state.Session, device: state.Device) -> tuple[type, dict]:
    if isinstance(r, state.Activation):
        return m.Activation, {k: getattr(r, k) for k in _ACTIVATION}
    return m.Session, dict(device=device.id, activation=r.run_id, user=r.user_id, started_at=r.started_at,
                           intended_s=r.intended_s, start_cause=r.start_cause, ended_at=r.ended_at,
                           actual_s=r.actual_s, end_reason=r.end_reason)


def _logged(e: state.WriteLog, device: state.Device) -> dict:
    return dict(device=device.id, session=_id(e.session), activation=_id(e.activation), event=e.event,
                cause=e.cause, actor=e.actor, detail=e.detail, at=to_db(e.at))


def fold(rows: list) -> list:
    """The same rows in fewer statements: an update of a record inserted earlier in the same list
    goes into its insert (one transaction: nobody sees the row in between). An activation asked
    for and started at once was an INSERT and an UPDATE; it is one INSERT."""
    out, inserted = [], {}
    for e in rows:
        if isinstance(e, state.Update) and id(e.record) in inserted:
            i = inserted[id(e.record)]
            out[i] = out[i].with_values(e.values)
            continue
        if isinstance(e, state.Insert):
            inserted[id(e.record)] = len(out)
        out.append(e)
    return out


def write(effect, device: state.Device) -> None:
    """Carry out one row effect of the machine; a record it inserts gets its id."""
    if isinstance(effect, state.Insert):
        model, values = _inserted(effect.row, device)
        if model._meta.database.for_update:  # PostgreSQL: the statement written here (_insert_many)
            effect.record.id = _insert_many(model, [values], returning=True)[0]
        else:
            effect.record.id = model.insert(values).execute()
    elif isinstance(effect, state.Update):
        model = _model(effect.record)
        model.update(effect.values).where(model.id == effect.record.id).execute()
    elif isinstance(effect, state.UpdateDevice):
        m.Device.update(effect.values).where(m.Device.id == device.id).execute()
    elif isinstance(effect, state.WriteLog):
        m.DeviceLog.insert(_logged(effect, device)).execute()


def write_many(units: list[tuple[list, state.Device]]) -> None:
    """The row effects of many devices' messages in a few statements: the updates in order, then
    the inserts of each table in one (PostgreSQL returns their ids in order), then the log rows in
    one. Rows of different devices do not depend on each other. Updates go first: after ``fold``
    each is of a record committed earlier, and a session it closes must be closed before the
    device's next one is inserted open (one open session per device, a unique index). A log row
    may name a record inserted before it, which by then has its id."""
    inserts: dict[type, list] = collections.defaultdict(list)
    updates, logs = [], []
    for rows, device in units:
        for e in fold(rows):
            if isinstance(e, state.Insert):
                model, values = _inserted(e.row, device)
                inserts[model].append((e, values))
            elif isinstance(e, state.WriteLog):
                logs.append((e, device))
            else:
                updates.append((e, device))
    _update_many(updates)
    for model, items in inserts.items():
        ids = _insert_many(model, [values for _, values in items], returning=True)
        for (e, _), id_ in zip(items, ids, strict=True):
            e.record.id = id_
    if logs:
        _insert_many(m.DeviceLog, [_logged(e, device) for e, device in logs])


# The group commit's statements are written here, not built by peewee: peewee makes each value a
# node of a query tree and renders it, ~100 µs a statement, which was the largest part of every
# pump message's cost. PostgreSQL only (psycopg2's placeholders); values go through each field's
# db_value as with peewee, and every column is given (no defaults are filled in).
def _insert_many(model: type, rows: list[dict], returning: bool = False) -> list[int]:
    meta = model._meta
    keys = tuple(rows[0])  # every row of one table comes from the same function: the same keys
    fields = [meta.combined[k] for k in keys]
    one = "(" + ", ".join(["%s"] * len(keys)) + ")"
    sql = (f'INSERT INTO "{meta.table_name}" (' + ", ".join(f'"{f.column_name}"' for f in fields) + ") VALUES "
           + ", ".join([one] * len(rows)) + (' RETURNING "id"' if returning else ""))
    params = [f.db_value(row[k]) for row in rows for k, f in zip(keys, fields)]
    cursor = meta.database.execute_sql(sql, params)
    return [row[0] for row in cursor.fetchall()] if returning else []


def _update_one(e: state.Update) -> None:
    meta = _model(e.record)._meta
    fields = [meta.combined[name] for name in e.fields]
    sql = (f'UPDATE "{meta.table_name}" SET ' + ", ".join(f'"{f.column_name}" = %s' for f in fields)
           + ' WHERE "id" = %s')
    meta.database.execute_sql(sql, [f.db_value(e.values[f.name]) for f in fields] + [e.record.id])


def _update_many(updates: list) -> None:
    """Updates in order, those of one table and the same columns in one statement (``CASE id``):
    a batch of pumps reporting OFF closes its sessions in one UPDATE instead of one each. Order
    within a record is kept: a record updated twice waits for the next statement."""
    group: list = []

    def flush() -> None:
        if len(group) == 1:
            _update_one(group[0][0])
        elif group:
            model = _model(group[0][0].record)
            ids = [e.record.id for e, _ in group]
            columns = {f: pw.Case(model.id, [(e.record.id, e.values[f]) for e, _ in group], getattr(model, f))
                       for f in group[0][0].fields}
            model.update(columns).where(model.id.in_(ids)).execute()
        group.clear()

    for e, device in updates:
        if not isinstance(e, state.Update):
            flush()
            write(e, device)
            continue
        if group and (_model(e.record) is not _model(group[0][0].record) or e.fields != group[0][0].fields
                      or any(g.record is e.record for g, _ in group)):
            flush()
        group.append((e, device))
    flush()


def _model(record) -> type:
    return m.Activation if isinstance(record, state.Activation) else m.Session
