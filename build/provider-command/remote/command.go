package remote

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

// Environment variables that carry the previous run's output, as pulumi-command names them.
const (
	previousStdoutEnv = "PULUMI_COMMAND_STDOUT"
	previousStderrEnv = "PULUMI_COMMAND_STDERR"
)

// Command is `command:remote:Command`.
type Command struct{}

// Logging says which of the command's streams are shown in the engine's log (and in errors).
type Logging string

// The values pulumi-command accepts for `logging`.
const (
	LogStdout          Logging = "stdout"
	LogStderr          Logging = "stderr"
	LogStdoutAndStderr Logging = "stdoutAndStderr"
	LogNone            Logging = "none"
)

// Values lists the enum for the schema.
func (Logging) Values() []infer.EnumValue[Logging] {
	return []infer.EnumValue[Logging]{
		{Name: "stdout", Value: LogStdout, Description: "Log stdout only."},
		{Name: "stderr", Value: LogStderr, Description: "Log stderr only."},
		{Name: "stdoutAndStderr", Value: LogStdoutAndStderr, Description: "Log both streams."},
		{Name: "none", Value: LogNone, Description: "Log neither stream."},
	}
}

func (l *Logging) showsStdout() bool { return l == nil || *l == LogStdout || *l == LogStdoutAndStderr }
func (l *Logging) showsStderr() bool { return l == nil || *l == LogStderr || *l == LogStdoutAndStderr }

// CommandInputs are the inputs of a remote Command, named as pulumi-command names them.
type CommandInputs struct {
	// Only a change of triggers replaces; any other change is an update.
	Triggers               *[]any            `pulumi:"triggers,optional" provider:"replaceOnChanges"`
	Create                 *string           `pulumi:"create,optional"`
	Update                 *string           `pulumi:"update,optional"`
	Delete                 *string           `pulumi:"delete,optional"`
	Stdin                  *string           `pulumi:"stdin,optional"`
	Logging                *Logging          `pulumi:"logging,optional"`
	Connection             *Connection       `pulumi:"connection"        provider:"secret"`
	Environment            map[string]string `pulumi:"environment,optional"`
	AddPreviousOutputInEnv *bool             `pulumi:"addPreviousOutputInEnv,optional"`
}

// CommandOutputs are the inputs plus what the last run printed.
type CommandOutputs struct {
	CommandInputs
	Stdout string `pulumi:"stdout"`
	Stderr string `pulumi:"stderr"`
}

// Annotate sets the token and the description that names this as a stand-in.
func (c *Command) Annotate(a infer.Annotator) {
	a.SetToken("remote", "Command")
	a.Describe(&c, "Runs commands on a remote host over SSH (Space Harbor stand-in for pulumi-command 1.2.1).")
}

// Annotate describes the inputs.
func (c *CommandInputs) Annotate(a infer.Annotator) {
	a.Describe(&c.Triggers, "Values whose change replaces the resource.")
	a.Describe(&c.Create, "Run on create, and on update when `update` is unset.")
	a.Describe(&c.Update, "Run when an input other than `triggers` changes.")
	a.Describe(&c.Delete, "Run on delete, with the connection stored at the last create or update.")
	a.Describe(&c.Stdin, "Written to the command's standard input.")
	a.Describe(&c.Logging, "Which streams are logged; both by default.")
	a.Describe(&c.Connection, "How to reach the host.")
	a.Describe(&c.Environment, "Sent as SSH environment requests (the server must AcceptEnv them).")
	a.Describe(&c.AddPreviousOutputInEnv,
		"Send the previous stdout and stderr as PULUMI_COMMAND_STDOUT/STDERR on update and delete; true by default.")
}

// Annotate describes the outputs.
func (c *CommandOutputs) Annotate(a infer.Annotator) {
	a.Describe(&c.Stdout, "The standard output of the last run.")
	a.Describe(&c.Stderr, "The standard error of the last run.")
}

var (
	_ infer.CustomResource[CommandInputs, CommandOutputs] = (*Command)(nil)
	_ infer.CustomUpdate[CommandInputs, CommandOutputs]   = (*Command)(nil)
	_ infer.CustomDelete[CommandOutputs]                  = (*Command)(nil)
)

