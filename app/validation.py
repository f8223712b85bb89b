"""Request parsing that names the field at fault: every check raises ValidationError(field, why).

Input is strict, so that a bad value is a 4xx problem naming its field before anything
is enqueued, never a 500 from deep inside:

- numbers are ASCII digits (``str.isdigit`` and ``\\d`` also accept '²' and '٣', which
  ``int()`` then refuses or, worse, reads as 3), at most 78 of them, within stated bounds;
  0x hex only where a route documents it (block numbers);
- strings are valid Unicode: a lone surrogate (JSON's "\\ud800") cannot be encoded, so
  it would fail wherever the value is hashed, stored or signed. ``StrictRequest`` turns
  invalid UTF-8 in a query string or form into lone surrogates instead of werkzeug's
  silent repairs (U+FFFD, or the bytes left percent-encoded), and ``check_query``,
  ``StrictFormDataParser`` and ``json_body`` refuse them, naming the field (400);
- JSON is RFC 8259 JSON: no NaN or Infinity, nesting at most MAX_JSON_DEPTH deep; and a
  document too deep to parse safely is malformed JSON for every reader of a body
  (``StrictJSONProvider``): in ESP's processes it would otherwise crash the interpreter.

``install(app)`` puts the request-level checks in place; the field checks themselves
(numbers, addresses, hashes, text) are ``services.fields``'.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import IO, Any
from urllib.parse import parse_qsl

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.datastructures import Headers, MultiDict
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.utils import cached_property

from errors import ValidationError
from services.fields import INVALID_TEXT, is_valid_text

#: Deeper JSON than this is no request ESP takes (an ABI's tuples nest a few levels).
MAX_JSON_DEPTH = 64
INVALID_NAME = "has a name that is not valid Unicode text (UTF-8, no lone surrogates)"


# -- text ---------------------------------------------------------------------------------------------


def field_name(name: str) -> str:
    """A field name safe to echo in a problem (a lone surrogate in it shown as its \\u escape)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def check_pairs(pairs: Any, *, status: int = 400) -> None:
    """Refuse the first (name, value) pair whose name or value is not valid Unicode, naming it."""
    for name, value in pairs:
        if name is None:  # a multipart part without a name: nothing a view can read
            continue
        if not is_valid_text(name):
            raise ValidationError(field_name(name), INVALID_NAME, status=status)
        if isinstance(value, str) and not is_valid_text(value):
            raise ValidationError(name, INVALID_TEXT, status=status)


# -- JSON ---------------------------------------------------------------------------------------------


#: How deep any JSON the API reads may nest before it is parsed at all: far past what a request needs
#: (MAX_JSON_DEPTH), far below what Python's C parser can recurse through without crashing.
MAX_PARSE_DEPTH = 512
_JSON_SPECIAL = re.compile(rb'["\\\[\]{}]')
_QUOTE, _BACKSLASH, _OPENERS, _CLOSERS = ord('"'), ord("\\"), (ord("["), ord("{")), (ord("]"), ord("}"))


