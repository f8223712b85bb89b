"""Strict input: each value the issue found answering 500 (or accepted) is a 4xx naming its field.

Pure: the validators, the block and cursor parsers, and a bare Flask app with
``validation.install`` (no Redis, no node). tests/security/ fuzzes the same on a real stack.
"""

from __future__ import annotations

import base64
import json

import pytest
from flask import Flask, jsonify, request

from app import errors, validation
from app.validation import json_body
from errors import ValidationError
from services.chain import block_id
from services.events import decode_cursor, encode_cursor
from services.fields import MAX_UINT256, address, amount, integer, text, tx_hash

DEPLOYMENT = "0x" + "ab" * 32
NOT_ASCII_DIGITS = ["²", "٣", "\uff11", "Ⅻ", "1٣", "+1", " 1", "1 ", "1\n", "1_000", "0x1", "1e3", "1.0", "", "\ud800", "1\udc80"]


@pytest.mark.parametrize("value", [*NOT_ASCII_DIGITS, "9" * 79, "1" * 5000, 1.0, True, None, [1], {"a": 1}])
def test_an_amount_is_ascii_digits_only(value):
    with pytest.raises(ValidationError) as caught:
        amount(value, "value")
    assert caught.value.field == "value" and 400 <= caught.value.status < 500


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("123", 123), (5, 5), ("0" * 78, 0), (str(MAX_UINT256), MAX_UINT256),
                                                 (MAX_UINT256, MAX_UINT256)])
def test_an_amount_in_range_is_read(value, expected):
    assert amount(value, "value") == expected


@pytest.mark.parametrize("value", [MAX_UINT256 + 1, str(MAX_UINT256 + 1), -1, "-1"])
def test_an_amount_outside_uint256_is_refused(value):
    with pytest.raises(ValidationError, match=r"uint256|negative"):
        amount(value, "value")


@pytest.mark.parametrize("value", [*NOT_ASCII_DIGITS, "-", "--1", "1" * 5000, "9" * 79, 2.0, False])
def test_an_integer_is_ascii_digits_only(value):
    with pytest.raises(ValidationError) as caught:
        integer(value, "limit", low=-10, high=10)
    assert caught.value.field == "limit"


def test_an_integer_keeps_its_bounds_and_status():
    assert integer("-3", "n", low=-5, high=5) == -3
    assert integer(7, "n", low=0, high=7) == 7
    with pytest.raises(ValidationError) as caught:
        integer("8", "n", low=0, high=7, status=400)
    assert caught.value.status == 400


@pytest.mark.parametrize("check", [address, tx_hash])
def test_a_hex_value_with_a_trailing_newline_is_refused(check):
    value = "0x" + "a" * (40 if check is address else 64)
    assert check(value, "f")
    with pytest.raises(ValidationError):
        check(value + "\n", "f")


def test_text_with_a_lone_surrogate_is_refused():
    assert text("ok ✓", "name", max_length=10) == "ok ✓"
    with pytest.raises(ValidationError) as caught:
        text("a\ud800", "name", max_length=10)
    assert (caught.value.field, caught.value.status) == ("name", 400)


@pytest.mark.parametrize("raw", ["٣", "²", "1\n", "0x1\n", "18446744073709551616", "9223372036854775808", "0x8000000000000000",
                                 "0x" + "a" * 17, "LATEST", " latest", "0x" + "a" * 63, "-1"])
def test_a_block_is_a_number_tag_or_hash_in_ascii(raw):
    with pytest.raises(ValidationError) as caught:
        block_id(raw, "blockNum")
    assert caught.value.field == "blockNum"


@pytest.mark.parametrize(("raw", "expected"), [("0", ("byNumber", "0x0")), ("9223372036854775807", ("byNumber", "0x7fffffffffffffff")),
                                               ("0x1F", ("byNumber", "0x1f")), ("safe", ("byNumber", "safe")),
                                               ("0x" + "A" * 64, ("byHash", "0x" + "a" * 64))])
def test_a_block_in_range_is_read(raw, expected):
    assert block_id(raw) == expected


def cursor(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", [
    cursor({"b": 1e400, "i": 0, "d": DEPLOYMENT[:18]}),  # json reads 1e400 as inf: int(inf) raised OverflowError
    cursor({"b": "٣", "i": 0, "d": DEPLOYMENT[:18]}),  # int("٣") is 3
    cursor({"b": 10**30, "i": 0, "d": DEPLOYMENT[:18]}),  # past any block: sent to the node as is
    cursor({"b": 1.5, "i": 0, "d": DEPLOYMENT[:18]}),
    cursor({"b": True, "i": 0, "d": DEPLOYMENT[:18]}),
    cursor({"b": 1, "i": 2**40, "d": DEPLOYMENT[:18]}),
    cursor({"b": 1, "i": 0, "d": DEPLOYMENT[:18], "x": 1}),
    cursor([1, 2]),
    base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode(),  # RecursionError in json.loads
    "é" * 10, "A" * 5000, "%%%",
])
def test_a_cursor_not_made_here_is_a_400_naming_it(raw):
    with pytest.raises(ValidationError) as caught:
        decode_cursor(raw, DEPLOYMENT)
    assert (caught.value.field, caught.value.status) == ("cursor", 400)


