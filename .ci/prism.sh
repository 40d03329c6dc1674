#!/usr/bin/env bash
# Install Stoplight Prism (the OpenAPI mock server used by tests/test_conformance.py) into the
# repo-local folder .prism/ (gitignored). Idempotent: a second run only checks the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
PRISM_VERSION="${PRISM_VERSION:-5.14.2}"
DEST="$PWD/.prism"
BIN="$DEST/node_modules/.bin/prism"

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "prism $("$BIN" --version) already installed in .prism/"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null) \
      || { echo "npm is not available; the conformance tests will skip"; exit 1; }
  else
    echo "npm is not available; the conformance tests will skip"; exit 1
  fi
fi
mkdir -p "$DEST"
[ -f "$DEST/package.json" ] || echo '{"name": "prism-local", "private": true}' > "$DEST/package.json"
npm install --prefix "$DEST" --no-audit --no-fund --loglevel=error --no-save \
  "@stoplight/prism-cli@${PRISM_VERSION}"
"$BIN" --version >/dev/null
echo "prism $("$BIN" --version) installed in .prism/"
