// Command pulumi-resource-random is Space Harbor's stand-in for the pulumi-random plugin.
package main

import (
	"spaceharbor.local/build/providers/internal/standin"
	"spaceharbor.local/build/providers/random"
)

func main() {
	standin.Main(random.Name, random.Upstream, random.Version, random.Provider())
}
