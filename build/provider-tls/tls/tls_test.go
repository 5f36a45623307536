package tls

import (
	"context"
	"crypto/sha1" //nolint:gosec // upstream's id
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/blang/semver"
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/integration"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/property"
)

const (
	keyURN  = resource.URN("urn:pulumi:test::harbor::tls:index/privateKey:PrivateKey::sealed-key")
	certURN = resource.URN("urn:pulumi:test::harbor::tls:index/selfSignedCert:SelfSignedCert::sealed-cert")
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

func TestPrivateKeyEncodingsAndID(t *testing.T) {
	server := newServer(t)
	for _, tc := range []struct {
		algorithm, pemType string
		openssh            bool
	}{
		{"RSA", "RSA PRIVATE KEY", true},
		{"ECDSA", "EC PRIVATE KEY", false}, // the default curve P224 has no OpenSSH form
		{"ED25519", "PRIVATE KEY", true},
	} {
		inputs := map[string]property.Value{"algorithm": property.New(tc.algorithm)}
		if tc.algorithm == "RSA" {
			inputs["rsaBits"] = property.New(2048.0)
		}
		resp := create(t, server, keyURN, inputs)
		props := resp.Properties
		for _, secret := range []string{"privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh"} {
			if !props.Get(secret).Secret() {
				t.Fatalf("%s: %s must be secret", tc.algorithm, secret)
			}
		}
		block, _ := pem.Decode([]byte(props.Get("privateKeyPem").AsString()))
		if block == nil || block.Type != tc.pemType {
			t.Fatalf("%s: privateKeyPem block %v, want %s", tc.algorithm, block, tc.pemType)
		}
		public, _ := pem.Decode([]byte(props.Get("publicKeyPem").AsString()))
		if public == nil {
			t.Fatalf("%s: no public key", tc.algorithm)
		}
		sum := sha1.Sum(public.Bytes) //nolint:gosec // upstream's id
		if resp.ID != hex.EncodeToString(sum[:]) {
			t.Fatalf("%s: id %q is not the SHA-1 of the public key", tc.algorithm, resp.ID)
		}
		hasOpenSSH := props.Get("publicKeyOpenssh").AsString() != ""
		if hasOpenSSH != tc.openssh || (tc.openssh && !strings.HasPrefix(props.Get("publicKeyFingerprintSha256").AsString(), "SHA256:")) {
			t.Fatalf("%s: OpenSSH fields %v", tc.algorithm, props)
		}
	}
}

func TestPrivateKeyRefusesUnknownAlgorithmInPreview(t *testing.T) {
	_, err := newServer(t).Create(p.CreateRequest{Urn: keyURN, DryRun: true, Properties: property.NewMap(
		map[string]property.Value{"algorithm": property.New("DSA")})})
	if err == nil || !strings.Contains(err.Error(), "algorithm") {
		t.Fatalf("want an algorithm error, got %v", err)
	}
}

// The certificate as Space Harbor's sealed-secrets key asks for it.
func TestSelfSignedCertAsSpaceHarborMakesIt(t *testing.T) {
	server := newServer(t)
	key := create(t, server, keyURN, map[string]property.Value{"algorithm": property.New("RSA"), "rsaBits": property.New(2048.0)})
	resp := create(t, server, certURN, map[string]property.Value{
		"privateKeyPem": key.Properties.Get("privateKeyPem"),
		"subject": property.New(map[string]property.Value{
			"commonName": property.New("sealed-secret"), "organization": property.New("sealed-secret"),
		}),
		"validityPeriodHours": property.New(87600.0),
		"allowedUses":         property.New([]property.Value{property.New("key_encipherment"), property.New("data_encipherment")}),
	})
	props := resp.Properties
	if !props.Get("privateKeyPem").Secret() {
		t.Fatal("the key input must stay secret in the certificate's state")
	}
	block, _ := pem.Decode([]byte(props.Get("certPem").AsString()))
	if block == nil {
		t.Fatal("no certificate PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "sealed-secret" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "sealed-secret" {
		t.Fatalf("subject %v", cert.Subject)
	}
	if cert.KeyUsage != x509.KeyUsageKeyEncipherment|x509.KeyUsageDataEncipherment || cert.IsCA {
		t.Fatalf("key usage %v, CA %v", cert.KeyUsage, cert.IsCA)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
	if resp.ID != cert.SerialNumber.String() {
		t.Fatalf("id %q, want the serial %s", resp.ID, cert.SerialNumber)
	}
	start, _ := time.Parse(time.RFC3339, props.Get("validityStartTime").AsString())
	end, _ := time.Parse(time.RFC3339, props.Get("validityEndTime").AsString())
	if end.Sub(start) != 87600*time.Hour || props.Get("readyForRenewal").AsBool() || props.Get("keyAlgorithm").AsString() != "RSA" {
		t.Fatalf("validity %v..%v, readyForRenewal %v, keyAlgorithm %v", start, end,
			props.Get("readyForRenewal"), props.Get("keyAlgorithm"))
	}
}

func TestSelfSignedCertRefusesWhatItDoesNotServe(t *testing.T) {
	server := newServer(t)
	for name, inputs := range map[string]map[string]property.Value{
		"privateKeyPemWo": {"privateKeyPemWo": property.New("x"), "validityPeriodHours": property.New(1.0), "allowedUses": property.New([]property.Value{})},
		"allowedUses":     {"privateKeyPem": property.New("x"), "validityPeriodHours": property.New(1.0), "allowedUses": property.New([]property.Value{property.New("fly")})},
	} {
		_, err := server.Create(p.CreateRequest{Urn: certURN, DryRun: true, Properties: property.NewMap(inputs)})
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Fatalf("%s: want an error naming it, got %v", name, err)
		}
	}
}
