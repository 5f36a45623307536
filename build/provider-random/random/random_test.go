package random

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"

	"github.com/blang/semver"
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/integration"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/property"
	"golang.org/x/crypto/bcrypt"
)

func newServer(t *testing.T) integration.Server {
	t.Helper()
	server, err := integration.NewServer(context.Background(), Name, semver.MustParse(Version),
		integration.WithProvider(Provider()))
	if err != nil {
		t.Fatal(err)
	}
	return server
}

func urn(token, name string) resource.URN {
	return resource.URN("urn:pulumi:test::harbor::" + token + "::" + name)
}

// create runs Check then Create, as the engine does.
func create(t *testing.T, server integration.Server, u resource.URN, inputs map[string]property.Value) p.CreateResponse {
	t.Helper()
	check, err := server.Check(p.CheckRequest{Urn: u, Inputs: property.NewMap(inputs)})
	if err != nil || len(check.Failures) != 0 {
		t.Fatalf("check: %v %v", err, check.Failures)
	}
	resp, err := server.Create(p.CreateRequest{Urn: u, Properties: check.Inputs})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestRandomUuidIsItsOwnID(t *testing.T) {
	resp := create(t, newServer(t), urn("random:index/randomUuid:RandomUuid", "cluster-id"), nil)
	result := resp.Properties.Get("result").AsString()
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(result) {
		t.Fatalf("not a v4 uuid: %q", result)
	}
	if resp.ID != result {
		t.Fatalf("id %q, want the uuid %q", resp.ID, result)
	}
}

func TestRandomPasswordHonoursClassesAndIsSecret(t *testing.T) {
	server := newServer(t)
	resp := create(t, server, urn("random:index/randomPassword:RandomPassword", "token"), map[string]property.Value{
		"length": property.New(48.0), "special": property.New(false), "minNumeric": property.New(5.0),
	})
	result := resp.Properties.Get("result")
	if !result.Secret() || !resp.Properties.Get("bcryptHash").Secret() {
		t.Fatal("result and bcryptHash must be secret")
	}
	password := result.AsString()
	if len(password) != 48 || !regexp.MustCompile(`^[A-Za-z0-9]+$`).MatchString(password) {
		t.Fatalf("special=false, length 48: got %q", password)
	}
	if digits := len(regexp.MustCompile(`[0-9]`).FindAllString(password, -1)); digits < 5 {
		t.Fatalf("minNumeric 5, got %d digits in %q", digits, password)
	}
	hash := resp.Properties.Get("bcryptHash").AsString()
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) != nil {
		t.Fatal("bcryptHash does not match result")
	}
	if resp.ID != "none" {
		t.Fatalf("id %q, want upstream's placeholder none", resp.ID)
	}
	if resp.Properties.Get("upper").AsBool() != true || resp.Properties.Get("minLower").AsNumber() != 0 {
		t.Fatalf("defaults missing from state: %v", resp.Properties)
	}
}

func TestRandomPasswordRefusesImpossibleMinimums(t *testing.T) {
	server := newServer(t)
	u := urn("random:index/randomPassword:RandomPassword", "short")
	check, err := server.Check(p.CheckRequest{Urn: u, Inputs: property.NewMap(map[string]property.Value{
		"length": property.New(4.0), "minUpper": property.New(3.0), "minLower": property.New(3.0),
	})})
	if err != nil {
		t.Fatal(err)
	}
	_, err = server.Create(p.CreateRequest{Urn: u, Properties: check.Inputs})
	if err == nil || !strings.Contains(err.Error(), "must be >=") {
		t.Fatalf("want a length error, got %v", err)
	}
}

func TestRandomBytesEncodingsAgreeAndAreSecret(t *testing.T) {
	resp := create(t, newServer(t), urn("random:index/randomBytes:RandomBytes", "wg-key"), map[string]property.Value{
		"length": property.New(32.0),
	})
	b64, hx := resp.Properties.Get("base64"), resp.Properties.Get("hex")
	if !b64.Secret() || !hx.Secret() {
		t.Fatal("base64 and hex must be secret")
	}
	raw, err := base64.StdEncoding.DecodeString(b64.AsString())
	if err != nil || len(raw) != 32 || hex.EncodeToString(raw) != hx.AsString() {
		t.Fatalf("base64 %q and hex %q disagree (%v)", b64.AsString(), hx.AsString(), err)
	}
}

// Every input is ForceNew upstream: any change replaces; no change is no step; a preview
// leaves the result unknown.
func TestAnyChangeReplaces(t *testing.T) {
	server := newServer(t)
	u := urn("random:index/randomBytes:RandomBytes", "wg-key")
	resp := create(t, server, u, map[string]property.Value{"length": property.New(32.0)})
	olds := property.NewMap(map[string]property.Value{"length": property.New(32.0)})
	for name, news := range map[string]property.Map{
		"length":  olds.Set("length", property.New(16.0)),
		"keepers": olds.Set("keepers", property.New(map[string]property.Value{"epoch": property.New("2")})),
	} {
		diff, err := server.Diff(p.DiffRequest{ID: resp.ID, Urn: u, State: resp.Properties, Inputs: news, OldInputs: olds})
		if err != nil {
			t.Fatal(err)
		}
		replaced := false
		for _, d := range diff.DetailedDiff {
			replaced = replaced || d.Kind == p.UpdateReplace || d.Kind == p.AddReplace || d.Kind == p.DeleteReplace
		}
		if !diff.HasChanges || !replaced {
			t.Fatalf("a change of %s should replace: %+v", name, diff)
		}
	}
	diff, err := server.Diff(p.DiffRequest{ID: resp.ID, Urn: u, State: resp.Properties, Inputs: olds, OldInputs: olds})
	if err != nil || diff.HasChanges {
		t.Fatalf("no change should be no step: %+v %v", diff, err)
	}
	preview, err := server.Create(p.CreateRequest{Urn: u, DryRun: true, Properties: olds})
	if err != nil || !preview.Properties.Get("base64").IsComputed() {
		t.Fatalf("preview should leave base64 unknown: %v %v", preview.Properties, err)
	}
}
