package oidc_test

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/oidc"
	"github.com/keygate/keygate/internal/oidc/oidctest"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	iss := oidctest.New(t, "https://sso.example", "console")
	clk := clock.NewFake(now)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(iss.JWKS()) }))
	t.Cleanup(srv.Close)
	fromFile, err := oidc.New(oidc.Config{Issuer: iss.URL, Audience: "console", JWKSFile: iss.WriteJWKS(t), Clock: clk})
	require.NoError(t, err)
	fromURL, err := oidc.New(oidc.Config{Issuer: iss.URL, Audience: "console", JWKSURL: srv.URL, Clock: clk})
	require.NoError(t, err)

	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"test-key"}`))
	good := iss.Token("alice", now, nil)
	parts := strings.Split(good, ".")
	for name, tc := range map[string]struct {
		token string
		ok    bool
	}{
		"valid":            {token: good, ok: true},
		"audience list":    {token: iss.Token("alice", now, map[string]any{"aud": []string{"x", "console"}}), ok: true},
		"expired":          {token: iss.Token("alice", now.Add(-3*time.Hour), nil)},
		"not yet valid":    {token: iss.Token("alice", now, map[string]any{"nbf": now.Add(time.Hour).Unix()})},
		"no exp":           {token: iss.Token("alice", now, map[string]any{"exp": nil})},
		"other issuer":     {token: iss.Token("alice", now, map[string]any{"iss": "https://evil.example"})},
		"other audience":   {token: iss.Token("alice", now, map[string]any{"aud": "other"})},
		"no subject":       {token: iss.Token("", now, nil)},
		"unknown kid":      {token: iss.Sign(map[string]any{"alg": "RS256", "kid": "nope"}, map[string]any{"iss": iss.URL, "aud": "console", "sub": "a", "exp": now.Add(time.Hour).Unix()})},
		"hmac alg refused": {token: iss.Sign(map[string]any{"alg": "HS256", "kid": "test-key"}, map[string]any{"iss": iss.URL, "aud": "console", "sub": "a", "exp": now.Add(time.Hour).Unix()})},
		"alg none refused": {token: noneHeader + "." + parts[1] + "."},
		"tampered claims":  {token: parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"https://sso.example","aud":"console","sub":"root","exp":9999999999}`)) + "." + parts[2]},
		"garbage":          {token: "ey.ey.ey"},
		"two parts":        {token: "eyJ.eyJ"},
	} {
		t.Run(name, func(t *testing.T) {
			for _, v := range []*oidc.Verifier{fromFile, fromURL} {
				sub, err := v.Verify(t.Context(), tc.token)
				if tc.ok {
					require.NoError(t, err)
					require.Equal(t, "alice", sub)
				} else {
					require.ErrorIs(t, err, oidc.ErrInvalidToken)
					require.NotContains(t, err.Error(), tc.token)
				}
			}
		})
	}
	require.True(t, oidc.LooksLikeJWT(good))
	require.False(t, oidc.LooksLikeJWT("kg_abc_def"))
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	_, err := oidc.New(oidc.Config{Issuer: "i"})
	require.Error(t, err)
	_, err = oidc.New(oidc.Config{Issuer: "i", Audience: "a"})
	require.Error(t, err)
	_, err = oidc.New(oidc.Config{Issuer: "i", Audience: "a", JWKSFile: "f", JWKSURL: "u"})
	require.Error(t, err)
}
