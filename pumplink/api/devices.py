"""Devices, activations, sessions, logs, force shutdown and emergency stop."""

from __future__ import annotations

import datetime as dt

import falcon

from pumplink.storage import models as m
from pumplink.clock import to_db
from pumplink.errors import Forbidden, NotFound
from pumplink.accounts.service import require_role
from pumplink.sites import access
from pumplink.views import activation_view, log_view, session_view
from pumplink.api import answers as A
from pumplink.api.openapi import MessageBody, doc
from pumplink.api.paging import id_page, keyset
from pumplink.api.schemas import (ActivateBody, ActivationQuery, DeviceCreate, DevicePatch, DeviceQuery, EmptyBody,
                                  PageQuery)
from pumplink.api.support import Resource, owned, page_params, path_id, read_json


class Devices(Resource):
    @doc("The devices of the caller's sites (admins: every device) with state, running activation, queue and "
         "today's use; with ?limit= or ?cursor=, one page of them and next_cursor", query=DeviceQuery,
         answer=A.DeviceList, errors=(400, 422, 503))
    def on_get(self, req, resp):
        user = self.auth.user(req)
        ids = self.gateway.device_ids(access.visible_devices(user))
        if "limit" not in req.params and "cursor" not in req.params:
            # The app reads the whole list: paging is asked for, never imposed.
            resp.media = {"devices": self.gateway.devices(ids)}
            return
        page = DeviceQuery.model_validate({k: v for k, v in req.params.items() if k in ("limit", "cursor")})
        ids, next_cursor = id_page(ids, page.cursor, page.limit)
        resp.media = {"devices": self.gateway.devices(ids), "limit": page.limit, "next_cursor": next_cursor}

    @doc("Create a device (admin) in site_id (default: the default site); at most one may speak the legacy protocol", body=DeviceCreate, status=201, answer=A.DeviceOut, auth="admin", errors=(409, 422, 503))
    def on_post(self, req, resp):
        admin = self.auth.user(req, "admin")
        body = read_json(req, DeviceCreate)
        resp.status = falcon.HTTP_201
        resp.media = self.gateway.create_device(admin, **body.model_dump())


class Device(Resource):
    @doc("One device (members of its site)", answer=A.DeviceOut, errors=(404, 503))
    def on_get(self, req, resp, device_id):
        user = self.auth.user(req)
        resp.media = self.gateway.device(access.device_for(user, path_id(device_id)).id)

    @doc("Change a device (its site's managers; moving it to another site: admin); at most one may speak the legacy protocol", body=DevicePatch, answer=A.DeviceOut, auth="site manager", errors=(403, 404, 409, 422, 503))
    def on_patch(self, req, resp, device_id):
        user = self.auth.user(req)
        device = access.device_for(user, path_id(device_id), access.MANAGE)
        body = read_json(req, DevicePatch)
        fields = body.model_dump(exclude_unset=True)
        if "site_id" in fields and not access.is_admin(user):
            raise Forbidden("Only a server admin may move a device to another site.", "admin_required")
        resp.media = self.gateway.update_device(user, device.id, **fields)

    @doc("Delete a device (admin); it is sent OFF first", answer=MessageBody, auth="admin", errors=(403, 404, 503))
    def on_delete(self, req, resp, device_id):
        user = self.auth.user(req)
        did = access.device_for(user, path_id(device_id)).id
        require_role(user, "admin")
        self.gateway.delete_device(user, did)
        resp.media = {"message": f"Device {did} deleted; it was sent OFF first."}


class DeviceStatus(Resource):
    """The Go server's shape, kept for old clients."""

    @doc("The Go server's status shape", answer=A.GoStatus, errors=(404, 503))
    def on_get(self, req, resp, device_id):
        user = self.auth.user(req)
        resp.media = self.gateway.go_status(access.device_for(user, path_id(device_id)).id)


class ForceShutdown(Resource):
    @doc("Send OFF now, end the running activation, cancel the queue (its site's managers)", body=EmptyBody, answer=A.ShutdownAnswer, auth="site manager", errors=(403, 404, 503))
    def on_post(self, req, resp, device_id):
        user = self.auth.user(req)
        device = access.device_for(user, path_id(device_id), access.MANAGE)
        read_json(req)
        result = self.gateway.force_shutdown(user, device.id)
        resp.media = {"message": f"OFF sent to device {result['device_id']}; its queue was cancelled.", **result}


