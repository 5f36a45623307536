// Package standin runs one of Space Harbor's stand-in provider plugins and says that it is one.
package standin

import (
	"context"
	"fmt"
	"os"

	p "github.com/pulumi/pulumi-go-provider"
)

// Banner is the line every stand-in prints on stderr when it starts: the engine shows plugin
// stderr, so a run log never passes a stand-in off as the real provider.
func Banner(name, upstream, version string) string {
	return fmt.Sprintf("pulumi-resource-%s: Space Harbor stand-in for %s %s, built from pulumi-go-provider v1.3.0",
		name, upstream, version)
}

// Description is the schema description of a stand-in.
func Description(upstream, version, what string) string {
	return fmt.Sprintf("Space Harbor stand-in for %s %s (not the real provider): %s", upstream, version, what)
}

// Main prints the banner and serves provider under name at version, the version the
// Python SDK asks the engine for, so that the engine loads this binary in place of the real one.
func Main(name, upstream, version string, provider p.Provider) {
	fmt.Fprintln(os.Stderr, Banner(name, upstream, version))
	if err := p.RunProvider(context.Background(), name, version, provider); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-resource-%s: %v\n", name, err)
		os.Exit(1)
	}
}
