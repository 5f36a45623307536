// Command pulumi-resource-command is Space Harbor's stand-in for the pulumi-command plugin.
package main

import (
	"spaceharbor.local/build/providers/command/remote"
	"spaceharbor.local/build/providers/internal/standin"
)

func main() {
	standin.Main(remote.Name, remote.Upstream, remote.Version, remote.Provider())
}
