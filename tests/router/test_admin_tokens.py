"""Named admin tokens (`ABGATE_ADMIN_TOKENS=name:token,...`): parsed and checked at start-up,
each call's token compared with every accepted one, the matching token's name is the actor."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from router.admin.deps import MISSING_TOKEN, WRONG_TOKEN, AdminAuth
from router.cli.serve import load_settings
from router.errors import ConfigError, StoreUnavailable, Unauthorized
from router.settings import Settings

ALICE, BOB, SINGLE = "alice-token-0123456789", "bob-token-9876543210", "single-token-abcdefgh"


def test_names_and_tokens_are_parsed() -> None:
    s = Settings(admin_tokens=f" alice:{ALICE} , ops.bot_2-x:{BOB}:with:colons,")
    assert s.admin_credentials() == {"alice": ALICE, "ops.bot_2-x": f"{BOB}:with:colons"}
    both = Settings(admin_tokens=f"alice:{ALICE}", admin_token=SINGLE)
    assert both.admin_credentials() == {"admin": SINGLE, "alice": ALICE}
    assert Settings(admin_token=SINGLE).admin_credentials() == {"admin": SINGLE}
    assert Settings().admin_credentials() == {}
    for empty in ("", " , "):  # as if unset
        assert Settings(admin_tokens=empty, admin_token=SINGLE).admin_credentials() == {
            "admin": SINGLE
        }
        assert Settings(admin_tokens=empty, admin_token="").admin_credentials() == {}
    assert ALICE not in repr(s) and ALICE not in str(s.model_dump())


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (ALICE, "write name:token"),
        (f":{ALICE}", "write name:token"),
        (f"al ice:{ALICE}", "write name:token"),
        (f"{'a' * 65}:{ALICE}", "write name:token"),
        (f"alice:{ALICE},alice:{BOB}", "the name is taken"),
        (f"controller:{ALICE}", "the name is taken"),
        (f"circuit-breaker:{ALICE}", "the name is taken"),
        (f"config-file:{ALICE}", "the name is taken"),
        (f"anonymous:{ALICE}", "the name is taken"),
        (f"admin:{ALICE}", "the name is taken"),  # ABGATE_ADMIN_TOKEN's name
        (f"alice:{ALICE},bob:{ALICE}", "the same token is given to another name"),
        (f"alice:{SINGLE}", "the same token is given to another name"),
        ("alice:", "printable ASCII without spaces"),
        (f"alice:{ALICE} x", "printable ASCII without spaces"),
        (f"alice:{ALICE}\x01", "printable ASCII without spaces"),
        (f"alice:{ALICE}é", "printable ASCII without spaces"),
    ],
)
def test_refused_at_start_without_quoting_a_token(raw: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(admin_tokens=raw, admin_token=SINGLE)
    message = " ".join(e["msg"] for e in info.value.errors())
    assert why in message
    for token in (ALICE, BOB, SINGLE):
        assert token not in message


def test_the_serve_command_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABGATE_ADMIN_TOKENS", f"alice:{ALICE},bob:{ALICE}")
    with pytest.raises(ConfigError, match=r"ABGATE_ADMIN_TOKENS: .*same token") as info:
        load_settings()
    assert ALICE not in str(info.value)
    monkeypatch.setenv("ABGATE_ADMIN_TOKENS", f"alice:{ALICE},bob:{BOB}")
    assert load_settings().admin_credentials() == {"alice": ALICE, "bob": BOB}


def test_the_token_names_the_actor() -> None:
    auth = AdminAuth(Settings(admin_tokens=f"alice:{ALICE},bob:{BOB}", admin_token=SINGLE))
    assert auth.actor(f"Bearer {ALICE}") == "alice"
    assert auth.actor(f"bearer   {BOB} ") == "bob"
    assert auth.actor(f"Bearer {SINGLE}") == "admin"
    for wrong in (ALICE[:-1], ALICE + "x", BOB.upper(), "x", f"{ALICE},{BOB}"):
        with pytest.raises(Unauthorized) as info:
            auth.actor(f"Bearer {wrong}")
        assert info.value.message == WRONG_TOKEN
    for missing in (None, "", "Bearer", "Bearer ", f"Basic {ALICE}", ALICE):
        with pytest.raises(Unauthorized) as info:
            auth.actor(missing)
        assert info.value.message == MISSING_TOKEN


def test_without_tokens_the_api_is_off_unless_insecure() -> None:
    with pytest.raises(StoreUnavailable, match="ABGATE_ADMIN_TOKEN"):
        AdminAuth(Settings()).actor(f"Bearer {ALICE}")
    assert AdminAuth(Settings(insecure_admin=True)).actor(None) == "anonymous"
    # a configured token wins over --insecure-admin
    secured = AdminAuth(Settings(insecure_admin=True, admin_token=SecretStr(SINGLE)))
    with pytest.raises(Unauthorized):
        secured.actor(None)


def test_short_tokens_are_named_for_the_start_up_warning() -> None:
    auth = AdminAuth(Settings(admin_tokens=f"alice:{ALICE},tiny:short", admin_token="admin-secret"))
    assert auth.short == ["admin", "tiny"]
