// Command pulumi-resource-random is Space Harbor's stand-in for the pulumi-random plugin.
package main

import (
	"spaceharbor.local/build/provider-random/internal/standin"
	"spaceharbor.local/build/provider-random/random"
)

func main() {
	standin.Main(random.Name, random.Upstream, random.Version, random.Provider())
}
