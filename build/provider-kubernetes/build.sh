#!/usr/bin/env bash
# Builds the real pulumi-kubernetes provider plugin from its Go module.
# The embedded schema files are generated into a scratch copy of this directory, so
# the work tree stays clean. Run by ./scripts/engine build with OUT=<empty directory>.
set -euo pipefail
: "${OUT:?OUT must name the directory the binaries go to}"
# No leading "v": upstream's Makefile stamps the bare version.
version=4.25.0
module=github.com/pulumi/pulumi-kubernetes/provider/v4

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp go.mod go.sum main.go "$scratch/"
cp -r gen "$scratch/gen"
cd "$scratch"

source_dir="$(go list -m -f '{{.Dir}}' "$module")/cmd/pulumi-resource-kubernetes"
go run ./gen "$version" "$source_dir" .
go build -trimpath \
	-ldflags "-s -w -X ${module}/pkg/version.Version=${version}" \
	-o "$OUT/pulumi-resource-kubernetes" .
