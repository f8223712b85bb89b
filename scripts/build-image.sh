#!/usr/bin/env bash
# Build ESP's anvil image (ESP_DOCKER_IMAGE, default esp-anvil:1.7.1) on the local engine, with no registry:
# FROM scratch + the anvil binary npm installed into node_modules/ + the libraries ldd lists
# (compose/anvil.Dockerfile). The docker backend builds it the same way on demand when it is missing.
#
#   scripts/build-image.sh [--docker-host URL] [--tag NAME:TAG]
#
# The engine is DOCKER_HOST, else the one scripts/dockerd.sh runs (start it first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "build-image.sh: $PY is missing: run make install first" >&2; exit 1; }
cd "$ROOT"
exec timeout "${ESP_BUILD_IMAGE_TIMEOUT:-600}" "$PY" -m nodes.docker build-image "$@"
