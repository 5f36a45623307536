package random

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"

	"github.com/pulumi/pulumi-go-provider/infer"
	"golang.org/x/crypto/bcrypt"
)

// The bridged provider's ids: a uuid is its own id; secrets get the placeholder "none".
const secretID = "none"

// RandomUuid is `random:index/randomUuid:RandomUuid`.
type RandomUuid struct{} //nolint:revive // the upstream resource name

// RandomUuidArgs are its inputs.
type RandomUuidArgs struct { //nolint:revive // the upstream type name
	Keepers map[string]any `pulumi:"keepers,optional"`
}

// RandomUuidState is its state.
type RandomUuidState struct { //nolint:revive // the upstream type name
	RandomUuidArgs
	Result string `pulumi:"result"`
}

// Annotate sets the token.
func (r *RandomUuid) Annotate(a infer.Annotator) {
	a.SetToken("index/randomUuid", "RandomUuid")
	a.Describe(&r, "A random version 4 UUID (Space Harbor stand-in for pulumi-random 4.21.4).")
}

// Annotate describes the inputs.
func (r *RandomUuidArgs) Annotate(a infer.Annotator) {
	a.Describe(&r.Keepers, "Values whose change replaces the resource.")
}

// Create draws the UUID.
func (*RandomUuid) Create(_ context.Context, req infer.CreateRequest[RandomUuidArgs]) (
	infer.CreateResponse[RandomUuidState], error,
) {
	state := RandomUuidState{RandomUuidArgs: req.Inputs}
	if req.DryRun {
		return infer.CreateResponse[RandomUuidState]{Output: state}, nil
	}
	uuid, err := newUUID()
	if err != nil {
		return infer.CreateResponse[RandomUuidState]{}, err
	}
	state.Result = uuid
	return infer.CreateResponse[RandomUuidState]{ID: uuid, Output: state}, nil
}

func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// RandomPassword is `random:index/randomPassword:RandomPassword`.
type RandomPassword struct{}

// RandomPasswordArgs are its inputs, with the bridged provider's defaults.
type RandomPasswordArgs struct {
	Keepers         map[string]any `pulumi:"keepers,optional"`
	Length          int            `pulumi:"length"`
	Special         *bool          `pulumi:"special,optional"`
	Upper           *bool          `pulumi:"upper,optional"`
	Lower           *bool          `pulumi:"lower,optional"`
	Numeric         *bool          `pulumi:"numeric,optional"`
	Number          *bool          `pulumi:"number,optional"`
	MinSpecial      *int           `pulumi:"minSpecial,optional"`
	MinUpper        *int           `pulumi:"minUpper,optional"`
	MinLower        *int           `pulumi:"minLower,optional"`
	MinNumeric      *int           `pulumi:"minNumeric,optional"`
	OverrideSpecial *string        `pulumi:"overrideSpecial,optional"`
}

// RandomPasswordState is its state; the password and its hash are secret.
type RandomPasswordState struct {
	RandomPasswordArgs
	Result     string `pulumi:"result"     provider:"secret"`
	BcryptHash string `pulumi:"bcryptHash" provider:"secret"`
}

// Annotate sets the token.
func (r *RandomPassword) Annotate(a infer.Annotator) {
	a.SetToken("index/randomPassword", "RandomPassword")
	a.Describe(&r, "A random password (Space Harbor stand-in for pulumi-random 4.21.4).")
}

// Annotate sets the defaults the bridged provider fills in.
func (r *RandomPasswordArgs) Annotate(a infer.Annotator) {
	a.Describe(&r.Keepers, "Values whose change replaces the resource.")
	a.Describe(&r.Length, "The length of the password, at least 1 and at least the sum of the minimums.")
	for _, flag := range []**bool{&r.Special, &r.Upper, &r.Lower, &r.Numeric, &r.Number} {
		a.SetDefault(flag, true)
	}
	for _, minimum := range []**int{&r.MinSpecial, &r.MinUpper, &r.MinLower, &r.MinNumeric} {
		a.SetDefault(minimum, 0)
	}
	a.Describe(&r.Number, "Deprecated alias of numeric: digits are drawn only when both are true.")
	a.Describe(&r.OverrideSpecial, "The special characters to draw from instead of the default set.")
}

// The character classes of terraform-provider-random.
const (
	upperChars   = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	lowerChars   = "abcdefghijklmnopqrstuvwxyz"
	numericChars = "0123456789"
	specialChars = "!@#$%&*()-_=+[]{}<>:?"
)

// WireDependencies marks the password and its hash secret in every state, as the bridged
// provider does for its Sensitive attributes.
func (*RandomPassword) WireDependencies(f infer.FieldSelector, _ *RandomPasswordArgs, state *RandomPasswordState) {
	f.OutputField(&state.Result).AlwaysSecret()
	f.OutputField(&state.BcryptHash).AlwaysSecret()
}

