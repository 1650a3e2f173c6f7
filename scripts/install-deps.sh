#!/usr/bin/env bash
# Installs what nitro-acm needs to build, run locally and test on Debian/Ubuntu:
# the C toolchain and PKCS#11 headers for the module, p11-kit and the OpenSSL
# pkcs11 engine, nginx and Apache httpd, OpenSC/GnuTLS tools, SoftHSM2 and wrk for
# the benchmark, pkcs11-provider (OpenSSL 3's way to PKCS#11 keys), clang with its sanitizer and libFuzzer runtimes (compiler-rt is a
# package of its own on Debian 12), valgrind, and gdb (gcore) for the secrets scan.
# Run as root, or as a user with sudo (it asks for it). Web servers are installed but not started: nitro-acm
# starts its own under private prefixes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Node.js is not installed from here (Debian 12's is too old): say so before any package work.
bash "$here/check-node.sh"
if [ "$(id -u)" -ne 0 ]; then exec bash "$here/as-root.sh" bash "$here/install-deps.sh" "$@"; fi
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting the distribution's nginx/apache2 services.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential pkg-config python3 curl ca-certificates util-linux \
  libp11-kit-dev libssl-dev libgnutls28-dev p11-kit p11-kit-modules libengine-pkcs11-openssl \
  nginx-light apache2 opensc gnutls-bin softhsm2 wrk systemd rpm cpio clang valgrind gdb >/dev/null
# pkcs11-provider (the OpenSSL 3 provider path, options.openssl: provider): in
# main on Debian 13 and Ubuntu 24.04; on Debian 12 only in bookworm-backports,
# part of the same Debian archive, which is added for it (and only used for it:
# backports are never installed unless asked for by name).
. /etc/os-release
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      > /etc/apt/sources.list.d/nitro-acm-backports.sources
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends -t bookworm-backports pkcs11-provider >/dev/null
elif apt-cache show pkcs11-provider >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends pkcs11-provider >/dev/null
else
  echo "install-deps: pkcs11-provider is not packaged here: the provider path (options.openssl: provider) and its tests need it" >&2
fi
# Debian 12 and Ubuntu 24.04 ship libFuzzer and the sanitizer runtimes apart from
# clang; older releases have them inside libclang-common-*-dev, already installed.
if apt-cache show libclang-rt-dev >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends libclang-rt-dev >/dev/null
fi
echo "install-deps: done"
