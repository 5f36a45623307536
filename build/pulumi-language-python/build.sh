#!/usr/bin/env bash
# Builds Space Harbor's stand-in Python language host (upstream's module is not served by
# the Go module proxy) and installs, next to it, the two scripts upstream's release ships
# beside the CLI, taken from the sdk/v3 module: the program executor and the dynamic
# provider. Run by ./scripts/engine build with OUT=<empty directory>.
set -euo pipefail
: "${OUT:?OUT must name the directory the binaries go to}"
sdk=github.com/pulumi/pulumi/sdk/v3
sdk_version=$(go list -m -f '{{.Version}}' "$sdk")
go build -trimpath \
	-ldflags "-s -w -X main.Version=${sdk_version#v}+spaceharbor.stand-in" \
	-o "$OUT/pulumi-language-python" .
sdk_dir=$(go list -m -f '{{.Dir}}' "$sdk")
# Module zips drop the executable bit.
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$OUT/"
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$OUT/"
