"""Contracts: ``POST /api/v1/contracts`` deploys (admin), ``GET`` lists the platform's and the artifacts.

The body names what to deploy:

- ``{"name": "platform"}`` (or no name): the platform, three transactions from the
  treasury (PlatformToken, ProjectMarket, token.setOperator); once confirmed its
  addresses replace the platform's in Redis, where every process finds them;
- ``{"name": "PlatformToken" | "ProjectMarket", "args": [...]}``: one artifact
  (``args`` default to the configured ones); it does not replace the platform's;
- ``{"abi": [...], "bytecode": "0x...", "args": [...]}``: any contract; the ABI and
  bytecode are kept in Redis under their SHA-256 and the task carries the hash.

``gas_price`` (wei; a legacy transaction at that price) and ``gas_limit`` are optional.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.auth import admin_required
from app.context import market, views
from app.submit import accepted
from app.validation import json_body
from contracts import PLATFORM_CONTRACTS, artifact_names

bp = Blueprint("contracts", __name__, url_prefix="/api/v1/contracts")


@bp.post("")
@admin_required
def deploy() -> tuple[Response, int]:
    """Deploy the platform, a platform contract by name, or any contract from {abi, bytecode, args} (admin); 202."""
    return accepted(market().deploy(json_body(request)))


@bp.get("")
def list_contracts() -> Response:
    """The deployed platform (addresses, chain id, deploy block) and the contracts that can be deployed by name."""
    return jsonify({"platform": views().platform_addresses(), "platform_contracts": list(PLATFORM_CONTRACTS),
                    "artifacts": ["platform", *artifact_names()]})