def is_json_too_deep(document: str | bytes, limit: int = MAX_PARSE_DEPTH) -> bool:
    """Whether a JSON text nests arrays and objects more than ``limit`` deep, found in one pass without parsing it.

    Python's json parser recurses in C once per level. eth-account imports py_ecc, which
    raises the interpreter's recursion limit to 100,000, so in ESP's processes a document
    nested ~100,000 deep is not a RecursionError but a crashed process (a segfault).
    """
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the common case, at C speed
    depth, in_string, escaped = 0, False, -1
    for match in _JSON_SPECIAL.finditer(data):
        at = match.start()
        char = data[at]
        if in_string:
            if at == escaped:
                continue
            if char == _BACKSLASH:
                escaped = at + 1
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif char in _CLOSERS:
            depth -= 1
    return False


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, where a document nested too deep to parse safely is malformed JSON (a ValueError).

    get_json handles ValueError (silent: None; otherwise 400); RecursionError, or a crash,
    would reach any code reading the body (a view, a rate limit's key).
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if is_json_too_deep(s):
            raise ValueError(f"the JSON nests more than {MAX_PARSE_DEPTH} levels deep")
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply to parse") from None


def json_text(value: Any, name: str) -> Any:
    """A JSON document carried in a string field (a form field holding an ABI, say), parsed within a body's limits."""
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string of JSON")
    try:
        if is_json_too_deep(value):
            raise ValueError("nested too deeply")
        data = json.loads(value)
    except (ValueError, RecursionError):
        raise ValidationError(name, "must be valid JSON") from None
    check_json_value(data, root=name)
    return data


def check_json_value(data: Any, *, root: str = "body") -> None:
    """Refuse a lone surrogate (in a key or a string), NaN/Infinity or nesting deeper than MAX_JSON_DEPTH, naming the field.

    Walked with an explicit stack: the depth of the data never becomes the depth of Python's.
    """
    stack: list[tuple[str, Any, int]] = [(root, data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValidationError(path, f"is nested more than {MAX_JSON_DEPTH} levels deep", status=400)
        if isinstance(value, str):
            if not is_valid_text(value):
                raise ValidationError(path, INVALID_TEXT, status=400)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationError(path, "must be a finite number (NaN and Infinity are not JSON)", status=400)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not is_valid_text(key):
                    raise ValidationError(field_name(key), INVALID_NAME, status=400)
                stack.append((key if depth == 0 and root == "body" else f"{path}.{key}", item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a missing or malformed body is a 400 naming ``body``, a bad value one naming its field."""
    if not request.data:
        return {}
    if not request.is_json:
        raise ValidationError("body", "must be JSON (Content-Type: application/json)", status=415)
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("body", "must be a well-formed JSON object", status=400)
    check_json_value(data)
    return data


# -- the request ----------------------------------------------------------------------------------------


def check_query() -> None:
    """Refuse (400) a query parameter whose name or value is not valid Unicode; runs before every view."""
    check_pairs(request.args.items(multi=True))


#: A UTF-8 codec that keeps invalid bytes as lone surrogates (PEP 383) whatever error handler its caller asks for:
#: werkzeug decodes multipart fields with errors="replace", which would hide them from the checks here.
MARKING_UTF8 = "esp_utf_8_mark_invalid"


def _marking_decode(data: Any, errors: str = "strict", /) -> tuple[str, int]:  # data: any buffer, as codecs pass it
    return codecs.utf_8_decode(data, "surrogateescape", True)


def _find_codec(name: str) -> codecs.CodecInfo | None:
    if name != MARKING_UTF8:
        return None
    return codecs.CodecInfo(codecs.utf_8_encode, _marking_decode, name=MARKING_UTF8)


codecs.register(_find_codec)


class StrictMultiPartParser(MultiPartParser):
    """Multipart parsing that marks a UTF-8 field's invalid bytes instead of replacing them with U+FFFD."""

    def get_part_charset(self, headers: Headers) -> str:
        charset = super().get_part_charset(headers)
        return MARKING_UTF8 if charset == "utf-8" else charset


class StrictFormDataParser(FormDataParser):
    """Form parsing that refuses (400, naming the field) a field that is not valid UTF-8 text."""

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> tuple[IO[bytes], MultiDict[str, Any], MultiDict[str, Any]]:
        stream, form, files = super().parse(stream, mimetype, content_length, options)
        try:
            check_pairs(form.items(multi=True))
        except ValidationError:
            for upload in files.values():  # the request never holds them, so would never close them
                upload.close()
            raise
        return stream, form, files

    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> tuple[IO[bytes], MultiDict[str, Any], MultiDict[str, Any]]:
        parser = StrictMultiPartParser(stream_factory=self.stream_factory, max_form_memory_size=self.max_form_memory_size,
                                       max_form_parts=self.max_form_parts, cls=self.cls)
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        form, files = parser.parse(stream, boundary, content_length)
        return stream, form, files

    def _parse_urlencoded(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                          options: dict[str, str]) -> tuple[IO[bytes], MultiDict[str, Any], MultiDict[str, Any]]:
        items = parse_qsl(stream.read().decode("utf-8", "surrogateescape"), keep_blank_values=True, errors="surrogateescape")
        return stream, self.cls(items), self.cls()


class StrictRequest(Request):
    """Flask's request, with invalid UTF-8 in the query string or a form kept visible (as lone surrogates) for the checks.

    Werkzeug's own ``args`` raises UnicodeDecodeError (a 500) on raw non-UTF-8 bytes in
    the query string, and leaves percent-encoded invalid bytes as literal text.
    """

    form_data_parser_class = StrictFormDataParser

    @cached_property
    def args(self) -> MultiDict[str, str]:
        query = self.query_string.decode("utf-8", "surrogateescape")
        return self.parameter_storage_class(parse_qsl(query, keep_blank_values=True, errors="surrogateescape"))


def install(app: Flask) -> None:
    """Parse every request strictly and refuse invalid text in its query string before any view runs."""
    app.request_class = StrictRequest
    provider = StrictJSONProvider(app)
    for setting in ("ensure_ascii", "sort_keys", "compact", "mimetype"):  # as create_app() configured them
        setattr(provider, setting, getattr(app.json, setting))
    app.json = provider
    app.before_request(check_query)
