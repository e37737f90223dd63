// Package oidctest is a test OIDC issuer: it signs ID tokens with a fresh
// RSA key and publishes the key set, for tests of SSO sign-in.
package oidctest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Issuer signs tokens.
type Issuer struct {
	URL      string
	Audience string
	KeyID    string
	key      *rsa.PrivateKey
}

// New returns an issuer with a 2048-bit RSA key.
func New(tb testing.TB, url, audience string) *Issuer {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return &Issuer{URL: url, Audience: audience, KeyID: "test-key", key: k}
}

// JWKS is the issuer's public key set.
func (i *Issuer) JWKS() []byte {
	b, _ := json.Marshal(map[string]any{"keys": []any{map[string]string{
		"kty": "RSA", "kid": i.KeyID, "use": "sig", "alg": "RS256",
		"n": base64.RawURLEncoding.EncodeToString(i.key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(i.key.E)).Bytes()),
	}}})
	return b
}

// WriteJWKS saves the key set to a file in a temp dir and returns its path.
func (i *Issuer) WriteJWKS(tb testing.TB) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "jwks.json")
	if err := os.WriteFile(p, i.JWKS(), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// Token signs an ID token for subject, valid for an hour from now; extra
// claims override the defaults.
func (i *Issuer) Token(subject string, now time.Time, extra map[string]any) string {
	c := map[string]any{"iss": i.URL, "aud": i.Audience, "sub": subject, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return i.Sign(map[string]any{"alg": "RS256", "typ": "JWT", "kid": i.KeyID}, c)
}

// Sign signs any header and claims with RS256 (tests use it for bad tokens).
func (i *Issuer) Sign(header, claims map[string]any) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	signed := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	d := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, i.key, crypto.SHA256, d[:])
	if err != nil {
		panic(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}
