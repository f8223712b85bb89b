#!/usr/bin/env bash
# Start the whole stack in the foreground under supervisord (scripts/supervise.py, from the Procfile):
# a process that dies is restarted alone; Ctrl-C stops every process of it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p run
if ! grep -qs '^ESP_ADMIN_KEY=.' .env && [ -z "${ESP_ADMIN_KEY:-}" ]; then
  key="$(.venv/bin/python -c 'from settings import generate_secret; print(generate_secret())')"
  echo "ESP_ADMIN_KEY=$key" >> .env
  echo "esp: generated an admin key for development (saved in .env): ESP_ADMIN_KEY=$key"
elif [ -z "${ESP_ADMIN_KEY:-}" ]; then
  echo "esp: admin key (from .env): $(grep '^ESP_ADMIN_KEY=' .env | tail -1 | cut -d= -f2-)"
fi
.venv/bin/python -m scripts.preflight
echo "  A process that exits is restarted; Ctrl-C stops everything."
exec .venv/bin/python -m scripts.supervise
