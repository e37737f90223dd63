package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// adminCLI runs admin commands as a user would, against one keygate.
type adminCLI struct {
	env map[string]string
}

func (c adminCLI) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), args, func(k string) string { return c.env[k] }, &out, &errOut)
	return out.String() + errOut.String(), err
}

func (c adminCLI) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.run(t, args...)
	require.NoError(t, err, "keygate %s\n%s", strings.Join(args, " "), out)
	return out
}

// jsonOut runs a command with --output json and decodes its answer.
func (c adminCLI) jsonOut(t *testing.T, args ...string) map[string]any {
	t.Helper()
	out := c.ok(t, append(args, "--output", "json")...)
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &m), out)
	return m
}

// secretLine is the secret a create or rotate table prints once.
func secretLine(t *testing.T, out string) string {
	t.Helper()
	for line := range strings.SplitSeq(out, "\n") {
		if _, s, ok := strings.Cut(line, "(shown once, store it now): "); ok {
			return strings.TrimSpace(s)
		}
	}
	t.Fatalf("no secret in output:\n%s", out)
	return ""
}

func TestAdminCLI(t *testing.T) {
	app := MustRunApp(t, "", nil)
	cli := adminCLI{env: map[string]string{"KEYGATE_ADDR": app.GRPCAddr, "KEYGATE_ROOT_TOKEN": app.Config.RootToken}}
	ws := []string{"--workspace", "acme"}

	var keyID, secret string
	t.Run("workspaces", func(t *testing.T) {
		out := cli.ok(t, "workspaces", "create", "acme", "--name", "Acme", "--max-keys", "5")
		require.Contains(t, out, "acme")
		require.Contains(t, out, "Acme")
		got := cli.jsonOut(t, "workspaces", "get", "acme")
		require.Equal(t, "acme", got["id"])
		require.Equal(t, "Acme", got["name"])
		require.EqualValues(t, 5, got["maxKeys"])
		require.Contains(t, cli.ok(t, "workspaces", "list"), "Acme")
		list := cli.jsonOut(t, "workspaces", "list")
		require.Len(t, list["workspaces"], 1)
	})

	t.Run("keys create", func(t *testing.T) {
		out := cli.ok(t, append([]string{"keys", "create", "web", "--rpm", "3", "--tpd", "100000", "--budget", "5.00"}, ws...)...)
		secret = secretLine(t, out)
		require.True(t, strings.HasPrefix(secret, "kg_"), secret)
		require.Equal(t, 1, strings.Count(out, secret), "the secret is shown exactly once")
		require.Contains(t, out, "3/0/0/100000")

		created := cli.jsonOut(t, append([]string{"keys", "create", "batch"}, ws...)...)
		require.True(t, strings.HasPrefix(created["secret"].(string), "kg_"))
		require.Equal(t, "batch", created["key"].(map[string]any)["name"])
		require.Equal(t, "KEY_STATE_ACTIVE", created["key"].(map[string]any)["state"])
	})

	// The key named web, found by listing: the table shows no secret.
	t.Run("keys list and get", func(t *testing.T) {
		list := cli.jsonOut(t, append([]string{"keys", "list"}, ws...)...)
		keys := list["keys"].([]any)
		require.Len(t, keys, 2)
		for _, k := range keys {
			if k.(map[string]any)["name"] == "web" {
				keyID = k.(map[string]any)["id"].(string)
			}
		}
		require.NotEmpty(t, keyID)
		for _, args := range [][]string{
			{"keys", "list"}, {"keys", "list", "--output", "json"},
			{"keys", "get", keyID}, {"keys", "get", keyID, "--output", "json"},
		} {
			out := cli.ok(t, append(args, ws...)...)
			require.Contains(t, out, keyID)
			require.NotContains(t, out, secret, "keygate %v shows the secret", args)
			require.NotContains(t, out, secret[len(secret)-20:], "keygate %v shows the secret", args)
		}
		got := cli.jsonOut(t, append([]string{"keys", "get", keyID}, ws...)...)
		require.NotContains(t, got, "secret")
		require.Equal(t, "web", got["name"])
	})

	// KEYGATE_WORKSPACE and KEYGATE_OUTPUT stand for their flags; a flag wins.
	t.Run("settings from the environment", func(t *testing.T) {
		env := adminCLI{env: map[string]string{
			"KEYGATE_ADDR": app.GRPCAddr, "KEYGATE_TOKEN": app.Config.RootToken,
			"KEYGATE_WORKSPACE": "acme", "KEYGATE_OUTPUT": "json",
		}}
		var list map[string]any
		out := env.ok(t, "keys", "list")
		require.NoError(t, json.Unmarshal([]byte(out), &list), out)
		require.Len(t, list["keys"], 2)
		require.Contains(t, env.ok(t, "keys", "get", keyID, "--output", "table"), "RPM/RPD/TPM/TPD")
		_, err := env.run(t, "keys", "list", "--workspace", "other")
		require.Error(t, err, "--workspace wins over KEYGATE_WORKSPACE")
	})

	t.Run("keys update", func(t *testing.T) {
		require.Contains(t, cli.ok(t, append([]string{"keys", "update", keyID, "--rpm", "7"}, ws...)...), "7/0/0/100000")
		cli.ok(t, append([]string{"keys", "update", keyID, "--model", "mock-small", "--rpm", "2"}, ws...)...)
		cli.ok(t, append([]string{"keys", "update", keyID, "--budget", "9.50", "--budget-period", "daily"}, ws...)...)
		got := cli.jsonOut(t, append([]string{"keys", "get", keyID}, ws...)...)
		require.EqualValues(t, "7", got["globalLimits"].(map[string]any)["rpm"])
		require.EqualValues(t, "100000", got["globalLimits"].(map[string]any)["tpd"], "other limits kept")
		ml := got["modelLimits"].([]any)
		require.Len(t, ml, 1)
		require.Equal(t, "mock-small", ml[0].(map[string]any)["model"])
		require.EqualValues(t, "2", ml[0].(map[string]any)["limits"].(map[string]any)["rpm"])
		require.Equal(t, map[string]any{"amountUsd": "9.50", "resetPeriod": "RESET_PERIOD_DAILY"}, got["budget"])
	})

	state := func(t *testing.T, id string) string {
		t.Helper()
		return cli.jsonOut(t, append([]string{"keys", "get", id}, ws...)...)["state"].(string)
	}
	t.Run("disable and enable", func(t *testing.T) {
		require.Contains(t, cli.ok(t, append([]string{"keys", "disable", keyID}, ws...)...), "DISABLED")
		require.Equal(t, "KEY_STATE_DISABLED", state(t, keyID))
		list := cli.jsonOut(t, append([]string{"keys", "list", "--state", "disabled"}, ws...)...)
		require.Len(t, list["keys"], 1)
		require.Contains(t, cli.ok(t, append([]string{"keys", "enable", keyID}, ws...)...), "ACTIVE")
		require.Equal(t, "KEY_STATE_ACTIVE", state(t, keyID))
	})

	t.Run("rotate", func(t *testing.T) {
		out := cli.ok(t, append([]string{"keys", "rotate", keyID}, ws...)...)
		next := secretLine(t, out)
		require.True(t, strings.HasPrefix(next, "kg_"+keyID+"_"), next)
		require.NotEqual(t, secret, next)
		rotated := cli.jsonOut(t, append([]string{"keys", "rotate", keyID, "--grace", "1h"}, ws...)...)
		require.NotEqual(t, next, rotated["secret"])
		require.True(t, strings.HasPrefix(rotated["secret"].(string), "kg_"+keyID+"_"))
	})

	t.Run("usage and audit", func(t *testing.T) {
		require.Contains(t, cli.ok(t, append([]string{"usage", "get", keyID}, ws...)...), "REQUESTS")
		u := cli.jsonOut(t, append([]string{"usage", "get", keyID}, ws...)...)
		require.NotEmpty(t, u["day"])
		require.Contains(t, cli.ok(t, append([]string{"usage", "series", keyID}, ws...)...), "DAY")
		require.Contains(t, cli.ok(t, append([]string{"usage", "list", "--group-by", "model"}, ws...)...), "GROUP")
		require.Contains(t, cli.ok(t, append([]string{"usage", "requests", "--key", keyID}, ws...)...), "LATENCY")
		events := cli.jsonOut(t, append([]string{"audit", "list"}, ws...)...)["events"].([]any)
		actions := map[string]bool{}
		for _, e := range events {
			actions[e.(map[string]any)["action"].(string)] = true
		}
		for _, a := range []string{"workspace.create", "key.create", "key.update", "key.rotate"} {
			require.True(t, actions[a], "no %s event in %v", a, actions)
		}
		require.Contains(t, cli.ok(t, append([]string{"audit", "list", "--key", keyID}, ws...)...), "key.rotate")
	})

	t.Run("models", func(t *testing.T) {
		require.Contains(t, cli.ok(t, "models", "list"), "mock-small")
	})

	t.Run("providers and models", func(t *testing.T) {
		out := cli.ok(t, "providers", "create", "claude", "--kind", "anthropic", "--base-url", "https://api.anthropic.com/v1", "--api-key-env", "ANTHROPIC_API_KEY")
		require.Contains(t, out, "anthropic")
		require.Contains(t, out, "env ANTHROPIC_API_KEY")
		require.Contains(t, cli.ok(t, "providers", "list"), "claude")
		got := cli.jsonOut(t, "providers", "get", "claude")
		require.Equal(t, "PROVIDER_KIND_ANTHROPIC", got["kind"])
		out = cli.ok(t, "providers", "update", "claude", "--api-key-file", "/run/secrets/anthropic")
		require.Contains(t, out, "file /run/secrets/anthropic")

		out = cli.ok(t, "models", "create", "sonnet", "--provider", "claude", "--upstream-model", "claude-sonnet-4-5",
			"--input-price", "3", "--output-price", "15", "--cache-write-price", "3.75", "--cache-read-price", "0.30")
		require.Contains(t, out, "claude-sonnet-4-5")
		m := cli.jsonOut(t, "models", "update", "sonnet", "--cache-read-price", "0.25")
		require.Equal(t, "0.25", m["cacheReadPricePerMillionUsd"])
		require.Equal(t, "3.75", m["cacheWritePricePerMillionUsd"], "only the named price changes")
		require.Equal(t, "3", m["inputPricePerMillionUsd"])

		for _, bad := range [][]string{
			{"providers", "create", "x", "--kind", "gemini", "--base-url", "https://x"},
			{"providers", "update", "claude"},
			{"models", "update", "sonnet"},
			{"models", "create", "y", "--provider", "claude", "--input-price", "1", "--output-price", "1", "--cache-read-price", "free"},
		} {
			_, err := cli.run(t, bad...)
			require.Error(t, err, "%v", bad)
		}
		_, err := cli.run(t, "providers", "delete", "claude")
		require.Error(t, err, "a provider that still serves a model")
		require.Contains(t, cli.ok(t, "models", "delete", "sonnet"), "deleted model sonnet")
		require.Contains(t, cli.ok(t, "providers", "delete", "claude"), "deleted provider claude")
		require.NotContains(t, cli.ok(t, "providers", "list"), "claude")
	})

	t.Run("expire and delete", func(t *testing.T) {
		require.Contains(t, cli.ok(t, append([]string{"keys", "expire", keyID}, ws...)...), "EXPIRED")
		require.Equal(t, "KEY_STATE_EXPIRED", state(t, keyID))
		require.Contains(t, cli.ok(t, append([]string{"keys", "delete", keyID}, ws...)...), "deleted "+keyID)
		_, err := cli.run(t, append([]string{"keys", "get", keyID}, ws...)...)
		require.Error(t, err)
		require.Contains(t, describe(err), "not found")
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		before := cli.ok(t, append([]string{"keys", "list", "--output", "json"}, ws...)...)
		wsBefore := cli.ok(t, "workspaces", "list", "--output", "json")
		noCred := adminCLI{env: map[string]string{"KEYGATE_ADDR": app.GRPCAddr}}
		cases := []struct {
			name string
			cli  adminCLI
			args []string
			want string
		}{
			{"unknown group", cli, []string{"frobnicate", "now"}, "unknown command"},
			{"unknown verb", cli, []string{"keys", "frobnicate", "--workspace", "acme"}, "unknown command"},
			{"missing workspace", cli, []string{"keys", "create", "orphan"}, "--workspace"},
			{"bad output", cli, []string{"keys", "create", "x", "--workspace", "acme", "--output", "yaml"}, "--output"},
			{"bad state", cli, []string{"keys", "list", "--workspace", "acme", "--state", "sleeping"}, "--state"},
			{"no credential", noCred, []string{"keys", "create", "x", "--workspace", "acme"}, "no credential"},
			{"wrong credential", adminCLI{env: map[string]string{"KEYGATE_ADDR": app.GRPCAddr, "KEYGATE_TOKEN": "kga_nope"}},
				[]string{"workspaces", "create", "evil"}, ""},
			{"negative limit", cli, []string{"keys", "create", "neg", "--workspace", "acme", "--budget", "-1"}, "budget"},
			{"bad budget period", cli, []string{"keys", "create", "x", "--workspace", "acme", "--budget", "1", "--budget-period", "hourly"}, "reset period"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				out, err := c.cli.run(t, c.args...)
				require.Error(t, err, out)
				require.Contains(t, describe(err), c.want)
			})
		}
		require.Equal(t, before, cli.ok(t, append([]string{"keys", "list", "--output", "json"}, ws...)...))
		require.Equal(t, wsBefore, cli.ok(t, "workspaces", "list", "--output", "json"))
	})
}
