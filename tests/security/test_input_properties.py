"""Every numeric and string field of the API, fuzzed with any text at all: a 4xx problem naming the field, never a 5xx.

Each field of every route (REST /api/v1 and the thesis's routes, in JSON bodies,
query strings, path segments, forms and headers) gets values from hypothesis's full
text strategies: every Unicode category, lone surrogates included (hypothesis leaves
them out by default), digits of other scripts ('٣', '²'), signs, spaces, newlines,
numbers of thousands of digits, NaN, Infinity. The other fields of the request are
valid, so the fuzzed one is the one at fault. Properties:

- no 5xx;
- a 4xx is an RFC 9457 problem naming a field (on the thesis's routes, wrapped in its
  ``{status, message, data}`` with the HTTP code kept), and no task was created for it;
- a lone surrogate in a query value, form field or JSON body is a 400/422 naming that field;
- a number field accepts only ASCII digits (a JSON integer in a JSON body).

A JSON body is sent as raw bytes with \\ud800-style escapes (json.dumps writes a lone
surrogate that way; UTF-8 cannot carry it); a query string, form or path as the
percent-encoded or raw bytes a client encoding a lone surrogate would send (ED A0 80).
The stack is real: Redis, 3 anvil nodes, Celery workers (accepted writes are enqueued
and run), the platform deployed, requests made with the admin key so that they reach
each view's own checks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.fuzzing import ADMIN, NOBODY, refusal_field, start_stack, task_records
from tests.stack import wait_task

pytestmark = pytest.mark.timeout(600)

#: Examples per field: ~100 fields, about a minute on 2 cores.
MAX_EXAMPLES = 60
PASSWORD = "fuzz test password 1"
HASH = "0x" + "11" * 32
TX_HASH = "0x" + "22" * 32
UUID = "00000000-0000-4000-8000-000000000000"
NUMBER = re.compile(r"-?[0-9]{1,78}")
SURROGATE = re.compile("[\ud800-\udfff]")

# -- values -----------------------------------------------------------------------------------------

#: Any text at all: every category, lone surrogates (Cs) included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
NUMBER_LIKE = st.one_of(
    st.from_regex(r"[+-]?[0-9]{1,90}", fullmatch=True),  # signs; more digits than uint256 has
    st.integers(min_value=-(2**300), max_value=2**300).map(str),
    st.text(st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=4),  # '٣', '²', 'Ⅻ', fullwidth digits
    st.sampled_from(["²", "٣", "\uff11\uff12", "+1", "-1", " 1", "1 ", "1\n", "\ud800", "1\udc80", "9" * 79, str(2**256),
                     "1" * 5000, "0x1", "1e3", "1.0", "0", ""]),
)
TEXT = st.one_of(ANY_TEXT, st.text(st.characters(categories=("Cs",)), min_size=1, max_size=3), NUMBER_LIKE,
                 st.sampled_from(["[" * 100_000 + "]" * 100_000, '{"a": "\ud800"}', "[NaN]"]))  # fields that carry JSON


class RawJson(str):
    """A JSON literal sent as is (a number of 5,000 digits, nesting 100,000 deep): json.dumps could not write it."""

    def __repr__(self) -> str:
        return f"RawJson({str.__repr__(self[:20])}... {len(self)} characters)"


JSON_ONLY = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([RawJson("1" * 5000), RawJson("-0"), RawJson("1E400"), RawJson("[" * 100_000 + "]" * 100_000)]),
)
#: HTTP header values reach WSGI as ISO-8859-1 text (PEP 3333); a line break cannot be sent in one.
HEADER_TEXT = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=300)


def json_bytes(body: dict[str, Any]) -> bytes:
    """The body as JSON bytes: lone surrogates as \\ud800 escapes, RawJson values verbatim."""
    raws = {f"\x00raw{i}": v for i, v in enumerate(v for v in body.values() if isinstance(v, RawJson))}
    marked = {k: (next(m for m, r in raws.items() if r is v) if isinstance(v, RawJson) else v) for k, v in body.items()}
    text = json.dumps(marked)  # ensure_ascii: every non-ASCII character, lone surrogates too, as a \u escape
    for mark, raw in raws.items():
        text = text.replace(json.dumps(mark), raw)
    return text.encode("ascii")


def encoded(value: str) -> bytes:
    """A value as a client would put it on the wire: UTF-8, a lone surrogate as its 3 bytes (ED A0 80)."""
    return value.encode("utf-8", "surrogatepass")


def urlencoded(fields: dict[str, Any]) -> str:
    return "&".join(f"{quote(encoded(k), safe='')}={quote(encoded(str(v)), safe='')}" for k, v in fields.items())


def multipart(fields: dict[str, Any], *, file: bytes | None) -> tuple[bytes, str]:
    boundary = "fuzz-boundary-7c1b"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + encoded(str(v)) + b"\r\n"
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# -- the fields ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of one route: where it travels, whether it is a number, and valid values for the rest of the request."""

    method: str
    path: str
    name: str
    where: tuple[str, ...]  # path, query, json, form (urlencoded), multipart, header
    number: bool = False
    base: dict[str, Any] = field(default_factory=dict)
    thesis: bool = False
    file: bool = False
    #: What an accepted value may look like, beyond ASCII digits (block tags, say).
    also_accepts: str = ""
    #: An optional field: null, or an empty string, stands for "not given".
    optional: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {self.path} {self.name}"


