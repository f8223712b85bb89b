#!/usr/bin/env bash
# A private container engine for ESP's docker backend and its tests.
#
#   scripts/dockerd.sh start    install docker.io if dockerd is missing, start dockerd, print DOCKER_HOST
#   scripts/dockerd.sh stop     stop it (clean shutdown, then kill after a bounded wait); no process is left
#   scripts/dockerd.sh status   say whether it answers (exit 0) or not (exit 1)
#
# Everything lives under $ESP_RUN_DIR/dockerd (default run/dockerd of the repo): data root, exec root,
# pid file, log and its own socket, so it never clashes with a system engine on /var/run/docker.sock.
# ESP only uses host networking on loopback ports, so the engine runs without a bridge or iptables
# rules (measured here: dockerd would otherwise add docker0 and NAT rules to the machine).
# Needs root (dockerd does). Every step is bounded by a timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${ESP_RUN_DIR:-$ROOT/run}"
DIR="$RUN_DIR/dockerd"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
DOCKER_HOST_URL="unix://$SOCK"
START_TIMEOUT="${ESP_DOCKERD_START_TIMEOUT:-60}"
STOP_TIMEOUT="${ESP_DOCKERD_STOP_TIMEOUT:-30}"
APT_TIMEOUT="${ESP_DOCKERD_APT_TIMEOUT:-600}"

say() { echo "dockerd.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# The pid in the pid file, if that process is still a dockerd (a reused pid is never ours).
running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "dockerd .*--pidfile $PIDFILE" || return 1
    echo "$pid"
}

# True when the engine on our socket answers its ping endpoint.
answers() {
    [[ -S "$SOCK" ]] || return 1
    [[ "$(timeout 5 curl -s --max-time 4 --unix-socket "$SOCK" http://localhost/_ping 2>/dev/null || true)" == "OK" ]]
}

# Processes of this engine only: dockerd, its containerd and the container shims, each of which
# carries our folder on its command line. Matching our unique path never touches another
# engine's processes, and the program check spares anything else that names the folder.
our_pids() {
    local p cmd comm
    for p in /proc/[0-9]*; do
        comm="$(cat "$p/comm" 2>/dev/null || true)"
        case "$comm" in
            dockerd | containerd* | runc | docker-*) ;;
            *) continue ;;
        esac
        cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)"
        case "$cmd" in
            *"$DIR/"*) echo "${p#/proc/}" ;;
        esac
    done
}

