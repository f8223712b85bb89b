"""Projects: publish (multipart upload), list, summary, buy, and the file for its publisher and buyers.

- ``POST /api/v1/projects`` (multipart/form-data: ``publisher``, ``name``, ``price``,
  ``file``): the file is stored content-addressed under ESP_FILES_DIR (its name is
  its SHA-256) before the publish task is enqueued, and that hash goes on chain.
  Over ESP_MAX_FILE_MB: 413 naming ``file``. Once confirmed, the task's result
  holds ``project_id`` (decoded from the ProjectPublished log).
- ``GET /api/v1/projects/<id>?account=<address>``: the summary. A view is
  recorded on chain (``record_view``, signed by the treasury) only when the
  viewer names one of its key's accounts with ``?account=`` (an API key is then
  required); the response then carries ``view_task``. Listing projects records nothing.
- ``GET /api/v1/projects/<id>/file?account=<address>``: the file, only to a key
  owning ``account``, only when that account is the publisher or a buyer (403
  otherwise), only when the publisher uploaded the bytes here, and only once its
  download record is enqueued (``record_download``; task id in the
  ``ESP-Record-Task`` header): a download that cannot be recorded is not served.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.exceptions import RequestEntityTooLarge

from app.auth import key_required
from app.context import files, market, views
from app.submit import accepted
from app.validation import json_body
from errors import ValidationError
from services.fields import address, amount, integer, project_name, required

bp = Blueprint("projects", __name__, url_prefix="/api/v1/projects")

#: Room for the multipart boundaries and the small fields around the file.
FORM_OVERHEAD = 64 * 1024
MAX_PAGE = 100
MAX_ID = 2**63


def project_id(raw: str, field: str = "id") -> int:
    """A project id from the path (a whole number >= 1)."""
    return integer(raw, field, low=1, high=MAX_ID)


def publish_fields(data: dict[str, Any], *, names: tuple[str, str, str] = ("publisher", "name", "price")) -> tuple[str, str, int]:
    """A publish request's publisher, name and price, and that the caller may sign as the publisher, before any file is stored."""
    publisher_field, name_field, price_field = names
    publisher = address(required(data, publisher_field), publisher_field)
    name = project_name(required(data, name_field), name_field)
    price = amount(required(data, price_field), price_field)
    market().check_publisher(publisher, publisher_field)
    return publisher, name, price


def upload_form() -> tuple[Any, Any]:
    """The request's form and files, refusing (413 naming ``file``) a body too large for ESP_MAX_FILE_MB."""
    limit = files().max_bytes
    too_large = ValidationError("file", f"is larger than {limit // (1024 * 1024)} MiB (ESP_MAX_FILE_MB)", status=413)
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD:
        raise too_large  # refused before the body is read
    request.max_content_length = limit + FORM_OVERHEAD
    try:
        return request.form, request.files
    except RequestEntityTooLarge:
        raise too_large from None


@bp.post("")
@key_required
def publish() -> tuple[Response, int]:
    """Publish a project (multipart: publisher, name, price, file); 202 with the task (result: project_id)."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise ValidationError("body", "must be multipart/form-data with publisher, name, price and file", status=415)
    form, uploads = upload_form()
    publisher, name, price = publish_fields(form.to_dict())
    upload = uploads.get("file")
    if upload is None:
        raise ValidationError("file", "is required (a multipart file part named 'file')")
    platform = market()
    digest, size = platform.files.store(upload.stream)
    platform.bind_upload(digest, publisher)
    return accepted(platform.publish(publisher, name, price, digest, extra={"file_size": size}))


@bp.get("")
def list_projects() -> Response:
    """Projects by id (``?offset=`` first id, default 1; ``?limit=`` up to 100), with the market's reward and fee."""
    offset = integer(request.args.get("offset", "1"), "offset", low=1, high=MAX_ID)
    limit = integer(request.args.get("limit", "50"), "limit", low=1, high=MAX_PAGE)
    platform = views()
    platform.require_platform()
    count = platform.project_count()
    last = min(count, offset + limit - 1)
    projects = [platform.get_project(i).public() for i in range(offset, last + 1)]
    body: dict[str, Any] = {"projects": projects, "count": count, "offset": offset, "limit": limit,
                            "next_offset": last + 1 if last < count else None, **platform.market_settings()}
    return jsonify(body)


@bp.get("/<pid>")
def summary(pid: str) -> Response:
    """A project's summary; with ``?account=`` also whether it bought it, and the view is recorded on chain."""
    ident = project_id(pid)
    raw = request.args.get("account")
    account = address(raw, "account") if raw is not None else None
    platform = views()
    body = platform.get_project(ident).public()
    if account is not None:
        body["account"] = account
        body["bought"] = platform.has_bought(ident, account)
        body["view_task"] = market().record_view(ident, account).record.id
    return jsonify(body)


@bp.post("/<pid>/buy")
@key_required
def buy(pid: str) -> tuple[Response, int]:
    """Buy a project as ``buyer`` (an unlocked account); 202 with the task (result: price, fee)."""
    ident = project_id(pid)
    data = json_body(request)
    buyer = address(required(data, "buyer"), "buyer")
    return accepted(market().buy(buyer, ident))


@bp.get("/<pid>/file")
@key_required
def download(pid: str) -> Response:
    """The project's file for its publisher or a buyer (``?account=``); the download is recorded on chain."""
    ident = project_id(pid)
    account = address(required(request.args.to_dict(), "account"), "account")
    platform = market()
    path = platform.check_download(ident, account)
    task_id = platform.record_download(ident, account).record.id
    response = send_file(path, mimetype="application/octet-stream", as_attachment=True,
                         download_name=f"project-{ident}-{path.name[:16]}", etag="0x" + path.name, max_age=0)
    response.headers["ESP-Record-Task"] = task_id
    response.headers["Link"] = f'</api/v1/tasks/{task_id}>; rel="record"'
    return response
