#!/usr/bin/env bash
# Makes the files docker/compose.yaml passes to the nodes as compose secrets:
#   cluster-secret                    the forward channel's shared secret (32 random bytes, hex)
#   tls-ca.pem, tls-ca-key.pem        a private CA (keep tls-ca-key.pem offline in production)
#   HOST-tls-cert.pem, HOST-tls-key.pem   for master, dept-1, dept-2: valid for that hostname,
#                                     localhost, 127.0.0.1 and the names in EXTRA_SANS
#   mariadb-password, mongo-password, redis-password
#                                     the stores' passwords (24 random bytes, hex): read by the
#                                     nodes (vim.store.*-password-file, vim.redis.password-file)
#                                     and by MariaDB's and MongoDB's images (*_FILE)
#   redis-users.acl                   Redis' ACL file: the default user with redis-password's SHA-256
# Usage: [EXTRA_SANS=NAME,IP,...] docker/make-secrets.sh [FOLDER]
#   FOLDER defaults to docker/secrets; existing files are kept (delete a HOST's pair to remake
#   it). EXTRA_SANS: comma-separated DNS names and IP addresses to put in every certificate
#   too, such as the Docker host's name, by which clients reach the published ports.
# The cluster secret and the private keys are mode 0600 (tls-ca.pem and the certificates 0644).
# The node containers run as uid 10001 (docker/Dockerfile), the database images' servers as uid
# 999 (mysql, mongodb, redis): compose file secrets keep the host's owner and mode, so the
# passwords, read by both, are owned by uid 999 and group 10001, mode 0440. Run as root, this
# gives every file its owner; run as another user, it prints the chowns to run. tls-ca-key.pem
# stays with whoever ran it.
# Needs openssl. Replace the CA with your own by putting your files there first.
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
days="${DAYS:-825}"
node_uid=10001  # the image's user (docker/Dockerfile)
store_uid=999   # the user of the mariadb, mongo and redis images
passwords=(mariadb-password mongo-password redis-password)
hosts=(master dept-1 dept-2)
umask 077
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
out="$(pwd)"

extra=""
IFS=',' read -r -a sans <<< "${EXTRA_SANS:-}"
for name in "${sans[@]}"; do
  name="${name//[[:space:]]/}"
  [ -n "$name" ] || continue
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
    extra+=",IP:$name"
  else
    extra+=",DNS:$name"
  fi
done

if [ ! -e cluster-secret ]; then
  openssl rand -hex 32 > cluster-secret
fi
for password in "${passwords[@]}"; do
  [ -e "$password" ] || openssl rand -hex 24 > "$password"
done
# Redis' ACL file: the default user, its password as a SHA-256 (made again from redis-password)
rm -f redis-users.acl
printf 'user default on #%s ~* &* +@all\n' \
  "$(tr -d '\n' < redis-password | openssl dgst -sha256 -r | cut -d' ' -f1)" > redis-users.acl
if [ ! -e tls-ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
    -keyout tls-ca-key.pem -out tls-ca.pem -subj "/CN=vim-cluster private CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
fi
for host in "${hosts[@]}"; do
  [ -e "$host-tls-cert.pem" ] && continue
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$host-tls-key.pem" -out "$host.csr" -subj "/CN=$host" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1$extra" \
    "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid,issuer" > "$host.ext"
  openssl x509 -req -in "$host.csr" -CA tls-ca.pem -CAkey tls-ca-key.pem -CAcreateserial \
    -sha256 -days "$days" -extfile "$host.ext" -out "$host-tls-cert.pem" 2>/dev/null
  rm -f "$host.csr" "$host.ext"
done
chmod 600 cluster-secret tls-ca-key.pem ./*-tls-key.pem
chmod 440 "${passwords[@]}" redis-users.acl
chmod 644 tls-ca.pem ./*-tls-cert.pem
if [ -e tls-ca.srl ]; then chmod 644 tls-ca.srl; fi
node_files=(cluster-secret tls-ca.pem)
for host in "${hosts[@]}"; do
  node_files+=("$host-tls-cert.pem" "$host-tls-key.pem")
done
store_files=("${passwords[@]}" redis-users.acl)
echo "secrets in $out: cluster-secret, tls-ca.pem, ${hosts[*]/%/-tls-*.pem}, ${store_files[*]}"
if [ "$(id -u)" = 0 ]; then
  chown "$node_uid:$node_uid" "${node_files[@]}"
  chown "$store_uid:$node_uid" "${store_files[@]}"
else
  echo "the node containers (uid $node_uid) and the stores' (uid $store_uid) read them once you run:"
  echo "  sudo chown $node_uid:$node_uid ${node_files[*]/#/$out/}"
  echo "  sudo chown $store_uid:$node_uid ${store_files[*]/#/$out/}"
fi
