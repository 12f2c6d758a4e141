"""The gateway's domain errors.

Hierarchy::

    GatewayError                   base; carries an HTTP status and an OpenAI error `type`/`code`
    ├── InvalidRequest             400: the client's request is malformed (param names the field)
    ├── PayloadTooLarge            413: body over `ABGATE_MAX_BODY_BYTES`
    ├── UnsupportedMediaType       415: the body is not `application/json`
    ├── ModelNotFound              404: no route alias or default upstream for `model`
    ├── UpstreamUnavailable        502/503/504: no usable answer from the model server (502: none,
    │                              or one refused; 503: every pooled connection stayed busy;
    │                              504: timed out)
    ├── Unauthorized               401: admin API without the right bearer token
    ├── NotFound                   404: no such experiment (admin API)
    ├── Unprocessable              422: a change would make the experiment invalid
    ├── Conflict                   409: duplicate name, route taken, transition not allowed
    ├── PreconditionFailed         412: `If-Match` names a version that is no longer current
    └── StoreUnavailable           503: Redis cannot be reached for a change (or admin disabled)
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


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "unauthorized"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class Unprocessable(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_value"


class PreconditionFailed(GatewayError):
    status = 412
    type = "precondition_failed"
    code = "stale_version"


class StoreUnavailable(GatewayError):
    status = 503
    type = "unavailable_error"
    code = "unavailable"


class ConfigError(Exception):
    """A configuration file or stored config document is invalid."""