# Init processes of this engine's containers, from runc's state files. After a killed dockerd they
# survive their shims; each is checked to still live in its container's cgroup (pids get reused).
container_pids() {
    local state id pid
    for state in "$DIR"/exec/runtime-runc/*/*/state.json; do
        [[ -f "$state" ]] || continue
        id="$(basename "$(dirname "$state")")"
        pid="$(grep -o '"init_process_pid":[0-9]*' "$state" | head -n 1 | cut -d: -f2)"
        [[ -n "$pid" ]] || continue
        # A zombie (state Z) is dead already, waiting for its new parent to reap it.
        [[ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" =~ ^[^Z]$ ]] || continue
        grep -q "$id" "/proc/$pid/cgroup" 2>/dev/null && echo "$pid"
    done
}

install_engine() {
    command -v dockerd >/dev/null 2>&1 && return 0
    [[ "$(id -u)" == 0 ]] || die "dockerd is missing and installing it needs root: run as root, or apt-get install docker.io"
    command -v apt-get >/dev/null 2>&1 || die "dockerd is missing and there is no apt-get: install a Docker engine by hand"
    say "installing docker.io (Debian package) ..."
    # Debian's postinst would start the system docker service; only our private engine must run.
    local guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
    fi
    local ok=0
    export DEBIAN_FRONTEND=noninteractive
    if timeout "$APT_TIMEOUT" apt-get install -y -q docker.io >"$DIR/apt.log" 2>&1; then
        ok=1
    elif timeout "$APT_TIMEOUT" apt-get update -q >>"$DIR/apt.log" 2>&1 \
        && timeout "$APT_TIMEOUT" apt-get install -y -q docker.io >>"$DIR/apt.log" 2>&1; then
        ok=1
    fi
    [[ -n "$guard" ]] && rm -f "$guard"
    [[ "$ok" == 1 ]] || die "apt-get install docker.io failed (see $DIR/apt.log)"
    command -v dockerd >/dev/null 2>&1 || die "docker.io is installed but dockerd is not on PATH"
}

start() {
    mkdir -p "$DIR"
    if running_pid >/dev/null && answers; then
        say "already running (pid $(running_pid))"
        echo "DOCKER_HOST=$DOCKER_HOST_URL"
        return 0
    fi
    if pid="$(running_pid)"; then
        die "dockerd pid $pid is running but does not answer on $SOCK: run scripts/dockerd.sh stop, then start"
    fi
    # A unix socket path is limited to 107 bytes; containerd's lives deeper than ours.
    (( ${#DIR} <= 70 )) || die "run folder $DIR is too long for the engine's sockets: set ESP_RUN_DIR to a shorter path"
    [[ "$(id -u)" == 0 ]] || die "dockerd needs root: run scripts/dockerd.sh start as root"
    install_engine
    rm -f "$SOCK"
    : >"$LOG"
    # setsid: the engine outlives this shell and no Ctrl-C of a terminal reaches it.
    setsid dockerd \
        --data-root "$DIR/data" \
        --exec-root "$DIR/exec" \
        --pidfile "$PIDFILE" \
        --host "$DOCKER_HOST_URL" \
        --iptables=false \
        --ip-masq=false \
        --bridge=none \
        --shutdown-timeout 5 \
        --log-level warn \
        </dev/null >>"$LOG" 2>&1 &
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers; do
        if (( SECONDS >= deadline )); then
            say "dockerd did not answer on $SOCK within ${START_TIMEOUT}s; last log lines:"
            tail -n 5 "$LOG" >&2 || true
            stop_engine >/dev/null 2>&1 || true
            exit 1
        fi
        if ! kill -0 $! 2>/dev/null; then
            say "dockerd exited at start; last log lines:"
            tail -n 5 "$LOG" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    say "running (pid $(running_pid || echo '?')), log $LOG"
    echo "DOCKER_HOST=$DOCKER_HOST_URL"
}

stop_engine() {
    local pid deadline left
    if pid="$(running_pid)"; then
        # SIGTERM: dockerd stops its containers (--shutdown-timeout), then its containerd.
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "dockerd pid $pid did not stop within ${STOP_TIMEOUT}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Whatever survived (a containerd or shim after a kill, or a dockerd whose pid file was lost), and the
    # containers' own processes, which a clean shutdown stops but a kill leaves running.
    left="$(container_pids | tr '\n' ' ')"
    if [[ -n "${left// /}" ]]; then
        kill -KILL $left 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while [[ -n "$(container_pids)" ]] && (( SECONDS < deadline )); do sleep 0.2; done
    fi
    left="$(our_pids | tr '\n' ' ')"
    if [[ -n "${left// /}" ]]; then
        kill -TERM $left 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while [[ -n "$(our_pids)" ]] && (( SECONDS < deadline )); do sleep 0.2; done
        left="$(our_pids | tr '\n' ' ')"
        [[ -n "${left// /}" ]] && kill -KILL $left 2>/dev/null || true
    fi
    rm -f "$PIDFILE" "$SOCK"
    # dockerd leaves its overlay and runtime mounts behind when it is killed.
    if [[ -r /proc/self/mounts ]]; then
        awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
            timeout 10 umount -l "$m" 2>/dev/null || true
        done
    fi
    if [[ -n "$(our_pids)$(container_pids)" ]]; then
        die "processes of the engine are still running: $(our_pids | tr '\n' ' ')$(container_pids | tr '\n' ' ')"
    fi
}

stop() {
    if ! running_pid >/dev/null && [[ -z "$(our_pids)$(container_pids)" ]]; then
        say "not running"
        return 0
    fi
    stop_engine
    say "stopped"
}

status() {
    if answers; then
        echo "running (pid $(running_pid || echo '?')) DOCKER_HOST=$DOCKER_HOST_URL"
        return 0
    fi
    if pid="$(running_pid)"; then
        echo "dockerd pid $pid is running but does not answer on $SOCK"
    else
        echo "not running"
    fi
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    host) echo "DOCKER_HOST=$DOCKER_HOST_URL" ;;
    *) echo "usage: $0 start|stop|status|host" >&2; exit 2 ;;
esac
