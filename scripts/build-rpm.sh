#!/bin/bash
# npm run rpm: builds build/rpm/nitro-acm-VERSION-1.x86_64.rpm with rpmbuild.
# Stages what the package installs, then lets rpm/nitro-acm.spec package it:
#   /usr/lib/nitro-acm          the agent compiled to JavaScript, production
#                               dependencies only (no TypeScript, no tsx)
#   /usr/bin/nitro-acm          the command
#   /usr/lib64/pkcs11/          the PKCS#11 module, with its p11-kit .module file
#   /usr/lib/systemd/system/    nitro-enclaves-acm.service
#   /etc/nitro_enclaves/        acm.example.yaml, acm-httpd.example.yaml
#   /usr/share/nitro_enclaves/nitro-acm/  the enclave image and its measurements
#                               (from npm run build:eif, when it was built)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${NITRO_ACM_RPM_DIR:-$root/build/rpm}
cd "$root"
command -v rpmbuild >/dev/null || { echo "npm run rpm: rpmbuild is not installed (Debian/Ubuntu: apt-get install rpm; Fedora/Amazon Linux: dnf install rpm-build)" >&2; exit 3; }
version=$(node -p 'require("./package.json").version')
echo "rpm: building nitro-acm $version" >&2
make -s -C p11-module
npm run --silent build:native

rm -rf "$out"
stage=$out/stage
app=$stage/usr/lib/nitro-acm
mkdir -p "$app" "$stage/usr/bin" "$stage/usr/lib64/pkcs11" "$stage/usr/share/p11-kit/modules" \
  "$stage/usr/lib/systemd/system" "$stage/etc/nitro_enclaves" "$stage/usr/share/nitro_enclaves/nitro-acm" \
  "$stage/usr/share/doc/nitro-acm" "$stage/usr/share/licenses/nitro-acm"

echo "rpm: compiling TypeScript" >&2
npx tsc -p tsconfig.build.json --outDir "$app"
cp package.json package-lock.json "$app/"
cp -a templates config "$app/"
cp -a shared/trust "$app/shared/"
install -D -m 0755 shared/native/build/Release/native.node "$app/shared/native/build/Release/native.node"

echo "rpm: production dependencies" >&2
cp -a node_modules "$app/"
(cd "$app" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
# Build leftovers of native dependencies are not needed at run time.
find "$app/node_modules" -path '*/build/Release/obj.target' -prune -exec rm -rf {} +

cat > "$stage/usr/bin/nitro-acm" <<'WRAPPER'
#!/bin/sh
# The nitro-acm command (installed by the nitro-acm RPM).
NITRO_ACM_SELF=nitro-acm exec node /usr/lib/nitro-acm/src/cli.js "$@"
WRAPPER
chmod 0755 "$stage/usr/bin/nitro-acm"
install -m 0755 p11-module/build/nitro-acm-p11.so "$stage/usr/lib64/pkcs11/nitro-acm-p11.so"
# The enclave runs at CID 16 (the agent starts it there), key channel port 9999.
node --import tsx -e "import('./src/local/p11kit.ts').then((m) => process.stdout.write(m.renderModuleFile('/usr/lib64/pkcs11/nitro-acm-p11.so', 'vsock:cid=16;port=9999')))" > "$stage/usr/share/p11-kit/modules/nitro-acm.module"
install -m 0644 config/nitro-enclaves-acm.service "$stage/usr/lib/systemd/system/"
install -m 0644 config/acm.example.yaml config/acm-httpd.example.yaml "$stage/etc/nitro_enclaves/"
install -m 0644 README.md "$stage/usr/share/doc/nitro-acm/"
install -m 0644 docs/*.md "$stage/usr/share/doc/nitro-acm/"
install -m 0644 LICENSE "$stage/usr/share/licenses/nitro-acm/"
eif=${NITRO_ACM_EIF_DIR:-$root/build/eif}
if [ -f "$eif/nitro-acm.eif" ] && [ -f "$eif/image-measurements.json" ]; then
  install -m 0644 "$eif/nitro-acm.eif" "$eif/image-measurements.json" "$stage/usr/share/nitro_enclaves/nitro-acm/"
else
  echo "rpm: WARNING: no enclave image in $eif (npm run build:eif needs Docker and nitro-cli): this package cannot start an enclave until /usr/share/nitro_enclaves/nitro-acm/nitro-acm.eif is provided" >&2
  printf 'The enclave image (nitro-acm.eif) and image-measurements.json belong here.\nThis package was built without them: build them with "npm run build:eif"\non a machine with Docker and the AWS Nitro Enclaves CLI, and copy them here.\n' > "$stage/usr/share/nitro_enclaves/nitro-acm/README"
fi

echo "rpm: rpmbuild" >&2
rpmbuild -bb rpm/nitro-acm.spec --quiet \
  --define "_topdir $out/rpmbuild" --define "_rpmdir $out" --define "stagedir $stage" --define "version_ $version" \
  --define "_unitdir /usr/lib/systemd/system" --define "_libdir /usr/lib64"
rpm=$(ls "$out"/x86_64/nitro-acm-"$version"-1*.x86_64.rpm)
echo "rpm: $rpm ($(du -h "$rpm" | cut -f1))" >&2
echo "$rpm"