def test_a_cursor_made_here_is_read_and_bound_to_its_deployment():
    raw = encode_cursor(12, -1, DEPLOYMENT)
    assert decode_cursor(raw, DEPLOYMENT) == (12, -1)
    with pytest.raises(ValidationError) as caught:
        decode_cursor(raw, "0x" + "cd" * 32)
    assert caught.value.status == 409


# -- the request layer ------------------------------------------------------------------------------


@pytest.fixture
def client():
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    errors.register(app)
    validation.install(app)

    @app.route("/echo", methods=["GET", "POST"])
    def echo():
        if request.is_json:
            return jsonify(json_body(request))
        return jsonify({"args": request.args.to_dict(), "form": request.form.to_dict()})

    assert not app.json.sort_keys  # the stricter JSON provider keeps how the app was configured
    return app.test_client()


def problem_field(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return str(response.get_json()["field"])


@pytest.mark.parametrize("query", ["limit=%ED%A0%80", "limit=%FF", "limit=a%C0%AFb"])
def test_a_query_value_that_is_not_utf8_is_a_400_naming_it(client, query):
    assert problem_field(client.get(f"/echo?{query}"), 400) == "limit"


def test_raw_non_utf8_bytes_in_a_query_string_are_a_400_not_a_500(client):
    # werkzeug's own request.args raised UnicodeDecodeError on these
    assert problem_field(client.get("/echo", environ_overrides={"QUERY_STRING": "limit=\xff"}), 400) == "limit"


def test_a_query_name_that_is_not_utf8_is_named_escaped(client):
    assert problem_field(client.get("/echo?%ED%A0%80=1"), 400) == "\\udced\\udca0\\udc80"


def test_valid_unicode_still_passes(client):
    assert client.get("/echo?a=%E2%82%AC").get_json()["args"] == {"a": "€"}
    body = b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\n\xe2\x82\xac\r\n--b--\r\n'
    assert client.post("/echo", data=body, content_type="multipart/form-data; boundary=b").get_json()["form"] == {"name": "€"}
    assert client.post("/echo", data=b'{"a": "\\u20ac", "b": [1.5]}', content_type="application/json").get_json() == {"a": "€", "b": [1.5]}


@pytest.mark.parametrize(("body", "content_type"), [
    (b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\n\xed\xa0\x80\r\n--b--\r\n', "multipart/form-data; boundary=b"),
    (b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nok\xff\r\n--b--\r\n', "multipart/form-data; boundary=b"),
    (b"name=%ED%A0%80", "application/x-www-form-urlencoded"),
    (b"name=\xff", "application/x-www-form-urlencoded"),
])
def test_a_form_field_that_is_not_utf8_is_a_400_naming_it(client, body, content_type):
    assert problem_field(client.post("/echo", data=body, content_type=content_type), 400) == "name"


DEEP = "args" + "[0]" * 64


@pytest.mark.parametrize(("body", "fields"), [
    (b'{"password": "\\ud800"}', "password"),
    (b'{"name": "ok\\udfff"}', "name"),
    (b'{"args": [1, {"k": "\\ud83d"}]}', "args[1].k"),
    (b'{"\\ud800": 1}', "\\ud800"),
    (b'{"value": NaN}', "value"),
    (b'{"value": -Infinity}', "value"),
    (b'{"value": 1E400}', "value"),
    (b'{"args": ' + b"[" * 70 + b"]" * 70 + b"}", DEEP),
    # json.loads raised RecursionError (not the ValueError Flask handles) where the interpreter's recursion limit is lower
    (b'{"args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ("body", DEEP)),
    (b'{"value": ' + b"1" * 5000 + b"}", "body"),  # past int()'s 4,300-digit limit
], ids=["surrogate", "surrogate-end", "nested-surrogate", "surrogate-key", "nan", "infinity", "1e400", "deep", "deeper",
        "5000-digits"])
def test_a_json_value_that_is_not_json_text_is_a_400_naming_it(client, body, fields):
    field = problem_field(client.post("/echo", data=body, content_type="application/json"), 400)
    assert field in fields if isinstance(fields, tuple) else field == fields


@pytest.mark.parametrize(("document", "too_deep"), [
    ("[" * 513 + "]" * 513, True),
    ("[" * 512 + "]" * 512, False),
    ('{"a": "' + "[" * 5000 + '"}', False),  # brackets inside a string do not nest
    ('{"a": "\\"' + "[" * 5000 + '"}', False),  # nor after an escaped quote
    ('{"a": "\\\\"' + ", " + "[" * 600 + "]" * 600 + "}", True),  # an escaped backslash ends no string
    (b'[{"k": [' * 200 + b"]}]" * 200, True),
    ("[]" * 5000, False),
])
def test_json_depth_is_found_without_parsing(document, too_deep):
    assert validation.is_json_too_deep(document) is too_deep


def test_a_json_form_field_is_parsed_within_a_body_limits():
    assert validation.json_text('[1, {"a": "b"}]', "abi") == [1, {"a": "b"}]
    for bad in ["[" * 100_000 + "]" * 100_000, '["\\ud800"]', "[NaN]", "{", 5]:
        with pytest.raises(ValidationError) as caught:
            validation.json_text(bad, "abi")
        assert caught.value.field.startswith("abi")
