// Command pulumi-resource-tls is Space Harbor's stand-in for the pulumi-tls plugin.
package main

import (
	"spaceharbor.local/build/provider-tls/internal/standin"
	"spaceharbor.local/build/provider-tls/tls"
)

func main() {
	standin.Main(tls.Name, tls.Upstream, tls.Version, tls.Provider())
}
