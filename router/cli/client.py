"""The admin API client of the operator commands, on the standard library.

`urllib.request` rather than httpx: it loads in a fraction of the time, which is most of what a
one-shot command such as `abgate rollback` costs (bench/cli.py measures it). It honours the
proxy variables (`HTTPS_PROXY`, `NO_PROXY`) as httpx does, and follows no redirect: an admin call
that is redirected is reported, never replayed somewhere else without its body.

Every failure becomes one line on stderr and an exit code (router/cli/common.py): 1 the gateway
refused, 3 it could not be reached. A 401 says whether a token was sent at all, since the
gateway answers the same status for a missing and a wrong one.

The client claims no identity: the gateway audits a change under the name of the admin token it
came with (`ABGATE_ADMIN_TOKENS`), so one token per operator tells operators apart.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from typing import Any, NoReturn

from router.cli.common import DEFAULT_URL, TOKEN_HELP, fail


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


class AdminClient:
    """A thin client of the admin API with errors turned into one-line exits."""

    def __init__(self, url: str, token: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            fail(f"--url must be an http(s) URL such as {DEFAULT_URL}, not {url!r}", code=2)
        self.url = url.rstrip("/")
        self._token = token or None
        self._headers = {"Accept": "application/json"}
        if self._token:
            self._headers["Authorization"] = f"Bearer {self._token}"
        self._opener = urllib.request.build_opener(_NoRedirect)

    def call(
        self,
        method: str,
        path: str,
        *,
        timeout: float = 10,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer (None when empty)."""
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body: bytes | None = None
        sent = dict(self._headers)
        if json is not None:
            body = _dumps(json)
            sent["Content-Type"] = "application/json"
        elif content is not None:
            body = content.encode() if isinstance(content, str) else content
        sent.update(headers or {})
        request = urllib.request.Request(url, data=body, headers=sent, method=method)
        try:
            with self._opener.open(request, timeout=timeout) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            self._refused(exc)
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            fail(f"cannot reach the gateway at {self.url}: {_why(exc)}", code=3)
        except ValueError as exc:  # a URL or header http.client cannot send (say, non-Latin-1)
            fail(f"cannot send the request to {self.url}: {exc}", code=2)
        try:
            return _loads(raw) if raw else None
        except ValueError:
            fail(f"the gateway at {self.url} answered {path} with something other than JSON")

    def _refused(self, exc: urllib.error.HTTPError) -> NoReturn:
        status = exc.code
        reason = (exc.reason if isinstance(exc.reason, str) else "") or "error"
        try:
            text = exc.read().decode(errors="replace")
        except OSError:
            text = ""
        finally:
            exc.close()
        if status == 401:
            if self._token is None:
                fail(f"401 {reason.lower()}: no admin token: {TOKEN_HELP}")
            fail(
                f"401 {reason.lower()}: the gateway refused the admin token (wrong token?); "
                f"{TOKEN_HELP} with the gateway's admin token"
            )
        if 300 <= status < 400:
            where = exc.headers.get("Location", "?")
            fail(f"{status}: the gateway redirected to {where}; pass that URL with --url")
        try:
            message = _loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text.strip()[:200] or reason
        fail(f"{status} {reason.lower()}: {message}")


def _why(exc: BaseException) -> str:
    """The cause of a failed connection in words: 'connection refused', 'timed out'..."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or reason.__class__.__name__


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _loads(raw: bytes | str) -> Any:
    return json.loads(raw)
