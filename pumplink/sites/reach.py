"""Who may see which device, for the live feed: read from the database, kept until told it changed.

The broadcaster asks it for every event and receiver; memberships change rarely, so it keeps
each device's site and each user's sites, and forgets them all on ``SitesChanged`` (or the
broadcaster's periodic re-check, for changes made by the CLI or another process).
"""

from __future__ import annotations

import logging

from pumplink.storage import models as m
from pumplink.storage.db import OPERATIONAL_ERRORS

log = logging.getLogger(__name__)

LIMIT = 100_000  # entries kept before forgetting wholesale


class Reach:
    def __init__(self, db):
        self.db = db
        self._site_of: dict[int, int | None] = {}
        self._sites_of: dict[int, frozenset[int]] = {}

    def forget(self) -> None:
        self._site_of.clear()
        self._sites_of.clear()

    def may_see_device(self, user_id: int | None, role: str | None, device_id: int | None) -> bool:
        """Admins see every device; a member sees the devices of their sites."""
        if role == "admin":
            return True
        if user_id is None or device_id is None or role is None:
            return False  # a pending member keeps a viewer's sight (sites.access); a deleted one none
        try:
            site = self._site(device_id)
            return site is not None and site in self._sites(user_id)
        except OPERATIONAL_ERRORS as exc:
            # Not knowing is not seeing: the receiver misses an event rather than sees another site's.
            log.warning("who may see device %s is unknown (%s); event withheld from user %s", device_id, exc, user_id)
            return False

    def _site(self, device_id: int) -> int | None:
        if device_id not in self._site_of:
            with self.db.connection_context():
                site = m.Device.select(m.Device.site).where(m.Device.id == device_id).scalar()
            self._keep(self._site_of)[device_id] = site
        return self._site_of[device_id]

    def _sites(self, user_id: int) -> frozenset[int]:
        if user_id not in self._sites_of:
            with self.db.connection_context():
                sites = frozenset(s for (s,) in m.Membership.select(m.Membership.site)
                                  .where(m.Membership.user == user_id).tuples())
            self._keep(self._sites_of)[user_id] = sites
        return self._sites_of[user_id]

    @staticmethod
    def _keep(cache: dict) -> dict:
        if len(cache) >= LIMIT:
            cache.clear()
        return cache
