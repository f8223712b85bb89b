#!/usr/bin/env bash
# Build every image compose/esp.yml runs, on the local engine, with no image registry:
#
#   1. esp-debian:bookworm  a Debian root file system made by debootstrap from deb.debian.org (minbase with
#                           python3, python3-venv, ca-certificates, redis-server, tini), imported with `docker import`;
#                           the tarball is kept in run/images/, so a rebuild skips debootstrap (~45 s here).
#   2. esp:latest           compose/esp.Dockerfile FROM the base: a venv with requirements.txt from PyPI and the code.
#   3. esp-anvil:1.7.1      the node image (scripts/build-image.sh: FROM scratch with node_modules' anvil).
#   4. esp-prometheus       only with --monitoring: the base plus Debian's prometheus package.
#
#   scripts/build-images.sh [--monitoring] [--rebuild-base]
#
# Nothing that did not change is rebuilt: the tarball is reused while the package list is the same, the import
# is skipped while the image holds that tarball, and the engine's layer cache keeps the venv while
# requirements.txt is the same. The engine is DOCKER_HOST, else the one scripts/dockerd.sh runs.
# Environment: ESP_BASE_IMAGE, ESP_IMAGE, ESP_DEBIAN_MIRROR, ESP_BUILD_IMAGES_TIMEOUT (seconds per step, 900).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASE_TAG="${ESP_BASE_IMAGE:-esp-debian:bookworm}"
ESP_TAG="${ESP_IMAGE:-esp:latest}"
PROM_TAG="esp-prometheus:latest"
MIRROR="${ESP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
PACKAGES="python3,python3-venv,ca-certificates,redis-server,tini"
STEP_TIMEOUT="${ESP_BUILD_IMAGES_TIMEOUT:-900}"
IMAGES="$ROOT/run/images"
TARBALL="$IMAGES/esp-debian-$SUITE.tar"
STAMP="$IMAGES/esp-debian-$SUITE.packages"   # what the tarball was made with
IMPORTED="$IMAGES/esp-debian-$SUITE.imported" # "<tag> <sha256 of the tarball>" once imported

monitoring="" rebuild_base=""
for arg in "$@"; do
  case "$arg" in
    --monitoring) monitoring=1 ;;
    --rebuild-base) rebuild_base=1 ;;
    *) echo "build-images.sh: unknown argument $arg (use --monitoring, --rebuild-base)" >&2; exit 2 ;;
  esac
done

mkdir -p "$IMAGES"
die() { echo "build-images.sh: $*" >&2; exit 1; }
say() { echo "build-images: $*"; }
step() {  # step <what> <command...>: bounded, its output in run/images/<what>.log, its failure named with the log's tail
  local what="$1"; shift
  local log="$IMAGES/${what// /-}.log" started=$SECONDS rc=0
  timeout "$STEP_TIMEOUT" "$@" > "$log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    tail -15 "$log" | sed 's/^/  | /' >&2
    (( rc == 124 )) && die "$what took over ${STEP_TIMEOUT} s (ESP_BUILD_IMAGES_TIMEOUT); its log: $log"
    die "$what failed (exit $rc); its log: $log"
  fi
  say "$what: $((SECONDS - started)) s"
}

if [[ -z "${DOCKER_HOST:-}" && -S "$ROOT/run/dockerd/docker.sock" ]]; then
  export DOCKER_HOST="unix://$ROOT/run/dockerd/docker.sock"
fi
command -v docker >/dev/null || die "the docker CLI is missing: apt-get install docker.io (or docker-ce-cli)"
timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no container engine answers at ${DOCKER_HOST:-/var/run/docker.sock}: run scripts/dockerd.sh start (or set DOCKER_HOST)"

# 1. The Debian root file system, then the base image.
# The machine's own CAs (/usr/local/share/ca-certificates: an egress proxy's, a company's) go into the base as
# the host trusts them, or pip could not reach PyPI from inside a build here; a changed set rebuilds the base.
LOCAL_CAS=(/usr/local/share/ca-certificates/*.crt)
[[ -e "${LOCAL_CAS[0]}" ]] || LOCAL_CAS=()
cas="$( ((${#LOCAL_CAS[@]})) && cat "${LOCAL_CAS[@]}" | sha256sum | cut -c1-16 || echo none)"
want="$SUITE minbase $PACKAGES local-cas:$cas"
if [[ -n "$rebuild_base" || ! -s "$TARBALL" || "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
  # debootstrap chroots and creates device files: root, or passwordless sudo.
  if [[ "$(id -u)" == 0 ]]; then root=(); elif sudo -n true 2>/dev/null; then root=(sudo -n); else
    die "debootstrap needs root (it chroots and creates device files): run as root or with passwordless sudo"; fi
  work="$IMAGES/rootfs.tmp"
  "${root[@]}" rm -rf "$work"
  rm -f "$TARBALL" "$IMPORTED"
  say "debootstrap $SUITE (minbase: $PACKAGES) from $MIRROR"
  step "debootstrap" "${root[@]}" debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work" "$MIRROR"
  if ((${#LOCAL_CAS[@]})); then
    "${root[@]}" cp "${LOCAL_CAS[@]}" "$work/usr/local/share/ca-certificates/"
    step "trust the machine's CAs" "${root[@]}" chroot "$work" update-ca-certificates
  fi
  # What an image does not need: downloaded packages, package lists (an image that installs more runs apt-get update).
  "${root[@]}" sh -c 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/tmp/*' - "$work"
  step "tar the root file system" "${root[@]}" tar --numeric-owner -C "$work" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  echo "$want" > "$STAMP"
  "${root[@]}" rm -rf "$work"
fi
sha="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
if [[ "$(cat "$IMPORTED" 2>/dev/null)" != "$BASE_TAG $sha" ]] || ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  step "import $BASE_TAG" docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE $MIRROR" \
    "$TARBALL" "$BASE_TAG"
  echo "$BASE_TAG $sha" > "$IMPORTED"
else
  say "$BASE_TAG is up to date"
fi

# 2. ESP itself, with the dashboard's uPlot from node_modules (.dockerignore lets only those two files in).
if [[ -L node_modules || ! -f node_modules/uplot/dist/uPlot.iife.min.js ]]; then
  say "warning: node_modules/uplot is missing (or node_modules is a symlink the build cannot follow):" \
      "the image's /dashboard will draw no charts; run npm ci (make install) first"
fi
# The engine's layer cache makes an unchanged requirements.txt free.
step "build $ESP_TAG" docker build --force-rm --network host --build-arg "BASE=$BASE_TAG" \
  -f compose/esp.Dockerfile -t "$ESP_TAG" .

# The image a rebuild replaced (untagged now), and only ESP's own (its label).
docker image prune -f --filter "label=org.opencontainers.image.title=esp" >/dev/null || true

# 3. The node image (rebuilt only when node_modules' anvil changed).
step "build the anvil image" scripts/build-image.sh

# 4. Prometheus, for compose's `monitoring` profile.
if [[ -n "$monitoring" ]]; then
  step "build $PROM_TAG" docker build --force-rm --network host --build-arg "BASE=$BASE_TAG" \
    -f compose/prometheus.Dockerfile -t "$PROM_TAG" compose
fi
say "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${BASE_TAG%%:*}|${ESP_TAG%%:*}|esp-anvil|esp-prometheus):" | tr '\n' ' ')"
