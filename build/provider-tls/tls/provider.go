// Package tls is Space Harbor's stand-in for pulumi-tls 5.6.2: PrivateKey and SelfSignedCert with
// the tokens, property names, defaults, secrets and ids of the bridged provider. Every input is
// ForceNew there, so every input change replaces here (no Update).
package tls

import (
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"github.com/pulumi/pulumi-go-provider/middleware/schema"

	"spaceharbor.local/build/provider-tls/internal/standin"
)

// Name, Upstream and Version are what the Python SDK (pulumi_tls 5.6.2) asks the engine for.
const (
	Name     = "tls"
	Upstream = "pulumi-tls"
	Version  = "5.6.2"
)

// Provider serves PrivateKey and SelfSignedCert; CertRequest, LocallySignedCert and the
// functions are not served.
func Provider() p.Provider {
	return infer.Provider(infer.Options{
		Metadata: schema.Metadata{
			DisplayName: "tls (Space Harbor stand-in)",
			Description: standin.Description(Upstream, Version,
				"PrivateKey and SelfSignedCert from Go's crypto packages; no other resource or function is served."),
			License: "MPL-2.0",
		},
		Resources: []infer.InferredResource{
			infer.Resource(&PrivateKey{}),
			infer.Resource(&SelfSignedCert{}),
		},
	})
}
