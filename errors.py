"""ESP's exceptions, one tree under ``EspError``.

The roots are defined here; a package that raises a family of its own defines it
next to its code, under one of these roots (the module is named on the right).

    EspError
     ├── ConfigError              bad or missing configuration, found at start
     ├── CompileError             a contract does not compile                            contracts.build
     ├── NodeError
     │    ├── NodeUnreachable     a node did not answer (connection refused, timeout)
     │    ├── RpcError            a node answered with a JSON-RPC error object
     │    ├── NodeStartError      a managed node could not be started
     │    └── ChainDiverged       a follower's imported block differs from the leader's
     ├── NoHealthyNode            no node in the pool may take the work now (HTTP 503)
     │    ├── DispatchPaused      the pool's health index LBH < 0 pauses dispatch        nodepool.placement
     │    └── NoNodeAnswered      every node tried failed to answer                      nodepool.failover
     ├── ValidationError          a request's field is malformed or impossible (HTTP 4xx)
     ├── NotFound                 a named resource does not exist (HTTP 404)
     ├── Conflict                 the request conflicts with the current state (HTTP 409)
     ├── Unauthorized             a request that needs an API key came without a valid one (HTTP 401)
     ├── Forbidden                the caller's key may not do this (HTTP 403)
     ├── PlatformNotDeployed      the platform contracts are not deployed yet (HTTP 503) services.views
     ├── TaskFailed               a write task cannot succeed: ends its record as failed services.sending
     ├── NodeBusy                 no node took a write now: the task retries later      services.sending
     └── WalletError              the wallet's errors, each with its HTTP status         wallet.errors
          ├── UnknownAccount (also NotFound), AccountExists (also Conflict)
          ├── WrongPassword, KeystoreCorrupt, AccountLocked, KdfBusy
          └── SendError
               └── NonceTooLow, TxRejected, BroadcastFailed

Outside the tree on purpose: the balancer's pure core raises its own stdlib-based
``NoEligibleNode``/``PoolUnhealthy`` (balancer.exceptions; ``nodepool.placement``
turns them into NoHealthyNode), ``contracts.abi.AbiError`` is a ValueError the
services turn into ValidationError, and ``nodes.docker.stats.EngineBusy`` never
leaves its module.

``app/errors.py`` alone maps these to RFC 9457 problem responses.
"""

from __future__ import annotations

from typing import Any


class EspError(Exception):
    """Root of every error ESP raises on purpose."""


class ConfigError(EspError):
    """Raised at start when configuration cannot work; the message says how to fix it."""


class NodeError(EspError):
    """Raised when talking to or managing an Ethereum node fails."""

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class NodeUnreachable(NodeError):
    """Raised when a node does not answer in time or refuses the connection.

    ``delivered`` is False only when the request certainly never reached the node (the connection
    was refused or never made); a timeout or a dropped connection may have delivered it.
    """

    def __init__(self, message: str, *, node_id: str | None = None, delivered: bool = True) -> None:
        super().__init__(message, node_id=node_id)
        self.delivered = delivered


class RpcError(NodeError):
    """Raised when a node answers a call with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None, *, node_id: str | None = None) -> None:
        super().__init__(f"{message} (code {code})", node_id=node_id)
        self.code = code
        self.rpc_message = message
        self.data = data


class NodeStartError(NodeError):
    """Raised when a managed node cannot be started (binary missing, port taken, crash)."""


class ChainDiverged(NodeError):
    """Raised when a follower imports a block whose hash or state root differs from the leader's."""


class NoHealthyNode(EspError):
    """Raised when no node in the pool may take work (all down, zone III, or LBH < 0)."""


class ValidationError(EspError):
    """Raised when a request field is malformed or impossible; names the field."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message
        self.status = status


class NotFound(EspError):
    """Raised when a named resource (task, account, block, project) does not exist."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(EspError):
    """Raised when a request conflicts with current state (e.g. an idempotency key reused)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthorized(EspError):
    """Raised when a request that needs an API key comes without a valid ``Authorization: Bearer`` key."""


class Forbidden(EspError):
    """Raised when the caller's key may not do what it asks (another key's account, an admin operation)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field
