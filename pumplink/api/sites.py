"""Sites: list and create them, their members, invitation codes and audit log; a manager's broker
login for a device's firmware."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import falcon
from pydantic import BaseModel, Field, StrictStr

from pumplink.api.openapi import MessageBody, doc
from pumplink.api.schemas import MIN_MINUTES, Body, EmptyBody, Number, PageQuery
from pumplink.api.support import Resource, page_params, path_id, read_json
from pumplink.errors import NotFound
from pumplink.sites import access, members
from pumplink.storage import models as m
from pumplink.views import audit_view

SiteRole = Literal["viewer", "operator", "manager"]


class SiteBody(Body):
    name: StrictStr = Field(min_length=1, max_length=100)


class MemberBody(Body):
    email: StrictStr = Field(min_length=3, max_length=254)
    role: SiteRole = "operator"


class MemberPatch(Body):
    role: SiteRole | None = None
    daily_quota_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)


class InvitationBody(Body):
    role: SiteRole = "operator"
    expires_in_hours: Number = Field(default=72, ge=0.01, le=30 * 24)


class RedeemBody(Body):
    code: StrictStr = Field(min_length=8, max_length=100)


class SiteOut(BaseModel):
    id: int
    name: str
    is_default: bool
    role: str = Field(description="the caller's role here (a server admin: manager)")


class SiteList(BaseModel):
    sites: list[SiteOut]


class MemberOut(BaseModel):
    user_id: int
    email: str
    role: str
    account_role: str
    daily_quota_minutes: float | None


class MemberList(BaseModel):
    members: list[MemberOut]


class InvitationOut(BaseModel):
    id: int
    site_id: int
    role: str
    expires_at: str
    used: bool
    code: str | None = Field(default=None, description="shown once, when it is made")


class AuditPage(BaseModel):
    items: list[dict]
    limit: int
    offset: int


def _site_view(site: m.Site, role: str) -> dict:
    return {"id": site.id, "name": site.name, "is_default": site.is_default, "role": role}


class Sites(Resource):
    @doc("The caller's sites and role in each (admins: every site)", answer=SiteList)
    def on_get(self, req, resp):
        user = self.auth.user(req)
        if access.is_admin(user):
            rows = [(s, access.MANAGE) for s in m.Site.select().order_by(m.Site.id)]
        else:
            mine = {site: access.role_in(user, site) for site in access.site_roles(user.id)}
            rows = [(s, mine[s.id]) for s in m.Site.select().where(m.Site.id.in_(list(mine))).order_by(m.Site.id)]
        resp.media = {"sites": [_site_view(s, r) for s, r in rows]}

    @doc("Create a site (admin)", body=SiteBody, status=201, answer=SiteOut, auth="admin", errors=(409, 422))
    def on_post(self, req, resp):
        admin = self.auth.user(req, "admin")
        body = read_json(req, SiteBody)
        site = members.create_site(body.name)
        self.gateway.audit(admin, "site.create", f"site:{site.id}", {"name": site.name}, site_id=site.id)
        resp.status = falcon.HTTP_201
        resp.media = _site_view(site, access.MANAGE)


class Site(Resource):
    @doc("One site (its members)", answer=SiteOut, auth="site viewer", errors=(404,))
    def on_get(self, req, resp, site_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id))
        resp.media = _site_view(site, access.role_in(user, site.id))


class Members(Resource):
    @doc("A site's members (its managers)", answer=MemberList, auth="site manager", errors=(404,))
    def on_get(self, req, resp, site_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id), access.MANAGE)
        resp.media = {"members": members.members(site.id)}

    @doc("Add an existing account by email, or change its role (the site's managers)", body=MemberBody,
         status=201, answer=MemberOut, auth="site manager", errors=(404, 422))
    def on_post(self, req, resp, site_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id), access.MANAGE)
        body = read_json(req, MemberBody)
        with m.Site._meta.database.atomic():
            added, new = members.add_by_email(site.id, body.email, body.role)
        self.gateway.audit(user, "member.add" if new else "member.update", f"user:{added.id}",
                           {"role": body.role}, site_id=site.id)
        self.gateway.sites_changed(added.id)
        resp.status = falcon.HTTP_201 if new else falcon.HTTP_200
        resp.media = next(x for x in members.members(site.id) if x["user_id"] == added.id)


class Member(Resource):
    @doc("Change a member's role or per-member daily quota (the site's managers; the last manager stays)",
         body=MemberPatch, answer=MemberOut, auth="site manager", errors=(404, 409, 422))
    def on_patch(self, req, resp, site_id, user_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id), access.MANAGE)
        raw = read_json(req)
        body = MemberPatch.model_validate(raw)
        uid = path_id(user_id)
        if members.membership(site.id, uid) is None:
            raise NotFound(f"User {uid} is not a member of this site.", "member_not_found")
        with m.Site._meta.database.atomic():
            if body.role is not None:
                members.set_member(site.id, uid, body.role, allow_last_manager=access.is_admin(user))
            if "daily_quota_minutes" in raw:
                members.set_member_quota(site.id, uid, body.daily_quota_minutes)
        self.gateway.audit(user, "member.update", f"user:{uid}",
                           {k: raw[k] for k in ("role", "daily_quota_minutes") if k in raw}, site_id=site.id)
        self.gateway.sites_changed(uid)
        if body.role is not None and not access.at_least(body.role, access.RUN):
            self.gateway.member_lost_run(uid, site.id)
        resp.media = next(x for x in members.members(site.id) if x["user_id"] == uid)

    @doc("Remove a member (the site's managers; the last manager stays, except for a server admin)",
         answer=MessageBody, auth="site manager", errors=(404, 409))
    def on_delete(self, req, resp, site_id, user_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id), access.MANAGE)
        uid = path_id(user_id)
        with m.Site._meta.database.atomic():
            members.remove_member(site.id, uid, allow_last_manager=access.is_admin(user))
        self.gateway.audit(user, "member.remove", f"user:{uid}", site_id=site.id)
        self.gateway.sites_changed(uid)
        self.gateway.member_lost_run(uid, site.id)
        resp.media = {"message": f"User {uid} is no longer a member of {site.name}."}


class Invitations(Resource):
    @doc("An invitation code for this site (the site's managers); single use, expiring, shown only in this answer",
         body=InvitationBody, status=201, answer=InvitationOut, auth="site manager", errors=(404, 422))
    def on_post(self, req, resp, site_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id), access.MANAGE)
        body = read_json(req, InvitationBody)
        code, row = members.invite(site.id, body.role, user, self.clock.now(),
                                   dt.timedelta(hours=body.expires_in_hours))
        self.gateway.audit(user, "invitation.create", f"invitation:{row.id}", {"role": body.role}, site_id=site.id)
        resp.status = falcon.HTTP_201
        resp.media = {**members.invitation_view(row), "code": code}


class Redeem(Resource):
    @doc("Join a site with an invitation code (approved accounts); a code works once, until it expires",
         body=RedeemBody, answer=SiteOut, auth="approved", errors=(404, 422))
    def on_post(self, req, resp):
        user = self.auth.user(req, "user")
        body = read_json(req, RedeemBody)
        with m.Site._meta.database.atomic():
            invitation = members.redeem(body.code, user, self.clock.now())
        self.gateway.audit(user, "invitation.redeem", f"invitation:{invitation.id}", site_id=invitation.site_id)
        self.gateway.sites_changed(user.id)
        site = m.Site.get_by_id(invitation.site_id)
        resp.media = _site_view(site, access.role_in(user, site.id))


class SiteAudit(Resource):
    @doc("The site's audit log, newest first (the site's managers)", query=PageQuery, answer=AuditPage,
         auth="site manager", errors=(400, 404, 422))
    def on_get(self, req, resp, site_id):
        user = self.auth.user(req)
        site = access.site_for(user, path_id(site_id), access.MANAGE)
        page = page_params(req)
        rows = (m.AuditLog.select().where(m.AuditLog.site == site.id).order_by(m.AuditLog.id.desc())
                .offset(page.offset).limit(page.limit))
        resp.media = {"items": [audit_view(a) for a in rows], "limit": page.limit, "offset": page.offset}


class BrokerCredentialsOut(BaseModel):
    username: str
    password: str = Field(description="shown only in this answer")
    password_line: str = Field(description="the Mosquitto password-file line for the server's operator")
    acl: str = Field(description="the Mosquitto ACL stanza: this controller's own topics only")


class BrokerCredentials(Resource):
    @doc("A new broker login for the device's controller firmware (the site's managers); the server's operator "
         "installs the password line in Mosquitto (see `pumplink device-credentials`)", body=EmptyBody,
         status=201, answer=BrokerCredentialsOut, auth="site manager", errors=(403, 404))
    def on_post(self, req, resp, device_id):
        from pumplink.devices import broker_credentials as brokerauth

        user = self.auth.user(req)
        device = access.device_for(user, path_id(device_id), access.MANAGE)
        read_json(req)
        name, password = brokerauth.username(device.id), brokerauth.new_password()
        self.gateway.audit(user, "device.broker_credentials", f"device:{device.id}", {"username": name},
                           site_id=device.site_id)
        resp.status = falcon.HTTP_201
        resp.media = {"username": name, "password": password, "password_line": brokerauth.password_line(name, password),
                      "acl": brokerauth.acl_stanza(device.id, self.gateway.config.mqtt_prefix)}


def routes(**base) -> dict:
    return {
        "/sites": Sites(**base),
        "/sites/{site_id}": Site(**base),
        "/sites/{site_id}/members": Members(**base),
        "/sites/{site_id}/members/{user_id}": Member(**base),
        "/sites/{site_id}/invitations": Invitations(**base),
        "/sites/{site_id}/audit": SiteAudit(**base),
        "/invitations/redeem": Redeem(**base),
        "/devices/{device_id}/broker-credentials": BrokerCredentials(**base),
    }

