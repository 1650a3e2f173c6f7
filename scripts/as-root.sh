#!/usr/bin/env bash
# Runs a command as root: as it is when already root (minimal images and
# containers often have no sudo), else through sudo, keeping PATH so that the same
# node and npm run. Used by install-deps.sh, `npm start` and `npm test`, so the
# README's commands work as typed both ways.
set -euo pipefail
if [ "$(id -u)" -eq 0 ]; then exec "$@"; fi
if command -v sudo >/dev/null 2>&1; then
  echo "nitro-acm: '$*' needs root; running it with sudo" >&2
  exec sudo env "PATH=$PATH" "$@"
fi
echo "nitro-acm: '$*' needs root, and sudo is not installed: run it as root" >&2
exit 1
