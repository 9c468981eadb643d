#!/usr/bin/env bash
# Validates docker-compose.yml with whichever compose tool is installed: `docker compose` (v2
# plugin), else `docker-compose` (v1 or the v2 standalone binary), else says it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose-check: skipped: neither 'docker compose' nor 'docker-compose' is installed"
  exit 0
fi
echo "compose-check: ${compose[*]} config -q"
"${compose[@]}" -f docker-compose.yml config -q
echo "compose-check: docker-compose.yml is valid"
