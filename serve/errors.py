"""Errors the server answers with, in OpenAI's shape.

`ApiError` is raised anywhere in the request path; `serve.handlers.BaseHandler.write_error`
is the one place that turns it (or any other exception) into a response.
"""
from __future__ import annotations

from http import HTTPStatus

# OpenAI's `type` for each status we send; everything the client caused is a 4xx.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_overloaded",
    500: "server_error",
}


class ApiError(Exception):
    """An HTTP error with OpenAI's `{"error": {message, type, param, code}}` body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message,
                      "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def overloaded(message: str, retry_after_s: int = 1, code: str = "overloaded") -> ApiError:
    return ApiError(503, message, code=code, headers={"Retry-After": str(retry_after_s)})


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
