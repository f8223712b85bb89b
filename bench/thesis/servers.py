"""The processes the thesis experiment's control needs: one anvil as ESP starts it, and the monolith under gunicorn.

    with SingleNode(run_dir, block_time=1.0) as node, MonolithServer(node.url, run_dir) as mono:
        httpx.get(mono.url + "/healthz")
        psutil_sample(mono.pids() + [node.pid])

Both bind free 127.0.0.1 ports, keep their files in the given run folder, and stop what
they started (and only that) on ``close()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from bench.gunicorn_server import START_TIMEOUT, GunicornServer
from nodepool.spec import ROLE_LEADER, NodeSpec
from nodes.process import ProcessBackend
from settings import Settings, generate_secret
from wallet.kdf import DEFAULT_SCRYPT_N


class SingleNode:
    """ONE anvil started exactly as ESP starts its leader: ``nodes.process.ProcessBackend``, same binary and flags."""

    def __init__(self, run_dir: Path, *, block_time: float = 1.0, env: Mapping[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.settings = Settings.from_env({"ESP_RUN_DIR": str(self.run_dir), "ESP_KEYSTORE_DIR": str(self.run_dir / "keystore"),
                                           "ESP_NODE_COUNT": "1", "ESP_BLOCK_TIME": repr(float(block_time)), **(env or {})})
        self.backend = ProcessBackend(self.settings)
        self.spec: NodeSpec | None = None

    def start(self) -> SingleNode:
        """Start the node and wait until it answers (NodeStartError otherwise)."""
        self.spec = self.backend.start("node-0", role=ROLE_LEADER)
        return self

    @property
    def url(self) -> str:
        assert self.spec is not None, "start() first"
        return self.spec.url

    @property
    def pid(self) -> int:
        assert self.spec is not None and self.spec.pid is not None, "start() first"
        return self.spec.pid

    def close(self) -> None:
        """Stop the node."""
        if self.spec is not None:
            self.backend.stop(self.spec)
            self.spec = None
        self.backend.close()

    def __enter__(self) -> SingleNode:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class MonolithServer(GunicornServer):
    """``bench.thesis.monolith`` under gunicorn (``python -m gunicorn``), bound to a free loopback port.

    ``node_url`` is the one node it calls; ``run_dir`` holds its keystore (``run_dir/monolith-keystore``),
    its shared unlock and nonce files, and its log (``run_dir/monolith.log``). ``scrypt_n`` is the
    keystores' KDF cost (ESP_KEYSTORE_SCRYPT_N; ESP's default, geth's standard 2**18). ``env`` adds or overrides
    ``ESP_`` variables of the app (e.g. ESP_FUNDING_WEI, ESP_KDF_CONCURRENCY, ESP_TX_DEADLINE).
    """

    name = "the monolith"

    def __init__(self, node_url: str, run_dir: Path, *, workers: int = 4, threads: int = 32, worker_class: str = "gthread",
                 scrypt_n: int = DEFAULT_SCRYPT_N, env: Mapping[str, str] | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.node_url = node_url
        self.run_dir = Path(run_dir)
        environment = {
            "ESP_NODE_BACKEND": "static",
            "ESP_NODE_URLS": node_url,
            "ESP_RUN_DIR": str(self.run_dir),
            "ESP_KEYSTORE_DIR": str(self.run_dir / "monolith-keystore"),
            "ESP_KEYSTORE_SCRYPT_N": str(scrypt_n),
            "ESP_SECRET_KEY": generate_secret(),
            **(env or {}),
        }
        super().__init__("bench.thesis.monolith:create_app()", self.run_dir / "monolith.log", worker_class=worker_class,
                         workers=workers, threads=threads, env=environment, start_timeout=start_timeout)
        # Validate here, in the caller's process, rather than as a worker that fails to boot.
        Settings.from_env(self.environment)
