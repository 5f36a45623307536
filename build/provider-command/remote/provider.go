// Package remote is Space Harbor's stand-in for the `remote` module of pulumi-command 1.2.1:
// `command:remote:Command` and `command:remote:CopyToRemote`, with the same property names,
// defaults, secrets and diff rules, so that the real Pulumi engine can drive our program here.
package remote

import (
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"github.com/pulumi/pulumi-go-provider/middleware/schema"

	"spaceharbor.local/build/provider-command/internal/standin"
)

// Name, Upstream and Version are what the Python SDK (pulumi_command 1.2.1) asks the engine for.
const (
	Name     = "command"
	Upstream = "pulumi-command"
	Version  = "1.2.1"
)

// Provider serves remote.Command and remote.CopyToRemote. local.Command, local.run and
// remote.CopyFile are not served: Space Harbor does not use them.
func Provider() p.Provider {
	return infer.Provider(infer.Options{
		Metadata: schema.Metadata{
			DisplayName: "Command (Space Harbor stand-in)",
			Description: standin.Description(Upstream, Version,
				"remote.Command and remote.CopyToRemote over SSH; local.Command, local.run and remote.CopyFile are not served."),
			License: "Apache-2.0",
		},
		Resources: []infer.InferredResource{
			infer.Resource(&Command{}),
			infer.Resource(&CopyToRemote{}),
		},
	})
}
