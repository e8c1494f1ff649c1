"""Serves the web console: ``GET /`` and its static files, with a policy that allows only this server.

Asset URLs carry a fingerprint of the shipped files (``/static/<hash>/app.js``), so they may be
cached for a year, while ``index.html`` is revalidated on every load and names the current hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import falcon

from pumplink.api.openapi import doc

STATIC = Path(__file__).with_name("static")
# Nothing from elsewhere: scripts, styles, fetches and the WebSocket only from this origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def fingerprint(root: Path = STATIC) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


class Index:
    """``GET /``: the console's page, naming the current asset prefix."""

    def __init__(self):
        self.assets = f"/static/{fingerprint()}"
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        self.body = html.replace("{{assets}}", self.assets).encode()

    @doc("The web console (HTML; its scripts use this API)", auth=None, content_type="text/html")
    def on_get(self, req, resp):
        resp.content_type = "text/html; charset=utf-8"
        resp.cache_control = ["no-cache"]
        resp.set_headers(SECURITY_HEADERS)
        resp.data = self.body


class AssetHeaders:
    """Long caching and the same policy for the fingerprinted files."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def process_response(self, req, resp, resource, req_succeeded):
        if req.path.startswith(self.prefix) and resp.status in (falcon.HTTP_200, 200):
            resp.cache_control = ["public", "max-age=31536000", "immutable"]
            resp.set_headers(SECURITY_HEADERS)


def install_assets(app: falcon.App, index: Index) -> None:
    """Serves the files ``index`` names (its route is added with the API's, for the OpenAPI document)."""
    app.add_static_route(index.assets, str(STATIC))
    app.add_middleware(AssetHeaders(index.assets + "/"))
