// Package oidc verifies OIDC ID tokens (JWTs) from one configured issuer
// against its JSON Web Key Set, read from a file or a URL. Consoles whose
// users sign in with single sign-on send these; the subject is the member
// the call acts for.
//
// Only asymmetric algorithms are accepted (RS256, RS384, RS512, ES256,
// ES384): "none" and HMAC algorithms are refused, so a public key can never
// be used as a shared secret.
package oidc

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/keygate/keygate/internal/clock"
)

// ErrInvalidToken means the token is malformed, badly signed, expired, or
// for another issuer or audience. The message never contains the token.
var ErrInvalidToken = errors.New("invalid ID token")

// Config names the trusted issuer.
type Config struct {
	Issuer string
	// Audience the token must be for (the console's client id).
	Audience string
	// JWKSFile or JWKSURL: where the issuer's public keys are.
	JWKSFile string
	JWKSURL  string
	// Refresh is how often the key set is re-read; default 10 minutes.
	Refresh time.Duration
	// Leeway tolerated on exp/nbf/iat; default 1 minute.
	Leeway time.Duration
	Clock  clock.Clock
	HTTP   *http.Client
}

// Verifier checks ID tokens.
type Verifier struct {
	cfg    Config
	mu     sync.Mutex
	keys   map[string]crypto.PublicKey
	loaded time.Time
}

// New returns a verifier; the key set is loaded on first use.
func New(c Config) (*Verifier, error) {
	if c.Issuer == "" || c.Audience == "" {
		return nil, errors.New("oidc: issuer and audience are required")
	}
	if (c.JWKSFile == "") == (c.JWKSURL == "") {
		return nil, errors.New("oidc: set exactly one of the JWKS file and the JWKS URL")
	}
	if c.Refresh == 0 {
		c.Refresh = 10 * time.Minute
	}
	if c.Leeway == 0 {
		c.Leeway = time.Minute
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.HTTP == nil {
		c.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	return &Verifier{cfg: c}, nil
}

// LooksLikeJWT tells a JWT from keygate's own tokens without verifying it.
func LooksLikeJWT(s string) bool { return strings.Count(s, ".") == 2 && strings.HasPrefix(s, "ey") }

type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

type claims struct {
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Aud json.RawMessage `json:"aud"`
	Exp *float64        `json:"exp"`
	Nbf *float64        `json:"nbf"`
	Iat *float64        `json:"iat"`
}

// Verify checks signature, issuer, audience and times, and returns the
// subject.
func (v *Verifier) Verify(ctx context.Context, token string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", ErrInvalidToken
	}
	var h header
	var c claims
	if err := decodePart(parts[0], &h); err != nil {
		return "", ErrInvalidToken
	}
	if err := decodePart(parts[1], &c); err != nil {
		return "", ErrInvalidToken
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", ErrInvalidToken
	}
	key, err := v.key(ctx, h.Kid)
	if err != nil {
		return "", err
	}
	if err := verifySignature(h.Alg, key, parts[0]+"."+parts[1], sig); err != nil {
		return "", ErrInvalidToken
	}
	now := v.cfg.Clock.Now()
	switch {
	case c.Iss != v.cfg.Issuer, c.Sub == "", !hasAudience(c.Aud, v.cfg.Audience):
		return "", ErrInvalidToken
	case c.Exp == nil || now.After(unix(*c.Exp).Add(v.cfg.Leeway)):
		return "", fmt.Errorf("%w: expired", ErrInvalidToken)
	case c.Nbf != nil && now.Add(v.cfg.Leeway).Before(unix(*c.Nbf)):
		return "", fmt.Errorf("%w: not yet valid", ErrInvalidToken)
	}
	return c.Sub, nil
}

func unix(f float64) time.Time { return time.Unix(int64(f), 0) }

func hasAudience(raw json.RawMessage, want string) bool {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one == want
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		for _, a := range many {
			if a == want {
				return true
			}
		}
	}
	return false
}

func decodePart(s string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func verifySignature(alg string, key crypto.PublicKey, signed string, sig []byte) error {
	var h crypto.Hash
	switch alg {
	case "RS256", "ES256":
		h = crypto.SHA256
	case "RS384", "ES384":
		h = crypto.SHA384
	case "RS512":
		h = crypto.SHA512
	default:
		return errors.New("unsupported alg")
	}
	hh := h.New()
	hh.Write([]byte(signed))
	digest := hh.Sum(nil)
	switch k := key.(type) {
	case *rsa.PublicKey:
		if !strings.HasPrefix(alg, "RS") {
			return errors.New("alg does not match key")
		}
		return rsa.VerifyPKCS1v15(k, h, digest, sig)
	case *ecdsa.PublicKey:
		if !strings.HasPrefix(alg, "ES") || len(sig)%2 != 0 {
			return errors.New("alg does not match key")
		}
		r := new(big.Int).SetBytes(sig[:len(sig)/2])
		s := new(big.Int).SetBytes(sig[len(sig)/2:])
		if !ecdsa.Verify(k, digest, r, s) {
			return errors.New("bad signature")
		}
		return nil
	}
	return errors.New("unsupported key")
}

// key finds the key by id, re-reading the key set when it is stale or the
// id is unknown (the issuer rotated its keys), at most once a minute.
func (v *Verifier) key(ctx context.Context, kid string) (crypto.PublicKey, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.cfg.Clock.Now()
	k, ok := v.keys[kid]
	stale := now.Sub(v.loaded) > v.cfg.Refresh
	if ok && !stale {
		return k, nil
	}
	if v.keys == nil || stale || now.Sub(v.loaded) > time.Minute {
		keys, err := v.load(ctx)
		if err != nil {
			if ok {
				return k, nil // keep serving with the old set
			}
			return nil, fmt.Errorf("oidc: load key set: %w", err)
		}
		v.keys, v.loaded = keys, now
		k, ok = keys[kid]
	}
	if !ok {
		return nil, ErrInvalidToken
	}
	return k, nil
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func (v *Verifier) load(ctx context.Context) (map[string]crypto.PublicKey, error) {
	var raw []byte
	var err error
	if v.cfg.JWKSFile != "" {
		raw, err = os.ReadFile(v.cfg.JWKSFile)
	} else {
		raw, err = v.fetch(ctx)
	}
	if err != nil {
		return nil, err
	}
	return ParseJWKS(raw)
}

func (v *Verifier) fetch(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.JWKSURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := v.cfg.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS answered %s", resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// ParseJWKS reads the RSA and EC signing keys of a JSON Web Key Set.
func ParseJWKS(raw []byte) (map[string]crypto.PublicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	out := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch k.Kty {
		case "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(k.N)
			e, err2 := base64.RawURLEncoding.DecodeString(k.E)
			if err1 != nil || err2 != nil || len(e) > 4 {
				return nil, fmt.Errorf("JWKS: bad RSA key %q", k.Kid)
			}
			out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		case "EC":
			var curve elliptic.Curve
			switch k.Crv {
			case "P-256":
				curve = elliptic.P256()
			case "P-384":
				curve = elliptic.P384()
			default:
				continue
			}
			x, err1 := base64.RawURLEncoding.DecodeString(k.X)
			y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("JWKS: bad EC key %q", k.Kid)
			}
			out[k.Kid] = &ecdsa.PublicKey{Curve: curve, X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
		}
	}
	return out, nil
}
