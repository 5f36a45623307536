#!/usr/bin/env bash
# Builds the Kubernetes control plane and kubectl from k8s.io/kubernetes, with the version
# stamped through ldflags as upstream's hack/lib/version.sh does: pulumi-kubernetes refuses
# an API server that reports v0.0. Run by ./scripts/engine build with OUT=<empty directory>.
set -euo pipefail
: "${OUT:?OUT must name the directory the binaries go to}"
version=v1.31.14
major=1
minor=31
build_date=2025-11-12T11:37:56Z # the release's commit time, so the build is reproducible
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
	ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
done
go build -trimpath -ldflags "$ldflags" -o "$OUT/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubectl
