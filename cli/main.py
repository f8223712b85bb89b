"""The ``esp`` commands (typer): each calls the API, prints with rich, and fails with one line on stderr.

    esp pool [--watch]                 the pool as a table (LBH, Dis_ave, paused, stale below it)
    esp node add URL [--id ID]         add a static node on the pool's chain
    esp node remove ID                 remove a static node
    esp node drain|recycle|undrain ID  ask the recycler, and follow it with a progress bar
    esp task ID                        a write task and its timeline
    esp events [--follow]              node events, oldest first
    esp keys create|list|revoke        API keys (a new key is printed once, on stdout only)
    esp wait-ready [--timeout]         a progress bar until the stack is ready and every node is up
    esp bench quick|full [--dry-run]   the thesis experiment on this machine (not over the API)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

# typer vendors click (0.29): its usage errors are this class; catching them prints one line instead of a panel.
from typer._click.exceptions import ClickException

from cli.client import EXIT_BAD_INPUT, ApiClient, CliError, Config
from cli.follow import POLL_INTERVAL, follow_operation, wait_ready
from cli.views import event_line, keys_view, pool_view, task_view
from settings import ROOT

app = typer.Typer(help="ESP's command line for operators: the pool, its nodes, tasks, events and API keys, over the HTTP API.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
node_app = typer.Typer(help="Add, remove, drain and recycle nodes (admin).", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys (admin).", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(keys_app, name="keys")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

Timeout = Annotated[float, typer.Option(min=1, help="seconds to follow it before giving up (it carries on)")]


def api() -> ApiClient:
    return ApiClient(Config.from_env())


@app.command()
def pool(watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh until Ctrl-C")] = False,
         interval: Annotated[float, typer.Option(min=0.2, help="seconds between refreshes")] = 1.0) -> None:
    """The node pool: each node's status, zone, distance, state, in-flight, head and lag."""
    client = api()
    if not watch:
        out.print(pool_view(client.get("/api/v1/nodes")))
        return
    try:
        if not out.is_terminal:  # into a file or a pipe: one table after another, each with the pool's line
            while True:
                out.print(pool_view(client.get("/api/v1/nodes")))
                time.sleep(interval)
        with Live(pool_view(client.get("/api/v1/nodes")), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(pool_view(client.get("/api/v1/nodes")), refresh=True)
    except KeyboardInterrupt:
        pass


@node_app.command("add")
def node_add(url: Annotated[str, typer.Argument(help="the node's JSON-RPC URL")],
             node_id: Annotated[str | None, typer.Option("--id", help="its id (default static-N)")] = None) -> None:
    """Add a static node: it must answer on the pool's chain (its chain id, genesis block and history)."""
    body = {"url": url} if node_id is None else {"url": url, "id": node_id}
    spec = api().post("/api/v1/nodes", body)
    out.print(f"added {spec['id']} ({spec['url']}, static)")


@node_app.command("remove")
def node_remove(node_id: Annotated[str, typer.Argument(help="the static node's id")]) -> None:
    """Remove a static node (managed nodes and the last serving node are refused)."""
    spec = api().delete(f"/api/v1/nodes/{node_id}")
    out.print(f"removed {spec['id']} ({spec['url']})")


def _operate(node_id: str, action: str, timeout: float, wait: bool) -> None:
    client = api()
    answer = client.post(f"/api/v1/nodes/{node_id}/{action}")
    if not answer.get("accepted"):
        err.print(f"{node_id}: already {answer['current']['phase']}; following it")
    if not wait:
        out.print(f"{action} of {node_id} requested")
        return
    follow_operation(client, answer, timeout=timeout, console=out)
    out.print(f"{node_id}: {'drained' if action == 'drain' else 'recycled and serving' if action == 'recycle' else 'serving'}")


Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="follow it with a progress bar")]


@node_app.command("drain")
def node_drain(node_id: str, timeout: Timeout = 180.0, wait: Wait = True) -> None:
    """Drain a node: no new work for it, until its in-flight count is 0; it stays drained until undrained or recycled."""
    _operate(node_id, "drain", timeout, wait)


