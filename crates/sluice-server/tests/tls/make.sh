#!/usr/bin/env bash
# Test-only TLS material: a CA (ca.pem) and a server certificate for localhost / 127.0.0.1
# signed by it (cert.pem, key.pem), valid for 100 years. Never use these outside tests.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
  -subj "/CN=Sluice test CA" -keyout "$tmp/ca.key" -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout key.pem -out "$tmp/server.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tmp/ext"
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial -days 36500 \
  -extfile "$tmp/ext" -out cert.pem 2>/dev/null
rm -rf "$tmp" ca.srl
