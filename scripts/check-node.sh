#!/usr/bin/env bash
# Checks that the node on PATH is one nitro-acm runs on: 20.11 or later in the 20
# line, or 22 and later (package.json "engines"; 21 is not a supported line).
# Debian 12's own nodejs package is 18, too old.
set -euo pipefail
fail() {
  echo "nitro-acm: $1. It needs Node.js 20.11 or later, or 22 or later (Debian 12's nodejs package is 18)." >&2
  echo "  Install it from https://nodejs.org/en/download (or NodeSource's Debian packages), put it on PATH, and run this again." >&2
  exit 1
}
command -v node >/dev/null 2>&1 || fail "'node' is not on PATH"
command -v npm >/dev/null 2>&1 || fail "'npm' is not on PATH"
v=$(node -p 'process.versions.node' 2>/dev/null) || fail "'node -p process.versions.node' failed"
major=${v%%.*}
rest=${v#*.}
minor=${rest%%.*}
case "$major$minor" in *[!0-9]*|'') fail "cannot read the Node.js version '$v'" ;; esac
if [ "$major" -lt 20 ] || { [ "$major" -eq 20 ] && [ "$minor" -lt 11 ]; } || [ "$major" -eq 21 ]; then
  fail "Node.js $v is on PATH ($(command -v node))"
fi
