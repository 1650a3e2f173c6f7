#!/bin/sh
# rootfs.sh NODE APP_DIR OUT: makes in OUT the enclave image's whole filesystem:
# the node binary (as /usr/local/bin/node), the shared libraries it loads with
# their loader (at the paths ldd names), and the app (as /app). Nothing else: no
# shell, no package manager, no CA or time zone files (Node carries its own
# roots; the app logs in UTC). A Nitro enclave holds its whole root filesystem
# in its memory, and nitro-cli asks for 4 times the image's size, so every MiB
# here costs 4 of the enclave's. enclave/Dockerfile runs it in its build stage;
# test/packaging.test.ts runs it on this machine's node and runs the app in it.
set -eu
node=$1 app=$2 out=$3
mkdir -p "$out/usr/local/bin" "$out/app"
cp "$node" "$out/usr/local/bin/node"
ldd "$node" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
cp -R "$app/." "$out/app/"
