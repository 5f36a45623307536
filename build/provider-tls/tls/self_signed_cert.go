package tls

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // RFC 5280's subject key id method 1 is a SHA-1
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/pulumi/pulumi-go-provider/infer"
)

// now is the clock, replaceable in tests.
var now = time.Now

// SelfSignedCert is `tls:index/selfSignedCert:SelfSignedCert`.
type SelfSignedCert struct{}

// Subject is the certificate's distinguished name.
type Subject struct {
	CommonName         *string   `pulumi:"commonName,optional"`
	Organization       *string   `pulumi:"organization,optional"`
	OrganizationalUnit *string   `pulumi:"organizationalUnit,optional"`
	StreetAddresses    *[]string `pulumi:"streetAddresses,optional"`
	Locality           *string   `pulumi:"locality,optional"`
	Province           *string   `pulumi:"province,optional"`
	Country            *string   `pulumi:"country,optional"`
	PostalCode         *string   `pulumi:"postalCode,optional"`
	SerialNumber       *string   `pulumi:"serialNumber,optional"`
	EmailAddress       *string   `pulumi:"emailAddress,optional"`
}

// Annotate sets the schema token upstream uses.
func (s *Subject) Annotate(a infer.Annotator) {
	a.SetToken("index/SelfSignedCertSubject", "SelfSignedCertSubject")
}

// SelfSignedCertArgs are its inputs, with the bridged provider's defaults.
type SelfSignedCertArgs struct {
	PrivateKeyPem       *string  `pulumi:"privateKeyPem,optional"          provider:"secret"`
	PrivateKeyPemWo     *string  `pulumi:"privateKeyPemWo,optional"        provider:"secret"`
	PrivateKeyPemWoVer  *string  `pulumi:"privateKeyPemWoVersion,optional"`
	Subject             *Subject `pulumi:"subject,optional"`
	ValidityPeriodHours int      `pulumi:"validityPeriodHours"`
	AllowedUses         []string `pulumi:"allowedUses"`
	EarlyRenewalHours   *int     `pulumi:"earlyRenewalHours,optional"`
	IsCaCertificate     *bool    `pulumi:"isCaCertificate,optional"`
	MaxPathLength       *int     `pulumi:"maxPathLength,optional"`
	SetSubjectKeyID     *bool    `pulumi:"setSubjectKeyId,optional"`
	SetAuthorityKeyID   *bool    `pulumi:"setAuthorityKeyId,optional"`
	DNSNames            []string `pulumi:"dnsNames,optional"`
	IPAddresses         []string `pulumi:"ipAddresses,optional"`
	URIs                []string `pulumi:"uris,optional"`
}

// SelfSignedCertState is its state.
type SelfSignedCertState struct {
	SelfSignedCertArgs
	CertPem           string `pulumi:"certPem"`
	KeyAlgorithm      string `pulumi:"keyAlgorithm"`
	ValidityStartTime string `pulumi:"validityStartTime"`
	ValidityEndTime   string `pulumi:"validityEndTime"`
	ReadyForRenewal   bool   `pulumi:"readyForRenewal"`
}

// Annotate sets the token.
func (c *SelfSignedCert) Annotate(a infer.Annotator) {
	a.SetToken("index/selfSignedCert", "SelfSignedCert")
	a.Describe(&c, "A self-signed certificate (Space Harbor stand-in for pulumi-tls 5.6.2).")
}

// Annotate sets the defaults the bridged provider fills in.
func (c *SelfSignedCertArgs) Annotate(a infer.Annotator) {
	a.Describe(&c.PrivateKeyPem, "The key that signs the certificate and whose public half it certifies.")
	a.Describe(&c.PrivateKeyPemWo, "Not served by this stand-in: refused.")
	a.Describe(&c.PrivateKeyPemWoVer, "Not served by this stand-in: refused.")
	a.Describe(&c.AllowedUses, "Key usages and extended key usages, by upstream's names (key_encipherment, server_auth, ...).")
	a.SetDefault(&c.EarlyRenewalHours, 0)
	a.SetDefault(&c.IsCaCertificate, false)
	a.SetDefault(&c.SetSubjectKeyID, false)
	a.SetDefault(&c.SetAuthorityKeyID, false)
}

var keyUsages = map[string]x509.KeyUsage{
	"digital_signature":  x509.KeyUsageDigitalSignature,
	"content_commitment": x509.KeyUsageContentCommitment,
	"key_encipherment":   x509.KeyUsageKeyEncipherment,
	"data_encipherment":  x509.KeyUsageDataEncipherment,
	"key_agreement":      x509.KeyUsageKeyAgreement,
	"cert_signing":       x509.KeyUsageCertSign,
	"crl_signing":        x509.KeyUsageCRLSign,
	"encipher_only":      x509.KeyUsageEncipherOnly,
	"decipher_only":      x509.KeyUsageDecipherOnly,
}

