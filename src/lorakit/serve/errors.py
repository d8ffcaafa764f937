"""Every failure leaves the server as an OpenAI-style error body with the right status.

``{"error": {"message", "type", "param", "code"}}`` is what OpenAI clients parse; the
official client turns it into ``BadRequestError``, ``NotFoundError`` and so on, with our
message in it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 429: "server_busy", 500: "server_error"}
RETRY_AFTER_S = 1  # a 429 says when to try again; one answer's worth of waiting is a fair guess


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = _TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        if self.status == 429:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first problem pydantic found, named by its field as OpenAI names params."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    if first.get("type") == "missing":
        return APIError(400, f"missing required parameter: '{param}'", param, "missing_required_parameter")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: '{param}'", param, "unknown_parameter")
    message = str(first.get("msg", "invalid value"))
    return APIError(400, f"invalid value for '{param}': {message}" if param else message, param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return APIError(exc.status_code, message).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request to %s failed", request.url.path)
        return APIError(500, f"the server failed to answer: {type(exc).__name__}: {exc}").response()
