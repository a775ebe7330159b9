#!/usr/bin/env bash
# The test command: install into .venv, check the code's habits (lint, types,
# the wings' import contracts), then run the suite in a private network
# namespace that has only loopback, so no media leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
.venv/bin/ruff check -q relay bench tests
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
if [ "$(id -u)" -eq 0 ]; then ns=(unshare -n); else ns=(unshare -rn); fi
exec "${ns[@]}" -- sh -c 'ip link set lo up && exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"' pytest "$@"