def rest(method: str, path: str, where: str, base: dict[str, Any], numbers: tuple[str, ...] = (), optional: tuple[str, ...] = (),
         **extra: Any) -> list[Field]:
    """One Field per name of ``base`` (path fields are named in ``path``)."""
    names = re.findall(r"{(\w+)}", path) if where == "path" else list(base)
    return [Field(method, path, n, (where,), number=n in numbers, optional=n in optional, base=base, **extra) for n in names]


def thesis(method: str, path: str, base: dict[str, Any], numbers: tuple[str, ...] = (), optional: tuple[str, ...] = (),
           **extra: Any) -> list[Field]:
    """The thesis reads its parameters from the query string, a form or a JSON body: each field is fuzzed in all three.

    (Not in the query string beside a password: a password is refused there, naming it, whatever else the query holds.)
    """
    def where(name: str) -> tuple[str, ...]:
        return ("form", "json") if "password" in base and name != "password" else ("query", "form", "json")

    return [Field(method, path, n, where(n), number=n in numbers, optional=n in optional, base=base, thesis=True, **extra)
            for n in base]


ACCOUNT = "account-placeholder"  # replaced by the stack's own unlocked account
FIELDS: list[Field] = [
    *rest("GET", "/api/v1/nodes/events", "query", {"limit": "10"}, ("limit",)),
    *rest("GET", "/api/v1/nodes/history", "query", {"limit": "10"}, ("limit",)),
    *rest("GET", "/api/v1/tasks/{task_id}", "path", {"task_id": UUID}),
    *rest("GET", f"/api/v1/tasks/{UUID}", "query", {"wait": "0"}, ("wait",)),
    *rest("POST", "/api/v1/accounts", "json", {"password": PASSWORD}),
    *rest("POST", "/api/v1/accounts/{addr}/unlock", "path", {"addr": NOBODY}),
    *rest("POST", f"/api/v1/accounts/{NOBODY}/unlock", "json", {"password": PASSWORD, "seconds": 60}, ("seconds",)),
    *rest("GET", "/api/v1/accounts/{addr}/balance", "path", {"addr": NOBODY}),
    *rest("POST", "/api/v1/transactions", "json", {"from": ACCOUNT, "to": NOBODY, "value_wei": "1"}, ("value_wei",)),
    *[f for change in ("add", "delete", "set")
      for f in rest("POST", f"/api/v1/token/{change}", "json", {"address": NOBODY, "value": "1"}, ("value",))],
    *rest("POST", "/api/v1/token/transfer", "json", {"from": ACCOUNT, "to": NOBODY, "value": "1"}, ("value",)),
    *rest("GET", "/api/v1/token/balance/{addr}", "path", {"addr": NOBODY}),
    *rest("POST", "/api/v1/contracts", "json", {"abi": [], "bytecode": "0x00", "gas_price": "1000000000", "gas_limit": 100000},
          ("gas_price", "gas_limit"), ("gas_price", "gas_limit")),
    *rest("POST", "/api/v1/contracts", "json", {"name": "PlatformToken"}),
    *rest("GET", "/api/v1/projects", "query", {"offset": "1", "limit": "10"}, ("offset", "limit")),
    *rest("GET", "/api/v1/projects/{pid}", "path", {"pid": "1"}, ("pid",)),
    *rest("GET", "/api/v1/projects/1", "query", {"account": ACCOUNT}),
    *rest("POST", "/api/v1/projects/{pid}/buy", "path", {"pid": "1"}, ("pid",)),
    *rest("POST", "/api/v1/projects/1/buy", "json", {"buyer": ACCOUNT}),
    *rest("GET", "/api/v1/projects/{pid}/file", "path", {"pid": "1"}, ("pid",)),
    *rest("GET", "/api/v1/projects/1/file", "query", {"account": ACCOUNT}),
    *rest("POST", "/api/v1/projects", "multipart", {"publisher": ACCOUNT, "name": "fuzzed", "price": "5"}, ("price",), file=True),
    *rest("GET", "/api/v1/chain/blocks/{block}", "path", {"block": "1"}, ("block",),
          also_accepts=r"0x[0-9a-fA-F]{1,16}|0x[0-9a-fA-F]{64}|latest|earliest|pending|safe|finalized"),
    *rest("GET", "/api/v1/chain/blocks/1", "query", {"full": "true"}),
    *rest("GET", "/api/v1/chain/blocks/{block}/transaction-count", "path", {"block": "1"}, ("block",),
          also_accepts=r"0x[0-9a-fA-F]{1,16}|0x[0-9a-fA-F]{64}|latest|earliest|pending|safe|finalized"),
    *rest("GET", "/api/v1/chain/transactions/{digest}", "path", {"digest": TX_HASH}),
    *rest("GET", "/api/v1/chain/transactions/{digest}/receipt", "path", {"digest": TX_HASH}),
    *rest("POST", "/api/v1/mining", "json", {"action": "stop"}),
    *rest("POST", "/api/v1/mining", "json", {"action": "stop", "block_time": 1}, ("block_time",), ("block_time",)),
    *rest("GET", "/api/v1/events", "query", {"account": NOBODY, "project": "1", "type": "published", "cursor": "", "limit": "10"},
          ("project", "limit"), ("account", "project", "type", "cursor")),
    *rest("POST", "/api/v1/keys", "json", {"name": "fuzzed", "role": "user"}),
    *rest("DELETE", "/api/v1/keys/{key_id}", "path", {"key_id": "0123456789abcdef"}),
    Field("POST", "/api/v1/token/add", "Idempotency-Key", ("header",), base={"address": NOBODY, "value": "1"}),
    # the thesis's routes (app/thesis.py)
    *thesis("POST", "/contract/deploy", {"abi": "[]", "bytecode": "0x00", "gasPrice": "1000000000", "gasLimit": "100000"},
            ("gasPrice", "gasLimit"), ("gasPrice", "gasLimit")),
    *thesis("POST", "/contract/deploy", {"contract": "PlatformToken", "wait": "0"}, ("wait",)),
    *thesis("POST", "/admin/new", {"password": PASSWORD}),
    # NOBODY, not the stack's account: wrong passwords for a real account are rate limited (429) before any field is read.
    *thesis("POST", "/admin/unlock", {"address": NOBODY, "password": PASSWORD, "seconds": "3600"}, ("seconds",)),
    *[f for change in ("add", "delete", "set")
      for f in thesis("POST", f"/token/{change}", {"address": NOBODY, "value": "1", "wait": "0"}, ("value", "wait"))],
    *thesis("POST", "/token/transfer", {"from": ACCOUNT, "to": NOBODY, "value": "1", "wait": "0"}, ("value", "wait")),
    *thesis("POST", "/token/publish", {"address": ACCOUNT, "time": "2026-11-27", "projectName": "fuzzed", "projectHash": HASH,
                                       "value": "5", "wait": "0"}, ("value", "wait")),
    *thesis("POST", "/token/buy", {"address": ACCOUNT, "time": "2026-11-27", "projectName": "fuzzed", "projectHash": HASH}),
    *thesis("POST", "/token", {"address": ACCOUNT, "project": "1", "wait": "0"}, ("project", "wait"), ("project",)),
    *thesis("GET", "/token/balance", {"address": NOBODY}),
    *thesis("GET", "/tx/blockhash", {"blockHash": HASH}),
    *thesis("GET", "/tx/blocknumber", {"blockNum": "1"}, ("blockNum",), also_accepts="latest|earliest|pending"),
    *thesis("GET", "/tx/txhash", {"txHash": TX_HASH}),
    *thesis("GET", "/tx/txNum", {"blockNum": "1"}, ("blockNum",), also_accepts="latest|earliest|pending"),
    *thesis("GET", "/tx/receipt", {"txHash": TX_HASH}),
]


