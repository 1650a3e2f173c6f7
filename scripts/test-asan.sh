#!/bin/bash
# The PKCS#11 module's tests through pkcs11js and graphene-pk11 (test/module.test.ts, and
# the EC objects and mechanisms of test/ecdsa.test.ts, without its nginx tests)
# against the AddressSanitizer + UndefinedBehaviorSanitizer build of the module:
# node is started with the sanitizer runtimes preloaded; any report aborts the
# worker and fails the run. (The C API tests and the hostile fake enclave run
# against that build in the main suite, test/module-c.test.ts.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
make -s -C "$root/p11-module" build/asan/nitro-acm-p11.so
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
cd "$root"
# Leak checking is off for node itself (its own allocations at exit); the module's
# leaks are checked by the C API tests under LeakSanitizer and valgrind.
LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  NITRO_ACM_MODULE=p11-module/build/asan/nitro-acm-p11.so npx ava test/module.test.ts test/ecdsa.test.ts --match "!*nginx*"
gcc -std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -Wall -Wextra -Werror -shared -fPIC \
  -I"$(dirname "$(dirname "$(command -v node)")")/include/node" -I/usr/include/node \
  -o "$root/shared/native/build/asan-native.node" "$root/shared/native/native.c"
LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  NITRO_ACM_NATIVE="$root/shared/native/build/asan-native.node" npx ava test/key-server.test.ts test/hostile-peers.test.ts
