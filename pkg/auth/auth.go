// Package auth carries credentials in gRPC metadata: every management call
// sends `authorization: Bearer <token>`, where the token is the root token,
// an admin key, or an OIDC ID token. The services resolve it; this package
// only moves it, and never logs it.
package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// Header is the metadata key of the credential.
const Header = "authorization"

// ErrUnauthenticated means a call carried no credential, or a wrong one.
// Services wrap it with what they expect.
var ErrUnauthenticated = errors.New("missing or invalid credential")

// BearerFromIncoming returns the bearer token of an incoming call, or "".
func BearerFromIncoming(ctx context.Context) string {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ""
	}
	return ParseBearer(first(md.Get(Header)))
}

// ParseBearer strips the "Bearer " scheme (case-insensitive) from a header
// value; a value without it is returned trimmed.
func ParseBearer(v string) string {
	v = strings.TrimSpace(v)
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return v
}

// WithBearer returns a context whose outgoing calls carry token.
func WithBearer(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, Header, "Bearer "+token)
}

// BearerMD is the metadata of a call carrying token ("": none), for an
// in-process call that hands a server what its gRPC peer would have sent.
func BearerMD(token string) metadata.MD {
	md := metadata.MD{}
	if token != "" {
		md.Set(Header, "Bearer "+token)
	}
	return md
}

// ForwardIncoming copies the caller's credential onto outgoing calls, so
// that a service asking another on a caller's behalf is held to the
// caller's rights.
func ForwardIncoming(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx
	}
	if v := first(md.Get(Header)); v != "" {
		return metadata.AppendToOutgoingContext(ctx, Header, v)
	}
	return ctx
}

// Token is per-RPC credentials that send a fixed bearer token, for clients
// and for services calling each other with the service token.
type Token struct {
	Value string
	// Secure requires a TLS transport; false allows plaintext loopback.
	Secure bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t Token) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{Header: "Bearer " + t.Value}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (t Token) RequireTransportSecurity() bool { return t.Secure }

var _ credentials.PerRPCCredentials = Token{}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// Tokens are the accepted values of a shared secret: the current one and,
// during a rotation, previous ones still honoured until every process has
// the new value.
type Tokens [][]byte

// NewTokens accepts current and every non-empty previous value.
func NewTokens(current string, previous ...string) Tokens {
	t := Tokens{[]byte(current)}
	for _, p := range previous {
		if p != "" {
			t = append(t, []byte(p))
		}
	}
	return t
}

// Match compares got with every accepted value in constant time, so the
// answer's timing tells nothing about which value, or how much, matched.
func (t Tokens) Match(got string) bool {
	if got == "" {
		return false
	}
	ok := 0
	for _, want := range t {
		if len(want) > 0 {
			ok |= subtle.ConstantTimeCompare([]byte(got), want)
		}
	}
	return ok == 1
}