var extendedKeyUsages = map[string]x509.ExtKeyUsage{
	"any_extended":                      x509.ExtKeyUsageAny,
	"server_auth":                       x509.ExtKeyUsageServerAuth,
	"client_auth":                       x509.ExtKeyUsageClientAuth,
	"code_signing":                      x509.ExtKeyUsageCodeSigning,
	"email_protection":                  x509.ExtKeyUsageEmailProtection,
	"ipsec_end_system":                  x509.ExtKeyUsageIPSECEndSystem,
	"ipsec_tunnel":                      x509.ExtKeyUsageIPSECTunnel,
	"ipsec_user":                        x509.ExtKeyUsageIPSECUser,
	"timestamping":                      x509.ExtKeyUsageTimeStamping,
	"ocsp_signing":                      x509.ExtKeyUsageOCSPSigning,
	"microsoft_server_gated_crypto":     x509.ExtKeyUsageMicrosoftServerGatedCrypto,
	"netscape_server_gated_crypto":      x509.ExtKeyUsageNetscapeServerGatedCrypto,
	"microsoft_commercial_code_signing": x509.ExtKeyUsageMicrosoftCommercialCodeSigning,
	"microsoft_kernel_code_signing":     x509.ExtKeyUsageMicrosoftKernelCodeSigning,
}

// WireDependencies keeps the signing key secret in every state (Sensitive upstream), whether or
// not the program marked it.
func (*SelfSignedCert) WireDependencies(f infer.FieldSelector, _ *SelfSignedCertArgs, state *SelfSignedCertState) {
	f.OutputField(&state.PrivateKeyPem).AlwaysSecret()
}

// Create signs the certificate; its id is its serial number, as upstream.
func (*SelfSignedCert) Create(_ context.Context, req infer.CreateRequest[SelfSignedCertArgs]) (
	infer.CreateResponse[SelfSignedCertState], error,
) {
	state := SelfSignedCertState{SelfSignedCertArgs: req.Inputs}
	template, err := certTemplate(req.Inputs)
	if err != nil {
		return infer.CreateResponse[SelfSignedCertState]{}, err
	}
	if req.DryRun || req.Inputs.PrivateKeyPem == nil {
		// The key is unknown in a preview that creates it too.
		return infer.CreateResponse[SelfSignedCertState]{Output: state}, nil
	}
	key, algorithm, err := parsePrivateKey(*req.Inputs.PrivateKeyPem)
	if err != nil {
		return infer.CreateResponse[SelfSignedCertState]{}, fmt.Errorf("privateKeyPem: %w", err)
	}
	if truthy(req.Inputs.IsCaCertificate) || truthy(req.Inputs.SetSubjectKeyID) {
		if template.SubjectKeyId, err = subjectKeyID(key.Public()); err != nil {
			return infer.CreateResponse[SelfSignedCertState]{}, err
		}
	}
	if truthy(req.Inputs.SetAuthorityKeyID) {
		// Self-signed: the authority is the subject itself.
		if template.AuthorityKeyId, err = subjectKeyID(key.Public()); err != nil {
			return infer.CreateResponse[SelfSignedCertState]{}, err
		}
	}
	if template.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128)); err != nil {
		return infer.CreateResponse[SelfSignedCertState]{}, err
	}
	template.NotBefore = now()
	template.NotAfter = template.NotBefore.Add(time.Duration(req.Inputs.ValidityPeriodHours) * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return infer.CreateResponse[SelfSignedCertState]{}, fmt.Errorf("failed to create certificate: %w", err)
	}
	state.CertPem = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	state.KeyAlgorithm = algorithm
	state.ValidityStartTime = template.NotBefore.Format(time.RFC3339Nano)
	state.ValidityEndTime = template.NotAfter.Format(time.RFC3339Nano)
	state.ReadyForRenewal = readyForRenewal(state)
	return infer.CreateResponse[SelfSignedCertState]{ID: template.SerialNumber.String(), Output: state}, nil
}

// Read (refresh) marks a certificate ready for renewal once within earlyRenewalHours of its
// end, as upstream does; nothing else about it can change outside the state.
func (*SelfSignedCert) Read(_ context.Context, req infer.ReadRequest[SelfSignedCertArgs, SelfSignedCertState]) (
	infer.ReadResponse[SelfSignedCertArgs, SelfSignedCertState], error,
) {
	state := req.State
	if readyForRenewal(state) {
		state.ReadyForRenewal = true
	}
	return infer.ReadResponse[SelfSignedCertArgs, SelfSignedCertState]{ID: req.ID, Inputs: req.Inputs, State: state}, nil
}

