package remote

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blang/semver"
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/integration"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/asset"
	"github.com/pulumi/pulumi/sdk/v3/go/property"
)

const (
	commandURN = resource.URN("urn:pulumi:test::harbor::command:remote:Command::step")
	copyURN    = resource.URN("urn:pulumi:test::harbor::command:remote:CopyToRemote::copy")
)

// value builds a property.Value from plain Go data; property.Values pass through as they are.
func value(t *testing.T, v any) property.Value {
	t.Helper()
	switch v := v.(type) {
	case property.Value:
		return v
	case map[string]any:
		return property.New(props(t, v))
	case []any:
		items := make([]property.Value, len(v))
		for i, item := range v {
			items[i] = value(t, item)
		}
		return property.New(items)
	case int:
		return property.New(float64(v))
	case string:
		return property.New(v)
	case bool:
		return property.New(v)
	case float64:
		return property.New(v)
	case *asset.Asset:
		return property.New(v)
	}
	t.Fatalf("value: unsupported %T", v)
	return property.Value{}
}

func props(t *testing.T, m map[string]any) property.Map {
	t.Helper()
	out := map[string]property.Value{}
	for k, v := range m {
		out[k] = value(t, v)
	}
	return property.NewMap(out)
}

func newServer(t *testing.T) integration.Server {
	t.Helper()
	server, err := integration.NewServer(context.Background(), Name, semver.MustParse(Version),
		integration.WithProvider(Provider()))
	if err != nil {
		t.Fatal(err)
	}
	return server
}

// node is an SSH server with a client key, and the connection that reaches it, pinned.
type node struct {
	server     *testServer
	privateKey string
}

func newNode(t *testing.T) node {
	t.Helper()
	_, public, private := newKey(t)
	return node{server: startServer(t, public), privateKey: string(private)}
}

func (n node) connection(t *testing.T, overrides map[string]any) map[string]any {
	host, port := n.server.hostPort(t)
	conn := map[string]any{
		"host": host, "port": port, "user": "harbor", "privateKey": n.privateKey,
		"hostKey": n.server.pin(), "dialErrorLimit": 1, "perDialTimeout": 5,
	}
	for k, v := range overrides {
		conn[k] = v
	}
	return conn
}

// diffKinds maps each changed top-level property to its diff kind (the detailed diff names
// paths such as `triggers[0]` or `connection.host`).
func diffKinds(resp p.DiffResponse) map[string]p.DiffKind {
	kinds := map[string]p.DiffKind{}
	for path, d := range resp.DetailedDiff {
		head, _, _ := strings.Cut(strings.SplitN(path, "[", 2)[0], ".")
		kinds[head] = d.Kind
	}
	return kinds
}

