// Package random is Space Harbor's stand-in for pulumi-random 4.21.4: RandomUuid, RandomPassword
// and RandomBytes with the tokens, property names, defaults, secrets and ids of the bridged
// provider. Every input is ForceNew there, so every input change replaces here (no Update).
package random

import (
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"github.com/pulumi/pulumi-go-provider/middleware/schema"

	"spaceharbor.local/build/provider-random/internal/standin"
)

// Name, Upstream and Version are what the Python SDK (pulumi_random 4.21.4) asks the engine for.
const (
	Name     = "random"
	Upstream = "pulumi-random"
	Version  = "4.21.4"
)

// Provider serves the three resources Space Harbor uses; the others (RandomString, RandomId,
// RandomPet, RandomInteger, RandomShuffle) are not served.
func Provider() p.Provider {
	return infer.Provider(infer.Options{
		Metadata: schema.Metadata{
			DisplayName: "random (Space Harbor stand-in)",
			Description: standin.Description(Upstream, Version,
				"RandomUuid, RandomPassword and RandomBytes from crypto/rand; no other resource is served."),
			License: "Apache-2.0",
		},
		Resources: []infer.InferredResource{
			infer.Resource(&RandomUuid{}),
			infer.Resource(&RandomPassword{}),
			infer.Resource(&RandomBytes{}),
		},
	})
}