def values_for(f: Field, where: str) -> st.SearchStrategy[Any]:
    if where == "header":
        return HEADER_TEXT
    text = st.one_of(NUMBER_LIKE, TEXT) if f.number else TEXT
    if where == "path":
        # A "/" (or a "." or ".." segment) makes another path, which routing answers (404 naming no field): not this field.
        text = text.filter(lambda v: v not in ("", ".", "..") and "/" not in v)
    if f.name == "wait":
        # A valid wait blocks up to that many seconds by design (the task is real): fuzz everything else.
        text = text.filter(lambda v: not (isinstance(v, str) and NUMBER.fullmatch(v) and 0 < int(v) <= 60))
    if where == "json":
        values = st.one_of(text, JSON_ONLY)
        if f.name == "wait":
            values = values.filter(lambda v: not (type(v) is int and 0 < v <= 60))
        return values
    return text


# -- the stack ---------------------------------------------------------------------------------------


@dataclass
class Fuzzed:
    stack: Any
    client: Any
    account: str


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, anvil_binary):
    """The stack, and an account of its admin, funded and unlocked, so signers' fields pass and the fuzzed one is reached."""
    stack = start_stack(tmp_path_factory.mktemp("input-fuzz"))
    try:
        client = stack.app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = ADMIN["Authorization"]
        created = client.post("/api/v1/accounts", json={"password": PASSWORD})
        assert created.status_code == 202, created.get_json()
        done = wait_task(client, created.get_json()["id"])
        assert done["state"] == "confirmed", done
        account = done["params"]["address"]
        unlocked = client.post(f"/api/v1/accounts/{account}/unlock", json={"password": PASSWORD, "seconds": 3600})
        assert unlocked.status_code == 200, unlocked.get_json()
        yield Fuzzed(stack, client, account)
    finally:
        stack.close()


