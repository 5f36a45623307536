#!/usr/bin/env bash
# Builds the real Pulumi CLI from its Go module, as upstream's release build does
# (-trimpath, tags osusergo,grpcnotrace, the version through ldflags).
# Run by ./scripts/engine build with OUT=<empty directory>.
set -euo pipefail
: "${OUT:?OUT must name the directory the binaries go to}"
version=v3.276.0
go build -trimpath -tags osusergo,grpcnotrace \
	-ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=${version}" \
	-o "$OUT/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