// Create draws the password and its bcrypt hash.
func (*RandomPassword) Create(_ context.Context, req infer.CreateRequest[RandomPasswordArgs]) (
	infer.CreateResponse[RandomPasswordState], error,
) {
	state := RandomPasswordState{RandomPasswordArgs: req.Inputs}
	if req.DryRun {
		return infer.CreateResponse[RandomPasswordState]{Output: state}, nil
	}
	password, err := drawPassword(req.Inputs)
	if err != nil {
		return infer.CreateResponse[RandomPasswordState]{}, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return infer.CreateResponse[RandomPasswordState]{}, err
	}
	state.Result, state.BcryptHash = password, string(hash)
	return infer.CreateResponse[RandomPasswordState]{ID: secretID, Output: state}, nil
}

func flag(value *bool) bool { return value == nil || *value }

func count(value *int) int {
	if value == nil {
		return 0
	}
	return *value
}

func drawPassword(args RandomPasswordArgs) (string, error) {
	special := specialChars
	if args.OverrideSpecial != nil && *args.OverrideSpecial != "" {
		special = *args.OverrideSpecial
	}
	classes := []struct {
		chars   string
		enabled bool
		minimum int
	}{
		{upperChars, flag(args.Upper), count(args.MinUpper)},
		{lowerChars, flag(args.Lower), count(args.MinLower)},
		{numericChars, flag(args.Numeric) && flag(args.Number), count(args.MinNumeric)},
		{special, flag(args.Special), count(args.MinSpecial)},
	}
	if args.Length < 1 {
		return "", fmt.Errorf("length (%d) must be >= 1", args.Length)
	}
	total, pool := 0, ""
	for _, class := range classes {
		total += class.minimum
		if class.enabled {
			pool += class.chars
		}
	}
	if args.Length < total {
		return "", fmt.Errorf("length (%d) must be >= minUpper + minLower + minNumeric + minSpecial (%d)",
			args.Length, total)
	}
	if pool == "" {
		return "", fmt.Errorf("at least one of upper, lower, numeric and special must be true")
	}
	out := make([]byte, 0, args.Length)
	for _, class := range classes {
		drawn, err := draw(class.chars, class.minimum)
		if err != nil {
			return "", err
		}
		out = append(out, drawn...)
	}
	rest, err := draw(pool, args.Length-len(out))
	if err != nil {
		return "", err
	}
	out = append(out, rest...)
	// Shuffle, so that the minimums are not at the front (Fisher-Yates on crypto/rand).
	for i := len(out) - 1; i > 0; i-- {
		j, err := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		if err != nil {
			return "", err
		}
		out[i], out[j.Int64()] = out[j.Int64()], out[i]
	}
	return string(out), nil
}

func draw(chars string, n int) ([]byte, error) {
	out := make([]byte, n)
	size := big.NewInt(int64(len(chars)))
	for i := range out {
		index, err := rand.Int(rand.Reader, size)
		if err != nil {
			return nil, err
		}
		out[i] = chars[index.Int64()]
	}
	return out, nil
}

// RandomBytes is `random:index/randomBytes:RandomBytes`.
type RandomBytes struct{}

// RandomBytesArgs are its inputs.
type RandomBytesArgs struct {
	Keepers map[string]any `pulumi:"keepers,optional"`
	Length  int            `pulumi:"length"`
}

// RandomBytesState is its state; both encodings are secret.
type RandomBytesState struct {
	RandomBytesArgs
	Base64 string `pulumi:"base64" provider:"secret"`
	Hex    string `pulumi:"hex"    provider:"secret"`
}

// Annotate sets the token.
func (r *RandomBytes) Annotate(a infer.Annotator) {
	a.SetToken("index/randomBytes", "RandomBytes")
	a.Describe(&r, "Random bytes (Space Harbor stand-in for pulumi-random 4.21.4).")
}

// Annotate describes the inputs.
func (r *RandomBytesArgs) Annotate(a infer.Annotator) {
	a.Describe(&r.Keepers, "Values whose change replaces the resource.")
	a.Describe(&r.Length, "How many bytes, at least 1.")
}

// WireDependencies marks both encodings secret in every state (Sensitive upstream).
func (*RandomBytes) WireDependencies(f infer.FieldSelector, _ *RandomBytesArgs, state *RandomBytesState) {
	f.OutputField(&state.Base64).AlwaysSecret()
	f.OutputField(&state.Hex).AlwaysSecret()
}

// Create draws the bytes.
func (*RandomBytes) Create(_ context.Context, req infer.CreateRequest[RandomBytesArgs]) (
	infer.CreateResponse[RandomBytesState], error,
) {
	state := RandomBytesState{RandomBytesArgs: req.Inputs}
	if req.DryRun {
		return infer.CreateResponse[RandomBytesState]{Output: state}, nil
	}
	if req.Inputs.Length < 1 {
		return infer.CreateResponse[RandomBytesState]{}, fmt.Errorf("length (%d) must be >= 1", req.Inputs.Length)
	}
	data := make([]byte, req.Inputs.Length)
	if _, err := rand.Read(data); err != nil {
		return infer.CreateResponse[RandomBytesState]{}, err
	}
	state.Base64, state.Hex = base64.StdEncoding.EncodeToString(data), hex.EncodeToString(data)
	return infer.CreateResponse[RandomBytesState]{ID: secretID, Output: state}, nil
}
