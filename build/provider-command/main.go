// Command pulumi-resource-command is Space Harbor's stand-in for the pulumi-command plugin.
package main

import (
	"spaceharbor.local/build/provider-command/internal/standin"
	"spaceharbor.local/build/provider-command/remote"
)

func main() {
	standin.Main(remote.Name, remote.Upstream, remote.Version, remote.Provider())
}