def send(fuzzed: Fuzzed, f: Field, where: str, value: Any) -> Any:
    fields = {k: (fuzzed.account if v == ACCOUNT else v) for k, v in f.base.items()}
    path = f.path
    headers: dict[str, str] = {}
    if where == "path":
        path = path.replace("{" + f.name + "}", quote(encoded(str(value)), safe=""))
        fields = {}
    elif where == "header":
        headers[f.name] = value
    else:
        fields[f.name] = value
    path = re.sub(r"{(\w+)}", lambda m: str(f.base[m.group(1)]), path)
    method = "POST" if f.thesis and where != "query" else f.method  # the thesis's reads take GET and POST
    if where == "query" or (where in ("path", "header") and method in ("GET", "DELETE")):
        query = urlencoded(fields)
        return fuzzed.client.open(path + ("?" + query if query else ""), method=method, headers=headers)
    if where == "json" or where in ("path", "header"):
        return fuzzed.client.open(path, method=method, data=json_bytes(fields), content_type="application/json", headers=headers)
    if where == "form":
        return fuzzed.client.open(path, method=method, data=urlencoded(fields).encode("ascii"),
                                  content_type="application/x-www-form-urlencoded", headers=headers)
    body, content_type = multipart(fields, file=b"fuzzed file" if f.file else None)
    return fuzzed.client.open(path, method=method, data=body, content_type=content_type, headers=headers)


def is_accepted_number(f: Field, value: Any, where: str) -> bool:
    if (where == "json" and type(value) is int) or (f.optional and value in (None, "")):
        return True
    return isinstance(value, str) and bool(NUMBER.fullmatch(value) or (f.also_accepts and re.fullmatch(f.also_accepts, value)))


@pytest.mark.parametrize("f", FIELDS, ids=[f.label for f in FIELDS])
def test_every_field_is_refused_with_a_problem_naming_it(fuzzed, f):
    @given(where=st.sampled_from(f.where), data=st.data())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def fuzz(where, data):
        value = data.draw(values_for(f, where), label=f.name)
        before = task_records(fuzzed.stack)
        response = send(fuzzed, f, where, value)
        status = response.status_code
        shown = f"{f.label} in {where} = {value!r:.200} -> {status} {response.get_data(as_text=True)[:300]}"
        assert status < 500, shown
        surrogate = isinstance(value, str) and SURROGATE.search(value) is not None
        if status >= 400:
            named = refusal_field(response, thesis=f.thesis)
            assert task_records(fuzzed.stack) == before, f"a refused request created a task: {shown}"
            if surrogate and where in ("query", "json", "form", "multipart"):
                assert status in (400, 422) and named == f.name, shown
        else:
            assert not surrogate, f"a lone surrogate was accepted: {shown}"
            if f.number:
                assert is_accepted_number(f, value, where), f"accepted a number that is not ASCII digits: {shown}"

    fuzz()