// A change of any input but triggers is an update; no change, no step. Triggers replace: set or
// dropped as a whole the provider says so itself; a changed element is an update in the
// provider's diff, exactly as pulumi-go-provider v1.3.0 computes it for the real provider, and
// the engine replaces because the SDK registers every Command with replaceOnChanges
// ["triggers[*]"].
func TestDiffRules(t *testing.T) {
	server := newServer(t)
	conn := map[string]any{"host": "10.0.0.1", "port": 22, "user": "root", "dialErrorLimit": 10, "perDialTimeout": 15}
	base := map[string]any{
		"connection": conn, "create": "install", "delete": "remove", "stdin": "payload",
		"environment": map[string]any{"A": "1"}, "triggers": []any{"v1"},
	}
	with := func(key string, v any) map[string]any {
		out := map[string]any{}
		for k, old := range base {
			out[k] = old
		}
		out[key] = v
		return out
	}
	state := with("stdout", "out")
	state["stderr"] = ""

	cases := []struct {
		name    string
		inputs  map[string]any
		key     string
		kind    p.DiffKind
		changes bool
	}{
		{"no change", base, "", "", false},
		{"a trigger's value", with("triggers", []any{"v2"}), "triggers", p.Update, true},
		{"create", with("create", "install --again"), "create", p.Update, true},
		{"stdin", with("stdin", "other payload"), "stdin", p.Update, true},
		{"environment", with("environment", map[string]any{"A": "2"}), "environment", p.Update, true},
		{"connection", with("connection", map[string]any{
			"host": "10.0.0.2", "port": 22, "user": "root", "dialErrorLimit": 10, "perDialTimeout": 15,
		}), "connection", p.Update, true},
		{"delete", with("delete", "remove --all"), "delete", p.Update, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := server.Diff(p.DiffRequest{
				ID: "step-1", Urn: commandURN, State: props(t, state), Inputs: props(t, tc.inputs),
				OldInputs: props(t, base),
			})
			if err != nil {
				t.Fatal(err)
			}
			assertDiff(t, resp, tc.key, tc.kind, tc.changes)
		})
	}

	// Triggers set where there were none, or dropped: the provider itself says replace.
	noTriggers := with("triggers", nil)
	delete(noTriggers, "triggers")
	resp, err := server.Diff(p.DiffRequest{
		ID: "step-1", Urn: commandURN, State: props(t, noTriggers), Inputs: props(t, base), OldInputs: props(t, noTriggers),
	})
	if err != nil {
		t.Fatal(err)
	}
	assertDiff(t, resp, "triggers", p.AddReplace, true)
	resp, err = server.Diff(p.DiffRequest{
		ID: "step-1", Urn: commandURN, State: props(t, state), Inputs: props(t, noTriggers), OldInputs: props(t, base),
	})
	if err != nil {
		t.Fatal(err)
	}
	assertDiff(t, resp, "triggers", p.DeleteReplace, true)
}

func assertDiff(t *testing.T, resp p.DiffResponse, key string, kind p.DiffKind, changes bool) {
	t.Helper()
	kinds := diffKinds(resp)
	if resp.HasChanges != changes {
		t.Fatalf("HasChanges = %v, want %v (diff %v)", resp.HasChanges, changes, kinds)
	}
	if !changes {
		if len(kinds) != 0 {
			t.Fatalf("no change should have no detailed diff, got %v", kinds)
		}
		return
	}
	if len(kinds) != 1 || kinds[key] != kind {
		t.Fatalf("want only %s: %v, got %v", key, kind, kinds)
	}
}

