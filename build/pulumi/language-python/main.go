// Command pulumi-language-python is Space Harbor's stand-in for Pulumi's Python language host.
//
// Upstream's host lives in the nested module
// github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3, which the Go module
// proxy this project builds from does not serve at any version. This host implements the
// part of the LanguageRuntime protocol that the engine uses to run a pip + virtualenv
// Python project (preview, up, refresh, destroy, stack and config commands), on the public
// packages of github.com/pulumi/pulumi/sdk/v3. It runs the SDK's own
// pulumi-language-python-exec, which must sit next to this binary; ../build.sh puts both next
// to the pulumi CLI, where the engine looks for its bundled plugins.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
)

// Version is stamped by build.sh: the sdk/v3 release this host is built on, plus a build
// label that says it is not upstream's host.
var Version = "0.0.0+spaceharbor.stand-in"

const standInNote = "Space Harbor's stand-in for pulumi-language-python " +
	"(upstream's module is not served by the Go module proxy)"

const execScript = "pulumi-language-python-exec"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	// The engine also passes --logtostderr and -v=N to every plugin it starts: glog, which
	// the SDK's packages link in, registers those on the default flag set.
	tracing := flag.String("tracing", "", "Zipkin endpoint, handed on to the Python program")
	flag.Parse()

	if *showVersion {
		fmt.Println(Version)
		fmt.Println(standInNote)
		return
	}

	self, err := os.Executable()
	if err != nil {
		fail("cannot find this executable: %v", err)
	}
	executor := filepath.Join(filepath.Dir(self), execScript)
	if _, err := os.Stat(executor); err != nil {
		fail("%s must be installed next to %s: %v", execScript, self, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cancel := make(chan bool)
	go func() {
		<-ctx.Done()
		close(cancel)
	}()

	host := newHost(executor, *tracing, ctx, stop)
	// The engine's address is the last argument; without one, Handshake supplies it.
	if args := flag.Args(); len(args) > 0 {
		if err := host.setEngine(args[len(args)-1]); err != nil {
			fail("%v", err)
		}
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: cancel,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
	})
	if err != nil {
		fail("cannot serve the language host: %v", err)
	}
	// The engine reads the port from the first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fail("language host stopped serving: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: "+format+"\n", args...)
	os.Exit(1)
}
