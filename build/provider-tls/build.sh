#!/usr/bin/env bash
# Builds pulumi-resource-tls, Space Harbor's stand-in for the tls provider plugin, into $OUT.
# Run from this directory with OUT set to an absolute, empty directory; the caller
# (scripts/engine build) sets GOPROXY, GOFLAGS=-mod=mod and CGO_ENABLED=0.
set -euo pipefail

: "${OUT:?OUT must name an absolute, empty directory}"
case "$OUT" in
/*) ;;
*)
	echo "build.sh: OUT must be absolute, got $OUT" >&2
	exit 1
	;;
esac
mkdir -p "$OUT"
export CGO_ENABLED="${CGO_ENABLED:-0}"
go build -trimpath -o "$OUT/pulumi-resource-tls" .