// Check fills in pulumi-command's connection defaults, which then sit in the state.
func TestCheckAppliesConnectionDefaults(t *testing.T) {
	server := newServer(t)
	resp, err := server.Check(p.CheckRequest{
		Urn:    commandURN,
		Inputs: props(t, map[string]any{"connection": map[string]any{"host": "node-1"}, "create": "true"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Failures) != 0 {
		t.Fatalf("failures: %v", resp.Failures)
	}
	conn := resp.Inputs.Get("connection").AsMap()
	want := map[string]any{"user": "root", "port": 22.0, "dialErrorLimit": 10.0, "perDialTimeout": 15.0}
	for key, expected := range want {
		got := conn.Get(key)
		switch e := expected.(type) {
		case string:
			if !got.IsString() || got.AsString() != e {
				t.Errorf("connection.%s = %v, want %v", key, got, e)
			}
		case float64:
			if !got.IsNumber() || got.AsNumber() != e {
				t.Errorf("connection.%s = %v, want %v", key, got, e)
			}
		}
	}
}

func TestCreateDeliversStdinAndEnvironmentOverPinnedSSH(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	resp, err := server.Create(p.CreateRequest{Urn: commandURN, Properties: props(t, map[string]any{
		"connection":  n.connection(t, nil),
		"create":      `cat; printf '%s' "$GREETING"`,
		"stdin":       "hello ",
		"environment": map[string]any{"GREETING": "world"},
	})})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Properties.Get("stdout").AsString(); got != "hello world" {
		t.Fatalf("stdout = %q, want %q", got, "hello world")
	}
	if !strings.HasPrefix(resp.ID, "step") {
		t.Fatalf("id %q should start with the resource name, as upstream's", resp.ID)
	}
	_, envs, _ := n.server.seen()
	if envs["GREETING"] != "world" {
		t.Fatalf("GREETING was not sent as an env request: %v", envs)
	}
}

func TestWrongHostKeyIsRefused(t *testing.T) {
	n := newNode(t)
	_, otherKey, _ := newKey(t)
	server := newServer(t)
	_, err := server.Create(p.CreateRequest{Urn: commandURN, Properties: props(t, map[string]any{
		"connection": n.connection(t, map[string]any{"hostKey": otherKey}),
		"create":     "echo should-not-run",
	})})
	if err == nil || !strings.Contains(err.Error(), "host key mismatch") {
		t.Fatalf("want a host key mismatch, got %v", err)
	}
	if execs, _, _ := n.server.seen(); len(execs) != 0 {
		t.Fatalf("a command ran despite the wrong pin: %v", execs)
	}
}

// Each TCP connect is bounded by perDialTimeout, and dialErrorLimit bounds the retries.
func TestDialTimeoutIsBounded(t *testing.T) {
	address := blackhole(t)
	host, port, _ := strings.Cut(address, ":")
	server := newServer(t)
	n := newNode(t)
	started := time.Now()
	_, err := server.Create(p.CreateRequest{Urn: commandURN, Properties: props(t, map[string]any{
		"connection": n.connection(t, map[string]any{
			"host": host, "port": value(t, mustFloat(t, port)), "perDialTimeout": 1, "dialErrorLimit": 1,
		}),
		"create": "true",
	})})
	elapsed := time.Since(started)
	if err == nil {
		t.Fatal("a dial to a host that never answers succeeded")
	}
	// Upstream counts the retries in this message: two dials, "after 1 failed attempts".
	if !strings.Contains(err.Error(), "after 1 failed attempts") || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("want two bounded dials, got %v", err)
	}
	// Two dials of 1 s plus the SDK's short backoff; without the bound each would wait for
	// the kernel's connect timeout (over two minutes).
	if elapsed < 1800*time.Millisecond || elapsed > 10*time.Second {
		t.Fatalf("two dials with perDialTimeout 1 took %v", elapsed)
	}
}

func mustFloat(t *testing.T, s string) float64 {
	t.Helper()
	var f float64
	for _, c := range s {
		f = f*10 + float64(c-'0')
	}
	return f
}

func TestUpdateRunsUpdateAndSendsPreviousOutputOnlyWhenAsked(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	for _, tc := range []struct {
		add  bool
		want string
	}{{true, "update saw: previous"}, {false, "update saw: "}} {
		state := map[string]any{
			"connection": n.connection(t, nil), "create": "echo create",
			"update": `printf 'update saw: %s' "$PULUMI_COMMAND_STDOUT"`,
			"stdout": "previous", "stderr": "", "addPreviousOutputInEnv": tc.add,
		}
		inputs := map[string]any{
			"connection": n.connection(t, nil), "create": "echo create", "stdin": "changed",
			"update": `printf 'update saw: %s' "$PULUMI_COMMAND_STDOUT"`, "addPreviousOutputInEnv": tc.add,
		}
		resp, err := server.Update(p.UpdateRequest{
			ID: "step-1", Urn: commandURN, State: props(t, state), Inputs: props(t, inputs),
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Properties.Get("stdout").AsString(); got != tc.want {
			t.Fatalf("addPreviousOutputInEnv=%v: stdout = %q, want %q", tc.add, got, tc.want)
		}
	}
	// Without `update`, an update runs `create` again.
	resp, err := server.Update(p.UpdateRequest{
		ID: "step-1", Urn: commandURN,
		State:  props(t, map[string]any{"connection": n.connection(t, nil), "create": "echo one", "stdout": "one", "stderr": ""}),
		Inputs: props(t, map[string]any{"connection": n.connection(t, nil), "create": "echo two"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Properties.Get("stdout").AsString(); got != "two" {
		t.Fatalf("update without `update` should run create: stdout = %q", got)
	}
}

func TestDeleteRunsTheStoredDeleteOverTheStoredConnection(t *testing.T) {
	n := newNode(t)
	marker := filepath.Join(t.TempDir(), "deleted")
	server := newServer(t)
	err := server.Delete(p.DeleteRequest{ID: "step-1", Urn: commandURN, Properties: props(t, map[string]any{
		"connection": n.connection(t, nil), "create": "true", "delete": "touch " + marker,
		"stdout": "", "stderr": "",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the stored delete did not run: %v", err)
	}
}

func TestFailureNamesTheOutputUnlessLoggingHidesIt(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	create := func(logging string) error {
		inputs := map[string]any{"connection": n.connection(t, nil), "create": "cat >&2; exit 3", "stdin": "kubeconfig-secret"}
		if logging != "" {
			inputs["logging"] = logging
		}
		_, err := server.Create(p.CreateRequest{Urn: commandURN, Properties: props(t, inputs)})
		return err
	}
	err := create("")
	if err == nil || !strings.Contains(err.Error(), "kubeconfig-secret") || !strings.Contains(err.Error(), "exited with status 3") {
		t.Fatalf("a failure should carry the exit status and the stderr: %v", err)
	}
	err = create("none")
	if err == nil || strings.Contains(err.Error(), "kubeconfig-secret") {
		t.Fatalf("logging none must keep the output out of the error: %v", err)
	}
}

func TestPreviewRunsNothingAndLeavesOutputsUnknown(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	resp, err := server.Create(p.CreateRequest{Urn: commandURN, DryRun: true, Properties: props(t, map[string]any{
		"connection": n.connection(t, nil), "create": "echo should-not-run",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Properties.Get("stdout").IsComputed() || !resp.Properties.Get("stderr").IsComputed() {
		t.Fatalf("preview outputs should be unknown: %v", resp.Properties)
	}
	if execs, _, _ := n.server.seen(); len(execs) != 0 {
		t.Fatalf("preview ran %v", execs)
	}
}

// Secret inputs stay secret in the state; stdout is not made secret by a secret stdin (as
// upstream: that is what additionalSecretOutputs is for).
func TestSecretInputsStaySecret(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	// As the engine does: Check first (it marks the schema's secret inputs secret), then Create.
	check, err := server.Check(p.CheckRequest{Urn: commandURN, Inputs: props(t, map[string]any{
		"connection": n.connection(t, nil),
		"create":     "cat >/dev/null; echo done",
		"stdin":      property.New("token=abc").WithSecret(true),
	})})
	if err != nil || len(check.Failures) != 0 {
		t.Fatalf("check: %v %v", err, check.Failures)
	}
	resp, err := server.Create(p.CreateRequest{Urn: commandURN, Properties: check.Inputs})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Properties.Get("stdin").Secret() {
		t.Fatal("a secret stdin must stay secret in the state")
	}
	if !resp.Properties.Get("connection").Secret() {
		t.Fatal("the connection (it holds the private key) is secret, as upstream's schema says")
	}
	if resp.Properties.Get("stdout").Secret() {
		t.Fatal("stdout is not secret unless additionalSecretOutputs says so (upstream behaviour)")
	}
}

// Through a bastion: the bastion forwards to the node, each hop has its own key and pin, and a
// wrong node pin is refused even though the bastion's is right.
func TestProxyDialsTheNodeThroughTheBastion(t *testing.T) {
	bastion := newNode(t)
	target := newNode(t)
	server := newServer(t)
	connection := func(nodePin string) map[string]any {
		conn := target.connection(t, map[string]any{"proxy": bastion.connection(t, nil)})
		if nodePin != "" {
			conn["hostKey"] = nodePin
		}
		return conn
	}
	resp, err := server.Create(p.CreateRequest{Urn: commandURN, Properties: props(t, map[string]any{
		"connection": connection(""), "create": "echo via-bastion",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Properties.Get("stdout").AsString(); got != "via-bastion" {
		t.Fatalf("stdout = %q", got)
	}
	if execs, _, _ := target.server.seen(); len(execs) != 1 {
		t.Fatalf("the node should have run the command once, ran %v", execs)
	}
	if execs, _, forward := bastion.server.seen(); len(execs) != 0 || len(forward) != 1 || forward[0] != target.server.addr {
		t.Fatalf("the bastion should only forward to %s: execs %v, forwards %v", target.server.addr, execs, forward)
	}

	_, wrongPin, _ := newKey(t)
	_, err = server.Create(p.CreateRequest{Urn: commandURN, Properties: props(t, map[string]any{
		"connection": connection(wrongPin), "create": "echo must-not-run",
	})})
	if err == nil || !strings.Contains(err.Error(), "host key mismatch") {
		t.Fatalf("a wrong node pin behind the bastion must be refused, got %v", err)
	}
}

func TestCopyToRemoteCopiesOverSFTP(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	local := filepath.Join(t.TempDir(), "k3s-installer.sh")
	if err := os.WriteFile(local, []byte("#!/bin/sh\necho installed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	source, err := asset.FromPath(local)
	if err != nil {
		t.Fatal(err)
	}
	remotePath := filepath.Join(t.TempDir(), "opt", "harbor", "installer.sh")
	inputs := map[string]any{"connection": n.connection(t, nil), "source": source, "remotePath": remotePath}
	check, err := server.Check(p.CheckRequest{Urn: copyURN, Inputs: props(t, inputs)})
	if err != nil || len(check.Failures) != 0 {
		t.Fatalf("check: %v %v", err, check.Failures)
	}
	// The engine hands Check's inputs back over gRPC, which turns the asset into an asset
	// again; without that round trip the original inputs stand in for them.
	resp, err := server.Create(p.CreateRequest{Urn: copyURN, Properties: props(t, inputs)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ID == "" {
		t.Fatal("a copy needs an id")
	}
	got, err := os.ReadFile(remotePath)
	if err != nil || string(got) != "#!/bin/sh\necho installed\n" {
		t.Fatalf("copied file: %q, %v", got, err)
	}

	diff, err := server.Diff(p.DiffRequest{
		ID: resp.ID, Urn: copyURN, State: resp.Properties, OldInputs: props(t, inputs),
		Inputs: props(t, inputs).Set("triggers", value(t, []any{"v2"})),
	})
	if err != nil {
		t.Fatal(err)
	}
	if diffKinds(diff)["triggers"] != p.AddReplace {
		t.Fatalf("a new trigger should replace the copy: %v", diffKinds(diff))
	}
}

func TestPreviewOfAnUpdateRunsNothingAndLeavesOutputsUnknown(t *testing.T) {
	n := newNode(t)
	server := newServer(t)
	olds := map[string]any{"connection": n.connection(t, nil), "create": "echo one"}
	state := map[string]any{"connection": n.connection(t, nil), "create": "echo one", "stdout": "one", "stderr": ""}
	news := map[string]any{"connection": n.connection(t, nil), "create": "echo should-not-run"}
	resp, err := server.Update(p.UpdateRequest{
		ID: "step-1", Urn: commandURN, DryRun: true, State: props(t, state), Inputs: props(t, news), OldInputs: props(t, olds),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Properties.Get("stdout").IsComputed() {
		t.Fatalf("a previewed update should leave stdout unknown: %v", resp.Properties.Get("stdout"))
	}
	if execs, _, _ := n.server.seen(); len(execs) != 0 {
		t.Fatalf("preview ran %v", execs)
	}
}
