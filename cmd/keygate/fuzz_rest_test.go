package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzREST sends requests of any path, query and body to the REST gateway
// of one in-process keygate (every service up, so nothing may be
// unavailable): no answer may be a 5xx, and every error must be the
// gateway's JSON error shape with the HTTP status in it. "{key}" in a
// target stands for a key of the fixture's workspace "acme". Seeds, and
// what earlier runs found, are in testdata/fuzz/FuzzREST.
func FuzzREST(f *testing.F) {
	app := MustRunApp(f, "", nil)
	api, root := "http://"+app.HTTPAddr, app.Config.RootToken
	setup := func(method, path, body string) map[string]any {
		code, b := rawREST(f, method, api+path, root, body)
		if code != http.StatusOK {
			f.Fatalf("setup %s %s: %d %v", method, path, code, b)
		}
		return b
	}
	setup("POST", "/v1/workspaces", `{"id":"acme","name":"Acme"}`)
	setup("PUT", "/v1/workspaces/acme/members/alice", `{"role":"ROLE_MEMBER"}`)
	created := setup("POST", "/v1/workspaces/acme/keys", `{"name":"web","budget":{"amountUsd":"0.01"}}`)
	keyID := created["key"].(map[string]any)["id"].(string)

	client := &http.Client{
		Timeout:       time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	methods := []string{"GET", "POST", "PATCH", "PUT", "DELETE"}
	f.Fuzz(func(t *testing.T, method uint8, target string, body []byte) {
		target = strings.ReplaceAll(target, "{key}", keyID)
		if !strings.HasPrefix(target, "/v1/") {
			target = "/v1/" + strings.TrimLeft(target, "/")
		}
		if strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			// The client would send a broken request line (a raw space or
			// control character in the query), which net/http refuses
			// with a plain-text 400 before any handler runs.
			return
		}
		req, err := http.NewRequest(methods[int(method)%len(methods)], api+target, bytes.NewReader(body))
		if err != nil {
			return // not a URL an HTTP client can send
		}
		req.Header.Set("Authorization", "Bearer "+root)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %q: %v", req.Method, target, err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %q: read answer: %v", req.Method, target, err)
		}
		if resp.StatusCode >= 500 {
			t.Fatalf("%s %q %q: %d %s", req.Method, target, body, resp.StatusCode, raw)
		}
		if resp.StatusCode < 400 {
			return
		}
		var e struct {
			Error *struct {
				Code    int     `json:"code"`
				Status  string  `json:"status"`
				Message *string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(raw, &e); err != nil || e.Error == nil {
			t.Fatalf("%s %q %q: %d answer is not the JSON error shape (%v): %q", req.Method, target, body, resp.StatusCode, err, raw)
		}
		if e.Error.Code != resp.StatusCode || e.Error.Status == "" || e.Error.Message == nil {
			t.Fatalf("%s %q %q: %d error body disagrees or is incomplete: %s", req.Method, target, body, resp.StatusCode, raw)
		}
	})
}
