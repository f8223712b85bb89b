# ESP's one image for every process of compose/esp.yml (api, rpc, worker, control, beat, flower and the node
# manager): the Debian base scripts/build-images.sh imports (debootstrap, no registry), a venv with
# requirements.txt from PyPI, and the code. Build it with scripts/build-images.sh (`make images`):
#
#   docker build --network host -f compose/esp.Dockerfile -t esp:latest .
#
# The nodes themselves run in their own esp-anvil containers, so no anvil and no Node.js here; the contracts'
# compiled artifacts are committed (contracts/build/), so no compiler either. Of node_modules only the
# dashboard's uPlot files come in (.dockerignore): run `npm ci` (make install) before building.
ARG BASE=esp-debian:bookworm
FROM ${BASE}
# scripts/build-images.sh prunes the dangling images this label marks (the ones a rebuild replaced).
LABEL org.opencontainers.image.title=esp

# An unprivileged user for every process but the node manager (which needs the engine's socket).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/esp --create-home --shell /usr/sbin/nologin esp

ENV VIRTUAL_ENV=/opt/esp/venv \
    PATH=/opt/esp/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ESP_RUN_DIR=/var/lib/esp/run \
    ESP_KEYSTORE_DIR=/var/lib/esp/keystore \
    ESP_FILES_DIR=/var/lib/esp/files

# The venv first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt /opt/esp/app/requirements.txt
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir -q -r /opt/esp/app/requirements.txt

WORKDIR /opt/esp/app
COPY . /opt/esp/app
# Compiled once here: the code is root's and read-only to the processes.
RUN python3 -m compileall -q /opt/esp/app \
 && install -d -o esp -g esp /var/lib/esp/run /var/lib/esp/keystore /var/lib/esp/files

USER esp
# tini as PID 1: signals reach the process, and the children celery and gunicorn leave behind are reaped.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
