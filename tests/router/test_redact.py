"""Redaction of captures: card numbers in the ways people write them (checked with Luhn, so that
ordinary numbers stay), e-mail addresses in any script, and ordinary prose left alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.signals.redact import Redactor, luhn_valid

ALL = Redactor.from_config(["emails", "phone_numbers", "credit_cards"])
CARDS = Redactor.from_config(["credit_cards"])
# 4111 1111 1111 1111 in full-width digits, split by ideographic spaces
FULL_WIDTH_CARD = "\u3000".join(["\uff14" + "\uff11" * 3] + ["\uff11" * 4] * 3)


def with_check_digit(body: str) -> str:
    """`body` and the digit that makes it pass the Luhn check."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the case: a card followed by a period
        ("My card is 4111 1111 1111 1111.", "My card is [CARD]."),
        ("card: 4111111111111111, thanks", "card: [CARD], thanks"),
        ("4111-1111-1111-1111!", "[CARD]!"),
        ("dots 4111.1111.1111.1111.", "dots [CARD]."),
        ("double 4111  1111  1111  1111?", "double [CARD]?"),
        ("mixed spacing 4111 1111  1111 1111;", "mixed spacing [CARD];"),
        ("no-break 4111\u00a01111\u00a01111\u00a01111", "no-break [CARD]"),
        ("(5555 5555 5555 4444)", "([CARD])"),
        ('{"card": "5555555555554444"}', '{"card": "[CARD]"}'),
        ("amex 3782 822463 10005 and diners 3056 930902 5904.", "amex [CARD] and diners [CARD]."),
        ("visa-13 4222222222222 ok", "visa-13 [CARD] ok"),
        ("19 digits 6011 1111 1111 1111 110", "19 digits [CARD]"),
        # a card right after other digits, and followed by an expiry or a code
        ("qty 2 4111 1111 1111 1111 please", "qty 2 [CARD] please"),
        ("in 2024 4111 1111 1111 1111 was charged", "in 2024 [CARD] was charged"),
        ("4111 1111 1111 1111 12 26", "[CARD] 12 26"),
        ("4111 1111 1111 1111 exp 12/26 cvc 123", "[CARD] exp 12/26 cvc 123"),
        ("two: 4111 1111 1111 1111 5555 5555 5555 4444", "two: [CARD] [CARD]"),
        ("x4111111111111111x", "x[CARD]x"),
        # typographic separators, digits of other scripts
        ("en dash 4111\u20131111\u20131111\u20131111.", "en dash [CARD]."),
        (f"full-width {FULL_WIDTH_CARD}\u3002", "full-width [CARD]\u3002"),
        ("\u0664" + "\u0661" * 15, "[CARD]"),  # Arabic-Indic digits
    ],
)
def test_card_numbers_as_people_write_them(text: str, expected: str) -> None:
    assert ALL(text) == expected
    assert CARDS(text) == expected  # the card rule alone finds them


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to josé.garcía@exemple.fr.", "write to [EMAIL]."),
        ("x@münchen.de, y@bücher.example", "[EMAIL], [EMAIL]"),
        ("пользователь@пример.рф", "[EMAIL]"),
        ("联系 用户@例子.广告 谢谢", "联系 [EMAIL] 谢谢"),
        ("ana@xn--bcher-kva.xn--p1ai", "[EMAIL]"),
        ("full-width ana\uff20example.com", "full-width [EMAIL]"),
        ("ideographic dot ana@example。com", "ideographic dot [EMAIL]"),
        ("ascii ana.m+tag@mail.example.co.uk today", "ascii [EMAIL] today"),
        ("https://example.com/p?user=ana@example.com", "https://example.com/p?user=[EMAIL]"),
    ],
)
def test_email_addresses_in_any_script(text: str, expected: str) -> None:
    assert ALL(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "In 2024 I paid 1,299.00 EUR for 3 items; order 12345 shipped on 2024-01-15 at 10:30.",
        "Order #1234567812345678 (16 digits, not a card) and invoice INV-2024-000123.",
        "Tracking 1234 5678 9012 3456 arrives on 15.01.2024; ref 9876-5432-1098-7654.",
        "pi is 3.1415926535897932, e is 2.718281828459045, and 0.1 + 0.2 = 0.30000000000000004",
        "Prices: 1.99 2.49 3.99 4.25 5.00 6.50 7.25 8.99 9.99 10.49 11.99",
        "full-width, not Luhn: \uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 "
        "\uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff12",
        "version 10.0.0.1, server 192.168.100.200, released 2024.01.15 14:00",
        "population 8,100,000,000, 1e10 requests, 99.9 % uptime, room 101, 4 x 250 g",
        "user@localhost and @mentions and a@b are not addresses",
    ],
)
def test_ordinary_prose_with_numbers_is_left_alone(text: str) -> None:
    assert ALL(text) == text


def test_the_card_rule_leaves_phone_numbers_and_non_luhn_numbers_alone() -> None:
    for text in ("+1 (555) 123-4567", "+49 30 1234 56789", "+49 301 234 567 895",
                 "4111 1111 1111 1112", "4111111111111112", "1111-2222-3333-4445"):  # fmt: skip
        assert CARDS(text) == text, text
    # with the phone rule too, phone numbers are phone numbers, not cards
    assert ALL("call +1 (555) 123-4567 or +44 20 7946 0958") == "call [PHONE] or [PHONE]"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")
    assert with_check_digit("411111111111111") == "4111111111111111"


LAYOUTS = {  # digits per group
    13: [[13], [4, 4, 4, 1]],
    14: [[14], [4, 6, 4], [4, 4, 4, 2]],
    15: [[15], [4, 6, 5], [4, 4, 4, 3]],
    16: [[16], [4, 4, 4, 4]],
    17: [[17], [4, 4, 4, 4, 1]],
    18: [[18], [4, 4, 4, 4, 2]],
    19: [[19], [4, 4, 4, 4, 3]],
}


def _layout(digits: str, groups: list[int], sep: str) -> str:
    out, at = [], 0
    for n in groups:
        out.append(digits[at : at + n])
        at += n
    return sep.join(out)


@st.composite
def written_cards(draw: st.DrawFn, valid: bool) -> tuple[str, str]:
    length = draw(st.integers(13, 19))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    digits = with_check_digit(draw(st.sampled_from("23456")) + body[1:])
    if not valid:
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    # a longer number written 4-4-4-4-k holds 4-4-4-k from its second group: a card of its own
    # if that passes Luhn, so the wrong numbers of 17 to 19 digits are written in one piece
    layouts = LAYOUTS[length] if valid or length <= 16 else [[length]]
    groups = draw(st.sampled_from(layouts))
    sep = draw(st.sampled_from([" ", "  ", "-", ".", "\u00a0"]))
    return digits, _layout(digits, groups, sep)


PROSE = st.sampled_from(["", "My card is ", "card: ", "(", "pay with ", "4 items, "])
AFTER = st.sampled_from(["", ".", ",", "!", "?", ")", ";", ". Thanks", " and 3 more", "\n"])


@given(written_cards(valid=True), PROSE, AFTER)
def test_every_luhn_valid_card_layout_is_redacted(
    card: tuple[str, str], before: str, after: str
) -> None:
    digits, written = card
    out = ALL(before + written + after)
    assert out == before + "[CARD]" + after
    assert digits not in out.replace(" ", "")


@given(written_cards(valid=False), PROSE, AFTER)
def test_a_number_failing_luhn_is_no_card(card: tuple[str, str], before: str, after: str) -> None:
    _, written = card
    text = before + written + after
    assert CARDS(text) == text