func readyForRenewal(state SelfSignedCertState) bool {
	end, err := time.Parse(time.RFC3339, state.ValidityEndTime)
	if err != nil {
		return false
	}
	early := 0
	if state.EarlyRenewalHours != nil {
		early = *state.EarlyRenewalHours
	}
	return !now().Before(end.Add(-time.Duration(early) * time.Hour))
}

func truthy(value *bool) bool { return value != nil && *value }

// certTemplate checks the arguments and builds everything but the key-derived fields, so
// that a preview refuses bad input.
func certTemplate(args SelfSignedCertArgs) (*x509.Certificate, error) {
	if args.PrivateKeyPemWo != nil || args.PrivateKeyPemWoVer != nil {
		return nil, fmt.Errorf("privateKeyPemWo: write-only keys are not served by this stand-in; use privateKeyPem")
	}
	if args.ValidityPeriodHours < 0 {
		return nil, fmt.Errorf("validityPeriodHours: must be >= 0, got %d", args.ValidityPeriodHours)
	}
	template := &x509.Certificate{BasicConstraintsValid: true, MaxPathLen: -1}
	if s := args.Subject; s != nil {
		template.Subject = pkix.Name{
			CommonName: deref(s.CommonName), SerialNumber: deref(s.SerialNumber),
			Organization: list(s.Organization), OrganizationalUnit: list(s.OrganizationalUnit),
			Locality: list(s.Locality), Province: list(s.Province), Country: list(s.Country),
			PostalCode: list(s.PostalCode),
		}
		if s.StreetAddresses != nil {
			template.Subject.StreetAddress = *s.StreetAddresses
		}
		if s.EmailAddress != nil {
			// emailAddress (PKCS #9) has no field in pkix.Name.
			template.Subject.ExtraNames = append(template.Subject.ExtraNames, pkix.AttributeTypeAndValue{
				Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: *s.EmailAddress,
			})
		}
	}
	for _, use := range args.AllowedUses {
		usage, isKeyUsage := keyUsages[use]
		extended, isExtended := extendedKeyUsages[use]
		switch {
		case isKeyUsage:
			template.KeyUsage |= usage
		case isExtended:
			template.ExtKeyUsage = append(template.ExtKeyUsage, extended)
		default:
			return nil, fmt.Errorf("allowedUses: %q is not a key usage upstream knows", use)
		}
	}
	if truthy(args.IsCaCertificate) {
		if args.Subject == nil || (template.Subject.String() == "" && len(template.Subject.ExtraNames) == 0) {
			return nil, fmt.Errorf("subject: a CA certificate needs at least one distinguished name")
		}
		template.IsCA = true
	}
	if args.MaxPathLength != nil && *args.MaxPathLength >= 0 {
		template.MaxPathLen = *args.MaxPathLength
		template.MaxPathLenZero = *args.MaxPathLength == 0
	}
	template.DNSNames = args.DNSNames
	for _, address := range args.IPAddresses {
		ip := net.ParseIP(address)
		if ip == nil {
			return nil, fmt.Errorf("ipAddresses: %q is not an IP address", address)
		}
		template.IPAddresses = append(template.IPAddresses, ip)
	}
	for _, raw := range args.URIs {
		parsed, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("uris: %q: %w", raw, err)
		}
		template.URIs = append(template.URIs, parsed)
	}
	return template, nil
}

func deref(value *string) string {
	if value == nil {
		return ""
	}
	return *value
}

func list(value *string) []string {
	if value == nil {
		return nil
	}
	return []string{*value}
}

// parsePrivateKey reads a PKCS #1, SEC 1 or PKCS #8 PEM key and names its algorithm.
func parsePrivateKey(text string) (crypto.Signer, string, error) {
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, "", fmt.Errorf("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, "", fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, "", err
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return k, "RSA", nil
	case *ecdsa.PrivateKey:
		return k, "ECDSA", nil
	case ed25519.PrivateKey:
		return k, "ED25519", nil
	default:
		return nil, "", fmt.Errorf("unsupported key type %T", key)
	}
}

// subjectKeyID is the SHA-1 of the public key's bits, as upstream computes it.
func subjectKeyID(public crypto.PublicKey) ([]byte, error) {
	var raw []byte
	var err error
	switch k := public.(type) {
	case *rsa.PublicKey:
		raw, err = asn1.Marshal(*k)
	case *ecdsa.PublicKey:
		raw, err = k.Bytes()
	case ed25519.PublicKey:
		raw, err = asn1.Marshal(k)
	default:
		err = fmt.Errorf("unsupported public key type %T", public)
	}
	if err != nil {
		return nil, err
	}
	sum := sha1.Sum(raw) //nolint:gosec // see the import
	return sum[:], nil
}
