"""The admin client of the operator commands against a real HTTP server on a free port: what
each refusal prints, and that a redirect is reported rather than followed."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import typer

from router.cli.client import AdminClient

TOKEN = "right-token"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            error = {"error": {"message": "a valid bearer token is required", "code": 401}}
            self._send(401, json.dumps(error).encode(), Content_Type="application/json")
        elif self.path.startswith("/moved"):
            self._send(307, b"", Location="https://elsewhere.example/admin")
        elif self.path.startswith("/html"):
            self._send(200, b"<html>a login page</html>", Content_Type="text/html")
        elif self.path.startswith("/broken"):
            self._send(500, b"upstream exploded")
        else:
            seen = {"actor": self.headers.get("X-ABGate-Actor"), "path": self.path}
            self._send(200, json.dumps(seen).encode(), Content_Type="application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        echo = {"body": body, "if_match": self.headers.get("If-Match")}
        self._send(200, json.dumps(echo).encode(), Content_Type="application/json")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def refusal(capsys: pytest.CaptureFixture[str], client: AdminClient, path: str) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as exited:
        client.call("GET", path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("abgate: error: ")  # one line
    return exited.value.exit_code, err


def test_answers_and_parameters(server: str) -> None:
    got = AdminClient(server, TOKEN).call("GET", "/admin/audit", params={"limit": 5, "e": "a b"})
    assert got["path"] == "/admin/audit?limit=5&e=a+b"
    assert got["actor"] is None  # the gateway names the actor after the token, not a header
    sent = AdminClient(server + "/", TOKEN).call(
        "POST", "/admin/x", json={"reason": "ü"}, headers={"If-Match": '"3"'}
    )
    assert sent == {"body": {"reason": "ü"}, "if_match": '"3"'}


def test_a_missing_token_and_a_wrong_one_say_different_things(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, missing = refusal(capsys, AdminClient(server, None), "/admin/experiments")
    assert code == 1
    assert "no admin token: pass --token or set ABGATE_ADMIN_TOKEN" in missing
    code, wrong = refusal(capsys, AdminClient(server, "nope"), "/admin/experiments")
    assert code == 1
    assert "the gateway refused the admin token (wrong token?)" in wrong
    assert "--token" in wrong and "ABGATE_ADMIN_TOKEN" in wrong
    assert "401" in missing and "401" in wrong


def test_other_refusals_are_one_line(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = AdminClient(server, TOKEN)
    code, moved = refusal(capsys, client, "/moved")
    assert code == 1 and "307" in moved and "https://elsewhere.example/admin" in moved
    code, broken = refusal(capsys, client, "/broken")
    assert code == 1 and "500" in broken and "upstream exploded" in broken
    code, html = refusal(capsys, client, "/html")
    assert code == 1 and "something other than JSON" in html


def test_an_unreachable_gateway_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        code, err = refusal(capsys, AdminClient(f"http://127.0.0.1:{port}", TOKEN), "/admin")
    assert code == 3 and "cannot reach the gateway" in err and "refused" in err
    code, err = refusal(capsys, AdminClient("http://no-such-host.invalid", TOKEN), "/admin")
    assert code == 3 and "cannot reach the gateway" in err


def test_a_url_without_its_scheme_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        AdminClient("127.0.0.1:8080", TOKEN)
    assert exited.value.exit_code == 2
    assert "--url must be an http(s) URL" in capsys.readouterr().err
