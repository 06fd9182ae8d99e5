"""``GET /openapi.json`` and ``GET /docs`` (Swagger UI): the worker's API described, behind its token.

With a token set, both take ``Authorization: Bearer <token>`` as every route does, or HTTP Basic auth
with the token as the password (any user name): a browser cannot send a bearer token when it opens a
page, but it asks for Basic credentials on a 401 and then sends them with the schema request too.
The schema declares the bearer scheme, so Swagger UI's "Authorize" button makes "Try it out" work.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from worker.errors import Unauthorized

OPENAPI_PATH: Final = "/openapi.json"
DOCS_PATH: Final = "/docs"
_REALM: Final = 'Basic realm="voxclone worker", charset="UTF-8"'


def _presented_token(request: Request) -> bytes | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2]
    return None


def docs_router(app: FastAPI, token: str | None) -> APIRouter:
    """The schema and docs routes of ``app`` (not themselves in the schema)."""
    expected = token.encode() if token else None
    router = APIRouter(include_in_schema=False)

    def authorize(request: Request) -> None:
        if expected is None:
            return
        presented = _presented_token(request)
        if presented is None or not hmac.compare_digest(presented, expected):
            raise Unauthorized(
                "The worker token is missing or wrong: send it as a bearer token, or as the password "
                "when the browser asks."
            )

    def unauthorized(exc: Unauthorized) -> JSONResponse:
        body = {"error": {"code": exc.code, "message": exc.message}}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": _REALM})

    @router.get(OPENAPI_PATH)
    async def openapi(request: Request) -> JSONResponse:
        try:
            authorize(request)
        except Unauthorized as exc:
            return unauthorized(exc)
        return JSONResponse(schema(app))

    @router.get(DOCS_PATH)
    async def docs(request: Request) -> HTMLResponse:
        try:
            authorize(request)
        except Unauthorized as exc:
            return HTMLResponse(exc.message, status_code=401, headers={"WWW-Authenticate": _REALM})
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - API docs")

    return router


def schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``, with the bearer token declared for every operation."""
    cached: dict[str, Any] | None = getattr(app.state, "openapi_with_auth", None)
    if cached is not None:
        return cached
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "WORKER_TOKEN (when the worker has one)",
    }
    document["security"] = [{"bearer": []}]
    for path in ("/healthz", "/readyz"):  # open to probes
        for operation in document.get("paths", {}).get(path, {}).values():
            operation["security"] = []
    app.state.openapi_with_auth = document
    return document


__all__ = ["DOCS_PATH", "OPENAPI_PATH", "docs_router", "schema"]
