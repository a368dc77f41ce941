#!/usr/bin/env bash
# Makes the files docker/compose.yaml passes to the nodes as compose secrets:
#   cluster-secret                    the forward channel's shared secret (32 random bytes, hex)
#   tls-ca.pem, tls-ca-key.pem        a private CA (keep tls-ca-key.pem offline in production)
#   HOST-tls-cert.pem, HOST-tls-key.pem   for master, dept-1, dept-2: valid for that hostname
# Usage: docker/make-secrets.sh [FOLDER]   (default docker/secrets; existing files are kept)
# Needs openssl. Replace the CA with your own by putting your files there first.
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
days="${DAYS:-825}"
hosts=(master dept-1 dept-2)
mkdir -p "$out"
chmod 700 "$out"  # the folder guards the files; they are 0644 so the container's user reads them
cd "$out"
if [ ! -e cluster-secret ]; then
  openssl rand -hex 32 > cluster-secret
fi
if [ ! -e tls-ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
    -keyout tls-ca-key.pem -out tls-ca.pem -subj "/CN=vim-cluster private CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
  chmod 600 tls-ca-key.pem
fi
for host in "${hosts[@]}"; do
  [ -e "$host-tls-cert.pem" ] && continue
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$host-tls-key.pem" -out "$host.csr" -subj "/CN=$host" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1" \
    "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid,issuer" > "$host.ext"
  openssl x509 -req -in "$host.csr" -CA tls-ca.pem -CAkey tls-ca-key.pem -CAcreateserial \
    -sha256 -days "$days" -extfile "$host.ext" -out "$host-tls-cert.pem" 2>/dev/null
  rm -f "$host.csr" "$host.ext"
done
chmod 644 cluster-secret tls-ca.pem ./*-tls-cert.pem ./*-tls-key.pem
echo "secrets in $out: cluster-secret, tls-ca.pem, ${hosts[*]/%/-tls-*.pem}"
