package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLevelsAndImportREST drives member limits (PATCH members), workspace
// limits and the import of legacy keys through the REST gateway.
func TestLevelsAndImportREST(t *testing.T) {
	f := newRESTFixture(t)
	member := f.api + "/v1/workspaces/acme/members/alice"

	t.Run("PATCH a member's limits", func(t *testing.T) {
		code, b := rawREST(t, "PATCH", member, f.root, `{"limits":{"globalLimits":{"rpm":30,"tpd":1000}}}`)
		require.Equal(t, http.StatusOK, code, b)
		lim := b["member"].(map[string]any)["limits"].(map[string]any)["globalLimits"].(map[string]any)
		require.Equal(t, "30", lim["rpm"])
		// Without an update mask the body's fields are the mask: tpd stays.
		code, b = rawREST(t, "PATCH", member, f.root, `{"limits":{"globalLimits":{"rpm":40}}}`)
		require.Equal(t, http.StatusOK, code, b)
		lim = b["member"].(map[string]any)["limits"].(map[string]any)["globalLimits"].(map[string]any)
		require.Equal(t, "40", lim["rpm"])
		require.Equal(t, "1000", lim["tpd"])
		require.NotEmpty(t, b["member"].(map[string]any)["updateTime"])
	})
	t.Run("PATCH a member: bad input is a 400", func(t *testing.T) {
		before := f.state(t)
		code, b := rawREST(t, "PATCH", member, f.root, `{"limits":{"globalLimits":{"rpm":-1}}}`)
		requireRESTError(t, code, b, http.StatusBadRequest, "INVALID_ARGUMENT", "rpm")
		code, b = rawREST(t, "PATCH", member, f.root, `{"role":"ROLE_OWNER"}`)
		requireRESTError(t, code, b, http.StatusBadRequest, "INVALID_ARGUMENT", "update_mask")
		require.Equal(t, before, f.state(t))
	})
	t.Run("PATCH a workspace's limits and thresholds", func(t *testing.T) {
		code, b := rawREST(t, "PATCH", f.api+"/v1/workspaces/acme", f.root, `{"limits":{"tokenCap":{"tokens":5000}},"alertThresholds":[50,80,100]}`)
		require.Equal(t, http.StatusOK, code, b)
		require.Equal(t, []any{50.0, 80.0, 100.0}, b["workspace"].(map[string]any)["alertThresholds"])
		code, b = rawREST(t, "PATCH", f.api+"/v1/workspaces/acme", f.root, `{"alertThresholds":[80,50]}`)
		requireRESTError(t, code, b, http.StatusBadRequest, "INVALID_ARGUMENT", "alert_thresholds")
	})
	t.Run("keys:import, then verify by the old secret", func(t *testing.T) {
		const old = "sk-old-system-0123456789"
		h := sha256.Sum256([]byte(old))
		code, b := rawREST(t, "POST", f.api+"/v1/workspaces/acme/keys:import", f.root,
			`{"keys":[{"name":"old-web","secretSha256":"`+hex.EncodeToString(h[:])+`","owner":"alice","partialKey":"6789"}]}`)
		require.Equal(t, http.StatusOK, code, b)
		k := b["keys"].([]any)[0].(map[string]any)
		require.Equal(t, true, k["legacy"])
		code, b = rawREST(t, "POST", f.api+"/v1/keys:verify", "", `{"secret":"`+old+`"}`)
		require.Equal(t, http.StatusOK, code, b)
		require.Equal(t, k["id"], b["key"].(map[string]any)["id"])
		require.Equal(t, "alice", b["member"].(map[string]any)["member"])
		code, b = rawREST(t, "GET", f.api+"/v1/workspaces/acme/keys?legacy=true", f.root, "")
		require.Equal(t, http.StatusOK, code, b)
		require.Len(t, b["keys"], 1)
	})
	t.Run("keys:import refuses a plaintext secret", func(t *testing.T) {
		code, b := rawREST(t, "POST", f.api+"/v1/workspaces/acme/keys:import", f.root,
			`{"keys":[{"name":"leak","secretSha256":"sk-live-plaintext-secret"}]}`)
		requireRESTError(t, code, b, http.StatusBadRequest, "INVALID_ARGUMENT", "SHA-256")
		require.NotContains(t, b["error"].(map[string]any)["message"], "sk-live-plaintext-secret")
	})
}
