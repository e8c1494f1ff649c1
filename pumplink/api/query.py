"""Every query string is checked before a resource sees it, on every route.

- No name or value may carry NUL or another control character (400 ``nul_character`` /
  ``control_character``): PostgreSQL cannot store NUL, and none means anything in a query.
- Where a responder declares its query (``@doc(query=Model)``, the same model the OpenAPI
  document describes), the parameters it names are validated by that model: wrong types are
  400, values out of range (dates that do not fit, ids, limits) 422. The result is kept in
  ``req.context.query``. Resources may still read ``req.get_param``: the values are now safe.
"""

from __future__ import annotations

import falcon

from pumplink.errors import BadRequest
from pumplink.api.schemas import CONTROL_CHARACTERS


def _refuse_controls(name: str, values) -> None:
    for text in (name, *values):
        bad = CONTROL_CHARACTERS.intersection(text)
        if not bad:
            continue
        if "\x00" in bad:
            raise BadRequest(f"The query parameter {name!r} must not contain NUL (%00) characters.",
                             "nul_character", field=name)
        raise BadRequest(f"The query parameter {name!r} must not contain control characters.",
                         "control_character", field=name)


class QueryMiddleware:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        for name, value in req.params.items():
            _refuse_controls(name, value if isinstance(value, list) else (value,))

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if resource is None:
            return
        responder = getattr(resource, f"on_{req.method.lower()}", None)
        model = getattr(getattr(responder, "__openapi__", None), "query", None)
        if model is None:
            return
        given = {name: req.params[name] for name in model.model_fields if name in req.params}
        req.context.query = model.model_validate(given)
