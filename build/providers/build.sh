#!/usr/bin/env bash
# Builds Space Harbor's stand-in provider plugins (pulumi-resource-command, -random and -tls)
# into $OUT. Run from this directory, with OUT set to an absolute, empty directory; the caller
# (scripts/engine) sets GOPROXY, GOFLAGS=-mod=mod and CGO_ENABLED=0.
set -euo pipefail

: "${OUT:?OUT must name an absolute, empty directory for the plugins}"
case "$OUT" in
/*) ;;
*)
	echo "build.sh: OUT must be absolute, got $OUT" >&2
	exit 1
	;;
esac
mkdir -p "$OUT"
export CGO_ENABLED="${CGO_ENABLED:-0}"

# One module, one build: the three plugins share every dependency, so one `go build` compiles
# them once and links three binaries.
go build -trimpath -o "$OUT/" \
	./cmd/pulumi-resource-command \
	./cmd/pulumi-resource-random \
	./cmd/pulumi-resource-tls

for plugin in command random tls; do
	test -x "$OUT/pulumi-resource-$plugin" || {
		echo "build.sh: pulumi-resource-$plugin was not built" >&2
		exit 1
	}
done
