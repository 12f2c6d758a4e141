"""The gateway's domain errors.

Hierarchy::

    GatewayError                   base; carries an HTTP status and an OpenAI error `type`/`code`
    ├── InvalidRequest             400: the client's request is malformed (param names the field)
    ├── PayloadTooLarge            413: body over `ABGATE_MAX_BODY_BYTES`
    ├── UnsupportedMediaType       415: the body is not `application/json`
    ├── ModelNotFound              404: no route alias or default upstream for `model`
    └── UpstreamUnavailable        502/504: the model server could not be reached in time
    ConfigError                    a configuration file or document is invalid (never an HTTP error)

Errors from redis and aiohttp are translated where they are caught; the HTTP layer turns a
`GatewayError` into an OpenAI-shaped body that carries the request id.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class UpstreamUnavailable(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"

    def __init__(self, message: str, *, status: int = 502, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        if code is not None:
            self.code = code


class ConfigError(Exception):
    """A configuration file or stored config document is invalid."""