@node_app.command("recycle")
def node_recycle(node_id: str, timeout: Timeout = 300.0, wait: Wait = True) -> None:
    """Recycle a node: drain it, restart it through the node manager, wait until it has caught up and serves again."""
    _operate(node_id, "recycle", timeout, wait)


@node_app.command("undrain")
def node_undrain(node_id: str, timeout: Timeout = 60.0, wait: Wait = True) -> None:
    """Give a drained node back to the pool."""
    _operate(node_id, "undrain", timeout, wait)


@app.command()
def task(task_id: Annotated[str, typer.Argument(help="the task id a write answered with")]) -> None:
    """A write task: what it is, its timeline, its result or error."""
    out.print(task_view(api().get(f"/api/v1/tasks/{task_id}")))


@app.command()
def events(follow: Annotated[bool, typer.Option("--follow", "-f", help="print new events until Ctrl-C")] = False,
           limit: Annotated[int, typer.Option(min=1, max=1000, help="how many recent events first")] = 20,
           node: Annotated[str | None, typer.Option(help="only this node's")] = None) -> None:
    """Node events (recycling steps, zone and status changes, added and removed nodes), oldest first."""
    client = api()
    seen: set[str] = set()
    first = True
    try:
        while first or follow:
            batch = client.get("/api/v1/nodes/events", limit=limit if first else 1000)["events"]
            for event in reversed(batch):
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                if node is None or event.get("node") == node:
                    out.print(event_line(event))
            first = False
            if follow:
                time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        pass


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="who or what the key is for")],
                role: Annotated[str, typer.Option(help="admin or user")] = "user") -> None:
    """Create an API key; the key is printed this once (on stdout only), ESP keeps its SHA-256."""
    record = api().post("/api/v1/keys", {"name": name, "role": role})
    err.print(f"created key {record['id']} ({record['role']}, {record['name']}); it is shown this once:")
    print(record["key"])  # plain stdout: `KEY=$(esp keys create …)` captures the key alone


@keys_app.command("list")
def keys_list() -> None:
    """Every API key (never the keys themselves)."""
    out.print(keys_view(api().get("/api/v1/keys")["keys"]))


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key: it stops working at once."""
    record = api().delete(f"/api/v1/keys/{key_id}")
    out.print(f"revoked key {record['id']} ({record['name']})")


@app.command("wait-ready")
def wait_ready_command(timeout: Timeout = 180.0) -> None:
    """Wait, with a progress bar, until the API is ready and every node is up (the devnet has caught up)."""
    document = wait_ready(api(), timeout=timeout, console=out)
    out.print(f"ready: {document['count']} nodes up")


@app.command()
def bench(mode: Annotated[str, typer.Argument(help="quick (minutes) or full (hours)")] = "quick",
          dry_run: Annotated[bool, typer.Option("--dry-run", help="print the runs and the estimated time, start nothing")] = False,
          ) -> None:
    """Run the thesis experiment on this machine (``python -m bench.thesis``, with its own progress bar; needs `make dev-deps`)."""
    if mode not in ("quick", "full"):
        raise CliError(f"bench: mode must be quick or full, not {mode!r}", code=EXIT_BAD_INPUT)
    # Not an API call: the experiment starts the stacks it measures, from this checkout.
    command = [sys.executable, "-m", "bench.thesis", mode, *(["--dry-run"] if dry_run else [])]
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    if code:
        raise CliError(f"bench: python -m bench.thesis {mode} exited with {code}", code=code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``esp`` with ``argv`` (default: the command line); returns the exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(list(sys.argv[1:] if argv is None else argv), prog_name="esp", standalone_mode=False)
    except CliError as exc:
        err.print(f"esp: {exc}", markup=False, soft_wrap=True)
        return exc.code
    except ClickException as exc:
        if exc.format_message():  # (none when a group without its command printed its help)
            err.print(f"esp: {exc.format_message()} (see esp --help)", markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        return 130
    return result if isinstance(result, int) else 0
