// Command pulumi-resource-kubernetes serves the real pulumi-kubernetes provider.
//
// Upstream's own main package embeds schema-embed.json and terraform-mapping-embed.json,
// which upstream generates and does not commit, so its module zip cannot compile it.
// build.sh generates them with ./gen from the committed schema.json and
// terraform-mapping.json; this file embeds them and calls the same exported entry point.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var packageSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, packageSchema, terraformMapping)
}