// Create runs `create` (nothing in preview, nothing without `create`).
func (*Command) Create(ctx context.Context, req infer.CreateRequest[CommandInputs]) (
	infer.CreateResponse[CommandOutputs], error,
) {
	state := CommandOutputs{CommandInputs: req.Inputs}
	id, err := resource.NewUniqueHex(req.Name, 8, 0)
	if err != nil {
		return infer.CreateResponse[CommandOutputs]{}, err
	}
	if req.DryRun || req.Inputs.Create == nil {
		return infer.CreateResponse[CommandOutputs]{ID: id, Output: state}, nil
	}
	err = state.run(ctx, *req.Inputs.Create)
	return infer.CreateResponse[CommandOutputs]{ID: id, Output: state}, err
}

// Update runs `update`, or `create` when there is no `update`.
func (*Command) Update(ctx context.Context, req infer.UpdateRequest[CommandInputs, CommandOutputs]) (
	infer.UpdateResponse[CommandOutputs], error,
) {
	state := CommandOutputs{CommandInputs: req.Inputs, Stdout: req.State.Stdout, Stderr: req.State.Stderr}
	if req.DryRun {
		return infer.UpdateResponse[CommandOutputs]{Output: state}, nil
	}
	var err error
	switch {
	case req.Inputs.Update != nil:
		err = state.run(ctx, *req.Inputs.Update)
	case req.Inputs.Create != nil:
		err = state.run(ctx, *req.Inputs.Create)
	}
	return infer.UpdateResponse[CommandOutputs]{Output: state}, err
}

// Delete runs the stored `delete` over the stored connection.
func (*Command) Delete(ctx context.Context, req infer.DeleteRequest[CommandOutputs]) (infer.DeleteResponse, error) {
	state := req.State
	if state.Delete == nil {
		return infer.DeleteResponse{}, nil
	}
	return infer.DeleteResponse{}, state.run(ctx, *state.Delete)
}

// run runs cmd on the host and, when it exits 0, records its output.
func (c *CommandOutputs) run(ctx context.Context, cmd string) error {
	if c.Connection == nil {
		return fmt.Errorf("connection is required")
	}
	client, err := c.Connection.Dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	session, err := client.NewSession()
	if err != nil {
		return err
	}
	defer session.Close()

	for key, value := range c.Environment {
		if err := session.Setenv(key, value); err != nil {
			p.GetLogger(ctx).Errorf("Unable to set '%s': the SSH server must accept it with AcceptEnv.", key)
			return fmt.Errorf("could not set environment variable %q: %w", key, err)
		}
	}
	if c.AddPreviousOutputInEnv == nil || *c.AddPreviousOutputInEnv {
		for key, value := range map[string]string{previousStdoutEnv: c.Stdout, previousStderrEnv: c.Stderr} {
			if value == "" {
				continue
			}
			if err := session.Setenv(key, value); err != nil {
				// As upstream: the previous output is sent on a best-effort basis.
				p.GetLogger(ctx).Warningf("Unable to set '%s': the SSH server must accept it with AcceptEnv.", key)
			}
		}
	}
	if c.Stdin != nil && *c.Stdin != "" {
		session.Stdin = strings.NewReader(*c.Stdin)
	}

	var stdout, stderr bytes.Buffer
	shown := &lockedBuffer{}
	logReader, logWriter := io.Pipe()
	stdoutSinks := []io.Writer{&stdout}
	stderrSinks := []io.Writer{&stderr}
	if c.Logging.showsStdout() {
		stdoutSinks = append(stdoutSinks, logWriter, shown)
	}
	if c.Logging.showsStderr() {
		stderrSinks = append(stderrSinks, logWriter, shown)
	}
	session.Stdout = io.MultiWriter(stdoutSinks...)
	session.Stderr = io.MultiWriter(stderrSinks...)
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		scanner := bufio.NewScanner(logReader)
		scanner.Buffer(make([]byte, 64*1024), 1024*1024)
		for scanner.Scan() {
			p.GetLogger(ctx).InfoStatus(scanner.Text())
		}
		_, _ = io.Copy(io.Discard, logReader)
	}()

	err = session.Run(cmd)
	logWriter.Close()
	<-logged
	if err != nil {
		// Only the streams that logging shows go into the error: a step that hides its
		// output (a kubeconfig, say) must not leak it through a failure message.
		return fmt.Errorf("%w: running %q:\n%s", err, cmd, shown.String())
	}
	c.Stdout = strings.TrimSuffix(stdout.String(), "\n")
	c.Stderr = strings.TrimSuffix(stderr.String(), "\n")
	return nil
}

// lockedBuffer interleaves stdout and stderr, which x/crypto copies in two goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(data []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(data)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
