// Command pulumi-resource-tls is Space Harbor's stand-in for the pulumi-tls plugin.
package main

import (
	"spaceharbor.local/build/providers/internal/standin"
	"spaceharbor.local/build/providers/tls"
)

func main() {
	standin.Main(tls.Name, tls.Upstream, tls.Version, tls.Provider())
}
