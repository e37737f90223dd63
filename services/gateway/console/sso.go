package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// SSO lets people sign in to the console with the configured OIDC issuer
// (authorization code with PKCE). The browser sends them to the issuer and
// proves the code with its verifier; the gateway looks up the issuer's
// endpoints and exchanges the code, so the console talks only to its own
// origin and its CSP allows no other.
type SSO struct {
	// Issuer is the OIDC issuer URL; empty turns SSO off.
	Issuer string
	// ClientID is the console's client at the issuer: the audience of the
	// ID tokens the keystore accepts.
	ClientID string
	// HTTP reaches the issuer; nil means a client with a 10 s timeout.
	HTTP *http.Client

	mu        sync.Mutex
	endpoints *endpoints
}

type endpoints struct {
	Authorization string `json:"authorization_endpoint"`
	Token         string `json:"token_endpoint"`
}

// config is what the console reads at start: whether SSO is on, and where
// to send people to sign in.
func (s *SSO) config(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{"sso": false}
	if s != nil && s.Issuer != "" {
		ep, err := s.discover(r.Context())
		if err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]any{"sso": false, "error": "single sign-on is configured but its issuer did not answer; try again later"})
			return
		}
		out = map[string]any{"sso": true, "authorizationEndpoint": ep.Authorization, "clientId": s.ClientID}
	}
	writeJSON(w, http.StatusOK, out)
}

// discover reads the issuer's endpoints once (until it succeeds).
func (s *SSO) discover(ctx context.Context) (*endpoints, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endpoints != nil {
		return s.endpoints, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(s.Issuer, "/")+"/.well-known/openid-configuration", nil)
	if err != nil {
		return nil, err
	}
	var ep endpoints
	if err := s.do(req, &ep); err != nil {
		return nil, fmt.Errorf("oidc discovery: %w", err)
	}
	if ep.Authorization == "" || ep.Token == "" {
		return nil, errors.New("oidc discovery: no authorization or token endpoint")
	}
	s.endpoints = &ep
	return &ep, nil
}

// token exchanges an authorization code for an ID token. Only the ID token
// goes back to the browser: it is the credential the keystore verifies.
func (s *SSO) token(w http.ResponseWriter, r *http.Request) {
	if s == nil || s.Issuer == "" {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "single sign-on is not configured"})
		return
	}
	var in struct{ Code, CodeVerifier, RedirectURI string }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10)).Decode(&in); err != nil || in.Code == "" || in.CodeVerifier == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "send code, codeVerifier and redirectUri"})
		return
	}
	ep, err := s.discover(r.Context())
	if err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": "the single sign-on issuer did not answer"})
		return
	}
	form := url.Values{"grant_type": {"authorization_code"}, "code": {in.Code}, "code_verifier": {in.CodeVerifier},
		"redirect_uri": {in.RedirectURI}, "client_id": {s.ClientID}}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, ep.Token, strings.NewReader(form.Encode()))
	if err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": "bad token endpoint"})
		return
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	var out struct {
		IDToken string `json:"id_token"`
	}
	if err := s.do(req, &out); err != nil || out.IDToken == "" {
		// The issuer's answer may quote the code: it is not repeated here.
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the single sign-on issuer refused the sign-in; try again"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"idToken": out.IDToken})
}

func (s *SSO) do(req *http.Request, v any) error {
	c := s.HTTP
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", req.URL.Path, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
