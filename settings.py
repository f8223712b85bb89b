"""ESP's one settings object, read from the environment (and an optional ``.env``).

This is the only module that reads ``os.environ``. Every field is an ``ESP_``
variable; ``Settings.describe()`` lists them with their defaults and is what
the README's configuration table is checked against.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from limits import parse_many

from balancer import POLICY_NAMES
from errors import ConfigError
from wallet.kdf import DEFAULT_SCRYPT_N

ROOT = Path(__file__).resolve().parent

#: The private key of anvil's first dev account (mnemonic "test test ... junk").
#: Public knowledge: a development default only, refused in production.
DEV_TREASURY_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_SECRET_KEY = "dev-insecure-secret-change-me"  # noqa: S105 - refused in production

BACKENDS = ("process", "static", "docker")


def _setting(env: str, default: Any, doc: str, **kw: Any) -> Any:
    meta = {"env": env, "doc": doc}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class Settings:
    """Everything ESP's processes are configured by; build it with ``from_env``."""

    env: str = _setting("ESP_ENV", "development", "development or production; production refuses development secrets")
    redis_url: str = _setting("ESP_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis for the broker, results, node registry and snapshots")
    node_backend: str = _setting("ESP_NODE_BACKEND", "process", "process (anvil started by ESP), docker (anvil containers) or static (ESP_NODE_URLS)")
    node_count: int = _setting("ESP_NODE_COUNT", 3, "how many managed nodes to start (process and docker backends), 1..16")
    node_urls: tuple[str, ...] = _setting("ESP_NODE_URLS", (), "comma-separated JSON-RPC URLs for the static backend")
    static_node_hosts: tuple[str, ...] = _setting("ESP_STATIC_NODE_HOSTS", ("127.0.0.1", "localhost", "::1"), "comma-separated hosts an admin may add static nodes on (`esp node add`: the API probes the URL); others are refused")
    devnet_sync: bool = _setting("ESP_DEVNET_SYNC", False, "static backend: the URLs are anvils of one devnet (compose/devnet.yml); the first leads, ESP keeps the others on its chain")
    node_host: str = _setting("ESP_NODE_HOST", "127.0.0.1", "loopback address managed nodes listen on")
    node_port_base: int = _setting("ESP_NODE_PORT_BASE", 0, "first port of managed nodes (node i gets base+i); 0 picks free ports")
    anvil_bin: str = _setting("ESP_ANVIL_BIN", "", "path to the anvil binary; empty finds the one npm installed into node_modules/")
    chain_id: int = _setting("ESP_CHAIN_ID", 31337, "chain id of the managed devnet")
    block_time: float = _setting("ESP_BLOCK_TIME", 1.0, "seconds between blocks on the devnet leader (interval mining); 0 selects automine")
    genesis_timestamp: int = _setting("ESP_GENESIS_TIMESTAMP", 1700000000, "genesis timestamp shared by every devnet node")
    block_gas_limit: int = _setting("ESP_BLOCK_GAS_LIMIT", 30_000_000, "block gas limit of the devnet")
    node_memory_cap_mb: int = _setting("ESP_NODE_MEMORY_CAP_MB", 2048, "a node using more memory than this is recycled")
    node_cpu_limit: float = _setting("ESP_NODE_CPU_LIMIT", 1.0, "CPU limit of a node container (docker backend), in cores")
    docker_image: str = _setting("ESP_DOCKER_IMAGE", "esp-anvil:1.7.1", "image the docker backend runs (built locally by `make image`)")
    docker_name_prefix: str = _setting("ESP_DOCKER_NAME_PREFIX", "esp-", "the node containers' names start with it (esp-node-0...): a second stack on one engine sets its own")
    docker_timeout: float = _setting("ESP_DOCKER_TIMEOUT", 10.0, "seconds any call to the container engine may take")
    docker_host: str = _setting("ESP_DOCKER_HOST", "", "container engine URL; empty uses DOCKER_HOST, then run/dockerd's socket, then /var/run/docker.sock")
    run_dir: Path = _setting("ESP_RUN_DIR", ROOT / "run", "folder for logs, pid files, node caches and the keystore")
    secret_key: str = _setting("ESP_SECRET_KEY", DEV_SECRET_KEY, "server secret (Flask, unlocked-key encryption); required in production")
    admin_key: str = _setting("ESP_ADMIN_KEY", "", "bearer token for admin operations; `make up` generates one when unset")
    api_host: str = _setting("ESP_API_HOST", "127.0.0.1", "address the API listens on")
    api_port: int = _setting("ESP_API_PORT", 8000, "port the API listens on")
    api_workers: int = _setting("ESP_API_WORKERS", 8, "gunicorn threads per API process (2 processes); password KDFs may hold ESP_KDF_CONCURRENCY + ESP_KDF_QUEUE of them")
    max_body_kb: int = _setting("ESP_MAX_BODY_KB", 1024, "largest request body accepted, in KiB (project uploads have ESP_MAX_FILE_MB); larger is a 413")
    max_submit_batch: int = _setting("ESP_MAX_SUBMIT_BATCH", 1000, "most transfers one POST /api/v1/transactions/batch may carry (each counts against ESP_RATE_LIMIT)")
    rate_limit: str = _setting("ESP_RATE_LIMIT", "6000 per minute", "requests per API key on every route but health and metrics (limits notation, e.g. 100/second;5000/hour); 429 beyond")
    rate_limit_anonymous: str = _setting("ESP_RATE_LIMIT_ANONYMOUS", "1200 per minute", "requests per client address without an API key, on every route but health and metrics")
    unlock_rate_limit: str = _setting("ESP_UNLOCK_RATE_LIMIT", "10 per minute", "password checks per account by unlock (REST and thesis routes together, whoever asks); 429 beyond")
    unlock_failure_limit: str = _setting("ESP_UNLOCK_FAILURE_LIMIT", "5 per 15 minutes; 20 per day", "wrong passwords per account; past them the account cannot be unlocked (429) until the window slides on")
    flower_port: int = _setting("ESP_FLOWER_PORT", 5555, "port Flower listens on")
    flower_url: str = _setting("ESP_FLOWER_URL", "", "Flower as operators' browsers reach it (the dashboard links to it); empty: http://127.0.0.1:ESP_FLOWER_PORT")
    worker_concurrency: int = _setting("ESP_WORKER_CONCURRENCY", 2, "processes of the write worker")
    worker_metrics_host: str = _setting("ESP_WORKER_METRICS_HOST", "127.0.0.1", "address each worker, control worker and beat serves its Prometheus /metrics on (registered in Redis for GET /api/v1/metrics/targets)")
    worker_metrics_port: int = _setting("ESP_WORKER_METRICS_PORT", 0, "port of that /metrics; 0 picks a free port per process, so scaled workers never collide")
    rpc_timeout: float = _setting("ESP_RPC_TIMEOUT", 5.0, "seconds a JSON-RPC call to a node may take")
    rpc_host: str = _setting("ESP_RPC_HOST", "127.0.0.1", "address the JSON-RPC gateway (POST /rpc) listens on")
    rpc_port: int = _setting("ESP_RPC_PORT", 8545, "port the JSON-RPC gateway listens on (a web3 client's provider URL is http://host:port/rpc)")
    rpc_processes: int = _setting("ESP_RPC_PROCESSES", 2, "processes of the JSON-RPC gateway (each an asyncio loop)")
    rpc_max_batch: int = _setting("ESP_RPC_MAX_BATCH", 100, "most requests one JSON-RPC batch on /rpc may carry (each counts against ESP_RPC_RATE_LIMIT)")
    rpc_deadline: float = _setting("ESP_RPC_DEADLINE", 10.0, "seconds /rpc may spend on one request, failing over from node to node")
    rpc_rate_limit: str = _setting("ESP_RPC_RATE_LIMIT", "60000 per minute", "JSON-RPC requests per API key on /rpc (a batch counts each of its requests); 429 beyond")
    rpc_cache: bool = _setting("ESP_RPC_CACHE", True, "keep what cannot change (chain id, deep blocks, transactions, receipts, logs) and the head briefly, in Redis")
    rpc_reorg_depth: int = _setting("ESP_RPC_REORG_DEPTH", 12, "blocks under the pool's head past which /rpc takes a block's contents as final and caches them")
    rpc_head_ttl: float = _setting("ESP_RPC_HEAD_TTL", 0.25, "seconds /rpc may answer eth_blockNumber and fee suggestions from its cache (0: never)")
    rpc_cache_ttl: int = _setting("ESP_RPC_CACHE_TTL", 86400, "seconds a final answer stays in the /rpc cache")
    rpc_breaker_failures: int = _setting("ESP_RPC_BREAKER_FAILURES", 5, "calls in a row a node leaves unanswered before its circuit breaker opens")
    rpc_breaker_reset: float = _setting("ESP_RPC_BREAKER_RESET", 5.0, "seconds an open circuit breaker keeps /rpc off a node before one probe call")
    probe_timeout: float = _setting("ESP_PROBE_TIMEOUT", 1.0, "seconds a health probe of a node may take")
    monitor_interval: float = _setting("ESP_MONITOR_INTERVAL", 1.0, "seconds between two samples of the node pool")
    balancer_policy: str = _setting("ESP_BALANCER_POLICY", "esp", "esp, thesis, round_robin, random, least_inflight, latency or lowest_distance")
    balancer_model: str = _setting("ESP_BALANCER_MODEL", "esp", "state space: esp (all dimensions, weighted) or thesis (memory and CPU exactly as the thesis)")
    balancer_weights: str = _setting("ESP_BALANCER_WEIGHTS", "memory,cpu,latency,errors,lag,inflight", "dimensions of the esp model and their weights, e.g. memory=1,cpu=1,latency=2")
    balancer_latency_target_ms: float = _setting("ESP_BALANCER_LATENCY_TARGET_MS", 50.0, "RPC latency a node should stay under")
    balancer_lag_scale: int = _setting("ESP_BALANCER_LAG_SCALE", 10, "blocks behind the pool's head that count as fully lagging")
    balancer_inflight_scale: int = _setting("ESP_BALANCER_INFLIGHT_SCALE", 16, "requests in flight that count as a full node")
    balancer_recycle_distance: float = _setting("ESP_BALANCER_RECYCLE_DISTANCE", 1.2, "distance beyond which a node is zone III and recycled")
    balancer_dis_ave_min: str = _setting("ESP_BALANCER_DIS_AVE_MIN", "", "fixed Dis_ave_min; empty learns it from the idle pool")
    balancer_dis_ave_max: str = _setting("ESP_BALANCER_DIS_AVE_MAX", "", "fixed Dis_ave_max; empty learns it when the pool serves poorly")
    snapshot_max_age: float = _setting("ESP_SNAPSHOT_MAX_AGE", 0.0, "seconds after which a snapshot is stale; 0 means 3 monitor intervals")
    min_serving_nodes: int = _setting("ESP_MIN_SERVING_NODES", 1, "the recycler never takes the pool below this many serving nodes")
    recycle_after: int = _setting("ESP_RECYCLE_AFTER", 3, "consecutive zone-III samples before a node is recycled")
    drain_timeout: float = _setting("ESP_DRAIN_TIMEOUT", 30.0, "seconds a draining node may finish its in-flight work")
    keystore_scrypt_n: int = _setting("ESP_KEYSTORE_SCRYPT_N", DEFAULT_SCRYPT_N, "scrypt cost of new keystores (default 2^18, geth's standard: 256 MiB, ~0.47 s here; 2^17 halves it)")
    kdf_concurrency: int = _setting("ESP_KDF_CONCURRENCY", 1, "password KDFs (account creation, unlock) one API process runs at once")
    kdf_queue: int = _setting("ESP_KDF_QUEUE", 2, "password KDFs one API process lets wait for a slot; one more is refused at once (503, Retry-After)")
    nonce_lease_seconds: int = _setting("ESP_NONCE_LEASE_SECONDS", 120, "seconds a task holds a nonce it has not broadcast yet")
    confirmations: int = _setting("ESP_CONFIRMATIONS", 1, "blocks (including its own) before a transaction counts as confirmed")
    tx_deadline: float = _setting("ESP_TX_DEADLINE", 60.0, "seconds a broadcast transaction may wait to be mined")
    tx_deadline_action: str = _setting("ESP_TX_DEADLINE_ACTION", "replace", "replace (same nonce, both fee caps +15%) or report a transaction past its deadline")
    receipt_interval: float = _setting("ESP_RECEIPT_INTERVAL", 0.5, "seconds between two receipt checks of broadcast transactions")
    funding_wei: int = _setting("ESP_FUNDING_WEI", 10**18, "gas money the treasury sends each new account, in wei")
    result_expires: int = _setting("ESP_RESULT_EXPIRES", 86400, "seconds task results are kept")
    task_visibility_timeout: int = _setting("ESP_TASK_VISIBILITY_TIMEOUT", 300, "seconds a task taken by a worker that died (unacknowledged) waits before it is delivered again; keep it above the longest task (120 s) plus its longest retry countdown (30 s)")
    keystore_dir: Path = _setting("ESP_KEYSTORE_DIR", ROOT / "run" / "keystore", "folder of ESP's encrypted keystore files")
    treasury_key: str = _setting("ESP_TREASURY_KEY", DEV_TREASURY_KEY, "private key of the platform treasury (funds accounts, owns contracts)")
    files_dir: Path = _setting("ESP_FILES_DIR", ROOT / "run" / "files", "where project files are stored, content-addressed by SHA-256")
    max_file_mb: int = _setting("ESP_MAX_FILE_MB", 20, "largest project file accepted, in MiB")
    token_name: str = _setting("ESP_TOKEN_NAME", "ESP Equity Token", "name of the platform token")
    token_symbol: str = _setting("ESP_TOKEN_SYMBOL", "EQT", "symbol of the platform token")
    token_decimals: int = _setting("ESP_TOKEN_DECIMALS", 0, "decimals of the platform token (0: whole tokens, as the thesis counts them)")
    publish_reward: int = _setting("ESP_PUBLISH_REWARD", 100, "tokens a publisher is rewarded with per published project")
    fee_bps: int = _setting("ESP_FEE_BPS", 0, "platform fee on a purchase, in basis points (100 = 1%), paid to the treasury")
    deploy_platform: bool = _setting("ESP_DEPLOY_PLATFORM", True, "deploy the platform contracts when the chain has none (make up on a fresh devnet)")
    log_level: str = _setting("ESP_LOG_LEVEL", "INFO", "log level of every ESP process")

    # -- construction -------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Build settings from ``environ`` (default ``os.environ`` plus ``.env``)."""
        if environ is None:
            values: dict[str, str] = {}
            if dotenv:
                values.update(_read_dotenv(ROOT / ".env"))
            values.update({k: v for k, v in os.environ.items() if k.startswith("ESP_")})
        else:
            values = dict(environ)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in values and values[name] != "":
                kwargs[f.name] = _parse(name, f.type, values[name])
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (and validated)."""
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ConfigError naming the variable when a value cannot work."""
        if self.env not in ("development", "production"):
            raise ConfigError(f"ESP_ENV must be 'development' or 'production', not {self.env!r}")
        if self.node_backend not in BACKENDS:
            raise ConfigError(f"ESP_NODE_BACKEND must be one of {', '.join(BACKENDS)}, not {self.node_backend!r}")
        if self.node_backend == "static" and not self.node_urls:
            raise ConfigError("ESP_NODE_BACKEND=static needs ESP_NODE_URLS (comma-separated JSON-RPC URLs)")
        if not 1 <= self.node_count <= 16:
            raise ConfigError(f"ESP_NODE_COUNT must be between 1 and 16, not {self.node_count}")
        for url in self.node_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"ESP_NODE_URLS: {url!r} is not an http(s) JSON-RPC URL")
        if self.block_time < 0:
            raise ConfigError("ESP_BLOCK_TIME must be >= 0 (0 selects automine)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.docker_name_prefix):
            raise ConfigError(f"ESP_DOCKER_NAME_PREFIX must be 1 to 64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
                              f" (a container name's start), not {self.docker_name_prefix!r}")
        for name, value in (("ESP_MONITOR_INTERVAL", self.monitor_interval), ("ESP_RPC_TIMEOUT", self.rpc_timeout),
                            ("ESP_PROBE_TIMEOUT", self.probe_timeout), ("ESP_DOCKER_TIMEOUT", self.docker_timeout)):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, not {value}")
        if self.balancer_policy not in POLICY_NAMES:
            raise ConfigError(f"ESP_BALANCER_POLICY must be one of {', '.join(POLICY_NAMES)}, not {self.balancer_policy!r}")
        if self.balancer_model not in ("esp", "thesis"):
            raise ConfigError(f"ESP_BALANCER_MODEL must be 'esp' or 'thesis', not {self.balancer_model!r}")
        if self.tx_deadline_action not in ("replace", "report"):
            raise ConfigError(f"ESP_TX_DEADLINE_ACTION must be 'replace' or 'report', not {self.tx_deadline_action!r}")
        if not 0 <= self.fee_bps <= 10_000:
            raise ConfigError(f"ESP_FEE_BPS must be from 0 to 10000, not {self.fee_bps}")
        if not 0 <= self.token_decimals <= 36:
            raise ConfigError(f"ESP_TOKEN_DECIMALS must be from 0 to 36, not {self.token_decimals}")
        if self.confirmations < 1:
            raise ConfigError("ESP_CONFIRMATIONS must be at least 1")
        if self.keystore_scrypt_n < 2 or self.keystore_scrypt_n & (self.keystore_scrypt_n - 1):
            raise ConfigError(f"ESP_KEYSTORE_SCRYPT_N must be a power of two, not {self.keystore_scrypt_n}")
        for name, limit in (("ESP_RATE_LIMIT", self.rate_limit), ("ESP_RATE_LIMIT_ANONYMOUS", self.rate_limit_anonymous),
                            ("ESP_UNLOCK_RATE_LIMIT", self.unlock_rate_limit), ("ESP_UNLOCK_FAILURE_LIMIT", self.unlock_failure_limit),
                            ("ESP_RPC_RATE_LIMIT", self.rpc_rate_limit)):
            try:
                parse_many(limit)
            except ValueError:
                raise ConfigError(f"{name}={limit!r} is not a rate limit: write e.g. '10 per minute' or '100/second; 5000/hour'") from None
        if self.max_submit_batch < 1:
            raise ConfigError(f"ESP_MAX_SUBMIT_BATCH must be at least 1, not {self.max_submit_batch}")
        if self.max_body_kb < 1:
            raise ConfigError(f"ESP_MAX_BODY_KB must be at least 1, not {self.max_body_kb}")
        if self.api_workers < 1:
            raise ConfigError(f"ESP_API_WORKERS must be at least 1, not {self.api_workers}")
        if self.kdf_concurrency < 1 or self.kdf_queue < 0:
            raise ConfigError("ESP_KDF_CONCURRENCY must be at least 1 and ESP_KDF_QUEUE at least 0")
        if self.kdf_concurrency + self.kdf_queue >= self.api_workers:
            raise ConfigError(
                f"ESP_KDF_CONCURRENCY + ESP_KDF_QUEUE ({self.kdf_concurrency + self.kdf_queue}) must stay below ESP_API_WORKERS"
                f" ({self.api_workers}): password checks would hold every API thread")
        for name, port in (("ESP_API_PORT", self.api_port), ("ESP_FLOWER_PORT", self.flower_port)):
            if not 1 <= port <= 65535:
                raise ConfigError(f"{name} must be a TCP port (1..65535), not {port}")
        if not 0 <= self.worker_metrics_port <= 65535:
            raise ConfigError(f"ESP_WORKER_METRICS_PORT must be a TCP port (1..65535) or 0 (a free one), not {self.worker_metrics_port}")
        if self.env == "production":
            if self.secret_key == DEV_SECRET_KEY:
                raise ConfigError("ESP_SECRET_KEY must be set in production (the development default is public)")
            if self.treasury_key == DEV_TREASURY_KEY:
                raise ConfigError("ESP_TREASURY_KEY must be set in production (the development default is public)")
            if not self.admin_key:
                raise ConfigError("ESP_ADMIN_KEY must be set in production")

    # -- derived values -----------------------------------------------------

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def flower_link(self) -> str:
        """Where the dashboard sends operators for Flower."""
        return self.flower_url or f"http://127.0.0.1:{self.flower_port}"

    @property
    def stale_after(self) -> float:
        """Seconds after which a pool snapshot no longer steers routing."""
        return self.snapshot_max_age or 3 * self.monitor_interval

    @property
    def managed_nodes(self) -> bool:
        """True when ESP starts and restarts the nodes itself."""
        return self.node_backend in ("process", "docker")

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting, for docs and ``--help``."""
        rows = []
        for f in dataclasses.fields(cls):
            default: Any = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            if isinstance(default, Path):
                default = os.path.relpath(default, ROOT)
            elif isinstance(default, tuple):
                default = ",".join(default)
            if f.metadata["env"] == "ESP_TREASURY_KEY":
                default = "anvil dev account 0 (development only)"
            rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
        return rows


def child_environment() -> dict[str, str]:
    """The few variables a node process needs from ours (never ESP_ secrets)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: v for k, v in os.environ.items() if k in keep}


def stack_environment() -> dict[str, str]:
    """The environment of the stack's processes (``make up``): ours over ``.env``'s ESP_ variables, as ``from_env`` reads them."""
    return {**_read_dotenv(ROOT / ".env"), **os.environ}


def generate_secret() -> str:
    """A fresh random token for ESP_ADMIN_KEY or ESP_SECRET_KEY."""
    return secrets.token_urlsafe(32)


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw).expanduser().resolve()
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None and k.startswith("ESP_")}
