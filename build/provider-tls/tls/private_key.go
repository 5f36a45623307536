package tls

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // the upstream id is a SHA-1 of the public key, not a security check
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"

	"github.com/pulumi/pulumi-go-provider/infer"
	"golang.org/x/crypto/ssh"
)

// PrivateKey is `tls:index/privateKey:PrivateKey`.
type PrivateKey struct{}

// PrivateKeyArgs are its inputs, with the bridged provider's defaults.
type PrivateKeyArgs struct {
	Algorithm  string  `pulumi:"algorithm"`
	RsaBits    *int    `pulumi:"rsaBits,optional"`
	EcdsaCurve *string `pulumi:"ecdsaCurve,optional"`
}

// PrivateKeyState is its state: the private encodings are secret.
type PrivateKeyState struct {
	PrivateKeyArgs
	PrivateKeyPem              string `pulumi:"privateKeyPem"      provider:"secret"`
	PrivateKeyPemPkcs8         string `pulumi:"privateKeyPemPkcs8" provider:"secret"`
	PrivateKeyOpenssh          string `pulumi:"privateKeyOpenssh"  provider:"secret"`
	PublicKeyPem               string `pulumi:"publicKeyPem"`
	PublicKeyOpenssh           string `pulumi:"publicKeyOpenssh"`
	PublicKeyFingerprintMd5    string `pulumi:"publicKeyFingerprintMd5"`
	PublicKeyFingerprintSha256 string `pulumi:"publicKeyFingerprintSha256"`
}

// Annotate sets the token.
func (k *PrivateKey) Annotate(a infer.Annotator) {
	a.SetToken("index/privateKey", "PrivateKey")
	a.Describe(&k, "A private key held in state (Space Harbor stand-in for pulumi-tls 5.6.2).")
}

// Annotate sets the defaults the bridged provider fills in.
func (k *PrivateKeyArgs) Annotate(a infer.Annotator) {
	a.Describe(&k.Algorithm, "RSA, ECDSA or ED25519.")
	a.Describe(&k.RsaBits, "RSA key size; 2048 by default.")
	a.SetDefault(&k.RsaBits, 2048)
	a.Describe(&k.EcdsaCurve, "P224, P256, P384 or P521; P224 by default.")
	a.SetDefault(&k.EcdsaCurve, "P224")
}

// WireDependencies marks the private encodings secret in every state (Sensitive upstream).
func (*PrivateKey) WireDependencies(f infer.FieldSelector, _ *PrivateKeyArgs, state *PrivateKeyState) {
	f.OutputField(&state.PrivateKeyPem).AlwaysSecret()
	f.OutputField(&state.PrivateKeyPemPkcs8).AlwaysSecret()
	f.OutputField(&state.PrivateKeyOpenssh).AlwaysSecret()
}

// Create generates the key.
func (*PrivateKey) Create(_ context.Context, req infer.CreateRequest[PrivateKeyArgs]) (
	infer.CreateResponse[PrivateKeyState], error,
) {
	state := PrivateKeyState{PrivateKeyArgs: req.Inputs}
	if _, err := curve(req.Inputs); err != nil {
		return infer.CreateResponse[PrivateKeyState]{}, err
	}
	if req.DryRun {
		return infer.CreateResponse[PrivateKeyState]{Output: state}, nil
	}
	key, err := generateKey(req.Inputs)
	if err != nil {
		return infer.CreateResponse[PrivateKeyState]{}, err
	}
	id, err := encodeKey(key, &state)
	if err != nil {
		return infer.CreateResponse[PrivateKeyState]{}, err
	}
	return infer.CreateResponse[PrivateKeyState]{ID: id, Output: state}, nil
}

// curve checks the algorithm, and the curve when it is ECDSA (nil otherwise), so that preview
// refuses bad arguments without making a key.
func curve(args PrivateKeyArgs) (elliptic.Curve, error) {
	switch args.Algorithm {
	case "RSA", "ED25519":
		return nil, nil
	case "ECDSA":
		name := "P224"
		if args.EcdsaCurve != nil {
			name = *args.EcdsaCurve
		}
		curves := map[string]elliptic.Curve{
			"P224": elliptic.P224(), "P256": elliptic.P256(), "P384": elliptic.P384(), "P521": elliptic.P521(),
		}
		if c, ok := curves[name]; ok {
			return c, nil
		}
		return nil, fmt.Errorf("ecdsaCurve: %q is not one of P224, P256, P384, P521", name)
	default:
		return nil, fmt.Errorf("algorithm: %q is not one of RSA, ECDSA, ED25519", args.Algorithm)
	}
}

func generateKey(args PrivateKeyArgs) (crypto.Signer, error) {
	c, err := curve(args)
	if err != nil {
		return nil, err
	}
	switch args.Algorithm {
	case "RSA":
		bits := 2048
		if args.RsaBits != nil {
			bits = *args.RsaBits
		}
		return rsa.GenerateKey(rand.Reader, bits)
	case "ECDSA":
		return ecdsa.GenerateKey(c, rand.Reader)
	default:
		_, key, err := ed25519.GenerateKey(rand.Reader)
		return key, err
	}
}

// encodeKey fills every encoding upstream exposes, and returns upstream's id: the hex SHA-1
// of the public key's DER.
func encodeKey(key crypto.Signer, state *PrivateKeyState) (string, error) {
	var block *pem.Block
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return "", err
		}
		block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	default:
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}
	}
	state.PrivateKeyPem = string(pem.EncodeToMemory(block))
	state.PrivateKeyPemPkcs8 = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))

	publicDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", err
	}
	state.PublicKeyPem = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: publicDER}))
	// OpenSSH has no P-224: upstream leaves the OpenSSH fields empty then.
	if sshPublic, err := ssh.NewPublicKey(key.Public()); err == nil {
		state.PublicKeyOpenssh = string(ssh.MarshalAuthorizedKey(sshPublic))
		state.PublicKeyFingerprintMd5 = ssh.FingerprintLegacyMD5(sshPublic)
		state.PublicKeyFingerprintSha256 = ssh.FingerprintSHA256(sshPublic)
		opensshBlock, err := ssh.MarshalPrivateKey(key, "")
		if err != nil {
			return "", err
		}
		state.PrivateKeyOpenssh = string(pem.EncodeToMemory(opensshBlock))
	}
	sum := sha1.Sum(publicDER) //nolint:gosec // see the import
	return hex.EncodeToString(sum[:]), nil
}
