"""Accounts: register, login, refresh, logout, /me, and admin user management."""

from __future__ import annotations

import falcon

from pumplink.storage import models as m
from pumplink.accounts.service import Accounts
from pumplink.views import user_view
from pumplink.views import audit_view
from pumplink.api import answers as A
from pumplink.api.openapi import MessageBody, doc
from pumplink.api.schemas import Credentials, LogoutBody, PageQuery, RefreshBody, UserPatch
from pumplink.api.paging import keyset
from pumplink.api.support import Auth, client_address, page_params, path_id, read_json


class Register:
    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    @doc("Create an account (pending until an admin approves it); limited per client address", body=Credentials, status=201, answer=A.RegisterAnswer, auth=None, errors=(409, 422, 429))
    def on_post(self, req, resp):
        body = read_json(req, Credentials)
        user = self.accounts.register(body.email, body.password,
                                      client_address(req, self.accounts.config.trusted_proxies))
        resp.status = falcon.HTTP_201
        message = ("Account created." if user.role != "pending"
                   else "Account created; an admin must approve it before it can control pumps.")
        resp.media = {"message": message, "user": user_view(user)}


class Login:
    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    @doc("Log in: access and refresh tokens (403 approval_required, with `user`, for a pending account)", body=Credentials, answer=A.TokensAnswer, auth=None, errors=(401, 403, 429))
    def on_post(self, req, resp):
        body = read_json(req, Credentials)
        resp.media = self.accounts.login(body.email, body.password,
                                         client_address(req, self.accounts.config.trusted_proxies))


class Refresh:
    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    @doc("A new access token for a refresh token (kept until it expires; rotated, with reuse detection, when PUMPLINK_REFRESH_ROTATION is on)", body=RefreshBody, answer=A.TokensAnswer, auth=None, errors=(401, 403))
    def on_post(self, req, resp):
        body = read_json(req, RefreshBody)
        resp.media = self.accounts.refresh(body.refresh_token)


class Logout:
    def __init__(self, accounts: Accounts, auth: Auth):
        self.accounts, self.auth = accounts, auth

    @doc("End a login: the refresh token given, or the login the bearer access token came from", body=LogoutBody, answer=MessageBody, auth=None, errors=(401,))
    def on_post(self, req, resp):
        body = read_json(req, LogoutBody)
        if body.refresh_token:
            # Holding the refresh token is authority enough: logging out must work even
            # after the short-lived access token has expired.
            self.accounts.logout(body.refresh_token)
        else:
            self.accounts.logout_access(self.auth.bearer(req))
        resp.media = {"message": "Logged out."}


class Me:
    def __init__(self, auth: Auth):
        self.auth = auth

    @doc("The logged-in account", answer=A.UserOut)
    def on_get(self, req, resp):
        resp.media = user_view(self.auth.user(req))


class Users:
    def __init__(self, auth: Auth):
        self.auth = auth

    @doc("Every account (admin)", query=PageQuery, answer=A.UserPage, auth="admin", errors=(400, 422))
    def on_get(self, req, resp):
        self.auth.user(req, "admin")
        page = page_params(req)
        rows, next_cursor = keyset(m.User.select(), [m.User.id], page.cursor, page.limit, offset=page.offset,
                                   descending=False)
        resp.media = {"items": [user_view(u) for u in rows], "limit": page.limit, "offset": page.offset,
                      "next_cursor": next_cursor}


class User:
    def __init__(self, accounts: Accounts, auth: Auth, gateway):
        self.accounts, self.auth, self.gateway = accounts, auth, gateway

    @doc("Change an account's role or quota (admin)", body=UserPatch, answer=A.UserOut, auth="admin", errors=(409, 422))
    def on_patch(self, req, resp, user_id):
        admin = self.auth.user(req, "admin")
        raw = read_json(req)
        body = UserPatch.model_validate(raw)
        user = self.accounts.update_user(path_id(user_id), body.role, body.daily_quota_minutes,
                                         "daily_quota_minutes" in raw)
        self.gateway.audit(admin, "user.update", f"user:{user.id}",
                                {k: raw[k] for k in ("role", "daily_quota_minutes") if k in raw})
        if body.role is not None:
            self._access_changed(user.id, user.role)
        resp.media = user_view(user)

    @doc("Delete an account (admin)", answer=MessageBody, auth="admin", errors=(409,))
    def on_delete(self, req, resp, user_id):
        admin = self.auth.user(req, "admin")
        uid = path_id(user_id)
        self.accounts.delete_user(uid, admin)
        self.gateway.audit(admin, "user.delete", f"user:{uid}")
        self._access_changed(uid, None)
        resp.media = {"message": f"User {uid} deleted."}

    def _access_changed(self, user_id: int, role: str | None) -> None:
        self.gateway.user_access_changed(user_id, role)


class Audit:
    def __init__(self, auth: Auth):
        self.auth = auth

    @doc("The audit log (admin)", query=PageQuery, answer=A.AuditPage, auth="admin", errors=(400, 422))
    def on_get(self, req, resp):
        self.auth.user(req, "admin")
        page = page_params(req)
        rows, next_cursor = keyset(m.AuditLog.select(), [m.AuditLog.id], page.cursor, page.limit, offset=page.offset)
        resp.media = {"items": [audit_view(a) for a in rows], "limit": page.limit, "offset": page.offset,
                      "next_cursor": next_cursor}
