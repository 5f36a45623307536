#!/usr/bin/env bash
# Builds the real Pulumi CLI from its Go module as upstream's release build does (-trimpath,
# tags osusergo,grpcnotrace, the version through ldflags), and beside it what upstream ships
# next to the CLI for Python: a language host, the program executor and the dynamic-provider
# plugin. The engine looks for these bundled plugins next to the pulumi binary.
# The language host is our own stand-in (./language-python): upstream's module is not served
# by the Go module proxy. Run by ./scripts/engine build with OUT=<empty directory>.
set -euo pipefail
: "${OUT:?OUT must name the directory the binaries go to}"
version=v3.276.0
sdk=github.com/pulumi/pulumi/sdk/v3
flags=(-trimpath -tags "osusergo,grpcnotrace")

go build "${flags[@]}" -ldflags "-s -w -X ${sdk}/go/common/version.Version=${version}" \
	-o "$OUT/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi

# The stand-in says what it is in its version: sdk/v3's release plus a build label.
sdk_version=$(cd language-python && go list -m -f '{{.Version}}' "$sdk")
(cd language-python && go build "${flags[@]}" \
	-ldflags "-s -w -X main.Version=${sdk_version#v}+spaceharbor.stand-in" \
	-o "$OUT/pulumi-language-python" .)

sdk_dir=$(go list -m -f '{{.Dir}}' "$sdk")
# Module zips drop the executable bit.
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$OUT/"
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$OUT/"
