package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAdminCLIGovernance: the governance commands against keygate up:
// limits at every level (enforced, report, timed override), explain, the
// workspace's alert thresholds and policy, credits, webhooks, alerts and
// imported keys.
func TestAdminCLIGovernance(t *testing.T) {
	app := MustRunApp(t, "", nil)
	cli := adminCLI{env: map[string]string{"KEYGATE_ADDR": app.GRPCAddr, "KEYGATE_ROOT_TOKEN": app.Config.RootToken, "KEYGATE_WORKSPACE": "acme"}}
	cli.ok(t, "workspaces", "create", "acme")
	cli.ok(t, "workspaces", "add-member", "acme", "ada", "member")
	created := cli.jsonOut(t, "keys", "create", "web", "--owner", "ada")
	keyID := created["key"].(map[string]any)["id"].(string)

	t.Run("limits", func(t *testing.T) {
		out := cli.ok(t, "limits", "set", "workspace", "--rpd", "2", "--budget", "3.00", "--budget-period", "weekly")
		requireRow(t, out, "enforced", "rpd", "2")
		require.Contains(t, out, "budget/weekly")
		require.Contains(t, cli.ok(t, "limits", "set", "workspace", "--tpd", "500"), "rpd", "flags not given are kept")
		out = cli.ok(t, "limits", "set", "member/ada", "--rpm", "5", "--report")
		requireRow(t, out, "report", "rpm", "5")
		out = cli.ok(t, "limits", "set", "key/"+keyID, "--rpm", "1", "--until", "1h")
		require.Contains(t, out, "override until")
		require.NotContains(t, cli.ok(t, "limits", "clear-override", "key/"+keyID), "override until")
		w := cli.jsonOut(t, "workspaces", "get", "acme")
		require.EqualValues(t, "2", w["limits"].(map[string]any)["globalLimits"].(map[string]any)["rpd"])
		require.EqualValues(t, "500", w["limits"].(map[string]any)["globalLimits"].(map[string]any)["tpd"])

		for args, want := range map[string]string{
			"limits set team":                                  "want workspace, member/<id> or key/<id>",
			"limits set workspace":                             "nothing to change",
			"limits set workspace --rpm -1":                    "rpm",
			"limits set workspace --rpm 1 --report --until 1h": "pick one",
			"limits set member/nobody --rpm 1":                 "nobody",
		} {
			out, err := cli.run(t, strings.Fields(args)...)
			require.Error(t, err, args)
			require.Contains(t, out+err.Error(), want, args)
		}
	})

	t.Run("explain", func(t *testing.T) {
		out := cli.ok(t, "keys", "explain", keyID, "--model", "mock-small", "--tokens", "10")
		requireRow(t, out, "workspace", "rpd", "enforce", "day", "2")
		require.Contains(t, out, "would be admitted now")
		ex := cli.jsonOut(t, "keys", "explain", keyID, "--model", "mock-small")
		require.NotEmpty(t, ex["limits"])
	})

	t.Run("workspace settings", func(t *testing.T) {
		out := cli.ok(t, "workspaces", "set", "acme", "--alert-thresholds", "50,80%,100", "--limit-editors", "admins", "--request-log-cap", "1000")
		require.Contains(t, out, "50%,80%,100%")
		require.Contains(t, out, "admins")
		_, err := cli.run(t, "workspaces", "set", "acme", "--limit-editors", "everyone")
		require.ErrorContains(t, err, "key-owners or admins")
		_, err = cli.run(t, "workspaces", "set", "acme", "--alert-thresholds", "80,50")
		require.Error(t, err, "thresholds out of order are refused by the keystore")
	})

	t.Run("credits", func(t *testing.T) {
		out := cli.ok(t, "credits", "add", "invoice-1", "10.00", "--note", "first")
		require.Contains(t, out, "invoice-1")
		require.Contains(t, cli.ok(t, "credits", "add", "invoice-1", "10.00"), "already recorded")
		cli.ok(t, "credits", "adjust", "refund-1", "--", "-2.50")
		c := cli.jsonOut(t, "credits", "show")
		require.Equal(t, "7.5", strings.TrimRight(strings.TrimRight(c["grantedUsd"].(string), "0"), "."))
		hist := cli.ok(t, "credits", "history")
		require.Less(t, strings.Index(hist, "refund-1"), strings.Index(hist, "invoice-1"), "newest first")
		_, err := cli.run(t, "credits", "add", "invoice-2", "ten")
		require.Error(t, err)
	})

	t.Run("webhooks and alerts", func(t *testing.T) {
		out := cli.ok(t, "webhooks", "create", "http://127.0.0.1:1/hook", "--description", "nobody listens")
		secret := secretLine(t, out)
		require.True(t, strings.HasPrefix(secret, "whsec_"), secret)
		list := cli.jsonOut(t, "webhooks", "list")
		hooks := list["webhooks"].([]any)
		require.Len(t, hooks, 1)
		id := hooks[0].(map[string]any)["id"].(string)
		require.NotContains(t, cli.ok(t, "webhooks", "list"), secret)
		_, err := cli.run(t, "webhooks", "test", id)
		require.ErrorContains(t, err, "not delivered")
		rotated := secretLine(t, cli.ok(t, "webhooks", "rotate-secret", id))
		require.NotEqual(t, secret, rotated)
		_, err = cli.run(t, "webhooks", "create", "ftp://example.com/x")
		require.Error(t, err)
		require.Contains(t, cli.ok(t, "webhooks", "delete", id), "deleted")
		require.Contains(t, cli.ok(t, "alerts", "list"), "THRESHOLD")
	})

	t.Run("imported keys", func(t *testing.T) {
		sum := sha256.Sum256([]byte("sk-old-gateway-0123456789abcdef"))
		file := filepath.Join(t.TempDir(), "legacy.json")
		require.NoError(t, os.WriteFile(file, []byte(`{"keys":[{"name":"old","secretSha256":"`+hex.EncodeToString(sum[:])+`","globalLimits":{"rpm":10}}]}`), 0o600))
		require.Contains(t, cli.ok(t, "keys", "import", "--file", file), "(legacy)")
		out := cli.ok(t, "keys", "list", "--legacy")
		require.Contains(t, out, "old")
		require.NotContains(t, out, "web")
		_, err := cli.run(t, "keys", "import", "--file", filepath.Join(t.TempDir(), "missing.json"))
		require.ErrorContains(t, err, "--file")
	})
}

// requireRow finds a table line whose cells start with cells.
func requireRow(t *testing.T, out string, cells ...string) {
	t.Helper()
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(cells) && strings.Join(f[:len(cells)], " ") == strings.Join(cells, " ") {
			return
		}
	}
	t.Fatalf("no row %q in:\n%s", cells, out)
}
