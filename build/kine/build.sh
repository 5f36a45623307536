#!/usr/bin/env bash
# Builds kine, the etcd API over sqlite that k3s embeds, as the testbed's datastore.
# With CGO_ENABLED=0 kine uses its pure-Go sqlite driver (modernc.org/sqlite).
# Run by ./scripts/engine build with OUT=<empty directory>.
set -euo pipefail
: "${OUT:?OUT must name the directory the binaries go to}"
version=v0.17.5
go build -trimpath \
	-ldflags "-s -w -X github.com/k3s-io/kine/pkg/version.Version=${version}" \
	-o "$OUT/kine" github.com/k3s-io/kine