class EmergencyStop(Resource):
    @doc("Force shutdown of every device of every site (admin)", body=EmptyBody, answer=A.EmergencyAnswer, auth="admin", errors=(503,))
    def on_post(self, req, resp):
        admin = self.auth.user(req, "admin")
        read_json(req)
        results = self.gateway.emergency_stop(admin)
        resp.media = {"message": f"OFF sent to {len(results)} devices; every queue was cancelled.",
                      "devices": results}


class Activate(Resource):
    @doc("Run a pump for a duration (queued behind a running one); operators of its site", body=ActivateBody, status=202, answer=A.ActivationAnswer, auth="site operator", errors=(403, 404, 409, 422, 429, 503))
    def on_post(self, req, resp):
        user = self.auth.user(req, "user")
        body = read_json(req, ActivateBody)
        seconds = body.seconds
        device = access.device_for(user, body.device_id, access.RUN)
        activation = self.gateway.activate(user, device.id, seconds)
        resp.status = falcon.HTTP_202
        where = "started" if activation["state"] != "queued" else "queued"
        resp.media = {"message": f"Activation {activation['id']} {where} for {seconds} s.", "activation": activation}


def _window(query, field, page, tz):
    def aware(value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo else value.replace(tzinfo=tz)

    if page.since is not None:
        query = query.where(field >= to_db(aware(page.since)))
    if page.until is not None:
        query = query.where(field < to_db(aware(page.until)))
    return query


class Activations(Resource):
    @doc("Activations (own, on devices of your sites; admins see all)", query=ActivationQuery, answer=A.ActivationPage, errors=(400, 422))
    def on_get(self, req, resp):
        user = self.auth.user(req)
        page = page_params(req)
        query = owned(m.Activation.select(), m.Activation, user, req)
        query = access.rows_of_visible_devices(query, m.Activation, user)
        state = req.get_param("state")
        if state:
            query = query.where(m.Activation.state == state)
        query = _window(query, m.Activation.created_at, page, self.tz)
        now = self.clock.now()
        rows, next_cursor = keyset(query, [m.Activation.id], page.cursor, page.limit, offset=page.offset)
        resp.media = {"items": [activation_view(a, now) for a in rows], "limit": page.limit, "offset": page.offset,
                      "next_cursor": next_cursor}


class Activation(Resource):
    def _load(self, req, activation_id):
        user = self.auth.user(req)
        act = m.Activation.get_or_none(m.Activation.id == path_id(activation_id))
        if act is None or (user.role != "admin" and (
                act.user_id != user.id or not access.sees_device(user, act.device_id))):
            raise NotFound(f"There is no activation {activation_id} of yours.", "activation_not_found")
        return user, act

    @doc("One activation", answer=A.ActivationOut)
    def on_get(self, req, resp, activation_id):
        _, act = self._load(req, activation_id)
        resp.media = activation_view(act, self.clock.now())

    @doc("Cancel a queued activation or stop a running one (owner or admin)", answer=A.ActivationAnswer, errors=(403, 409, 503))
    def on_delete(self, req, resp, activation_id):
        user, act = self._load(req, activation_id)
        result = self.gateway.cancel_activation(user, act.id)
        resp.media = {"message": f"Activation {act.id} {result['state']}.", "activation": result}


class _DeviceHistory(Resource):
    model = None
    view = None

    def on_get(self, req, resp, device_id):
        user = self.auth.user(req)
        did = access.device_for(user, path_id(device_id)).id
        page = page_params(req)
        model = self.model
        time_field = model.started_at if model is m.Session else model.at
        query = _window(model.select().where(model.device == did), time_field, page, self.tz)
        rows, next_cursor = keyset(query, [time_field, model.id], page.cursor, page.limit, offset=page.offset)
        more = next_cursor is not None
        resp.media = {"items": [type(self).view(r) for r in rows], "limit": page.limit, "offset": page.offset,
                      "next_offset": page.offset + page.limit if more and page.cursor is None else None,
                      "next_cursor": next_cursor}


class Sessions(_DeviceHistory):
    model = m.Session
    view = staticmethod(session_view)

    @doc("A device's sessions (ON periods), newest first", query=PageQuery, answer=A.SessionPage, errors=(400, 422))
    def on_get(self, req, resp, device_id):
        super().on_get(req, resp, device_id)


class Logs(_DeviceHistory):
    model = m.DeviceLog
    view = staticmethod(log_view)

    @doc("A device's ON/OFF log, newest first", query=PageQuery, answer=A.LogPage, errors=(400, 422))
    def on_get(self, req, resp, device_id):
        super().on_get(req, resp, device_id)
