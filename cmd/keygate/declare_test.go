package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/client"
)

// TestDeclarationErrors: a wrong file is refused with the line and the
// field that are wrong.
func TestDeclarationErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", "provider:\n  - id: x\n", "keygate.yaml:1: provider: unknown field"},
		{"unknown field", "providers:\n  - id: x\n    base_url: https://x\n    region: eu\n", "keygate.yaml:4: providers[0].region: unknown field"},
		{"inline credential", "providers:\n  - id: x\n    base_url: https://x\n    api_key: sk-123\n", "keygate.yaml:4: providers[0].api_key: a credential is never written in the file"},
		{"bad kind", "providers:\n  - id: x\n    kind: gemini\n    base_url: https://x\n", "keygate.yaml:2: providers[0].kind: unknown provider kind"},
		{"missing base_url", "providers:\n  - id: x\n", "keygate.yaml:2: providers[0].base_url: required"},
		{"two credentials", "providers:\n  - id: x\n    base_url: https://x\n    api_key_env: A\n    api_key_file: /a\n", "providers[0].api_key_env: give api_key_env or api_key_file"},
		{"bad price", "models:\n  - id: m\n    provider: p\n    input_price: cheap\n    output_price: \"1\"\n", "keygate.yaml:2: models[0].prices: input price"},
		{"missing price", "models:\n  - id: m\n    provider: p\n    input_price: \"1\"\n", "models[0].prices: output price"},
		{"missing provider", "models:\n  - id: m\n    input_price: \"1\"\n    output_price: \"1\"\n", "models[0].provider: required"},
		{"not a list", "models: gpt\n", "keygate.yaml:1: models: want a list"},
		{"wrong type", "workspaces:\n  - id: acme\n    max_keys: lots\n", "keygate.yaml:3: workspaces[0].max_keys:"},
		{"not a string", "providers:\n  - id: [x]\n    base_url: https://x\n", "keygate.yaml:2: providers[0].id: want a string"},
		{"declared twice", "workspaces:\n  - id: acme\n  - id: acme\n", "keygate.yaml:3: workspaces[1] (acme): declared again (first at keygate.yaml:2"},
		{"bad yaml", "providers: [\n", "keygate.yaml: yaml: line"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseDeclaration("keygate.yaml", []byte(c.yaml))
			require.ErrorContains(t, err, c.want)
		})
	}
	t.Run("a credential value never appears in an error", func(t *testing.T) {
		_, err := parseDeclaration("keygate.yaml", []byte("providers:\n  - id: x\n    base_url: https://x\n    api_key: sk-secret-123\n"))
		require.NotContains(t, err.Error(), "sk-secret-123")
	})
}

const declaredRegistry = `
providers:
  - id: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
  - id: claude
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    api_key_file: /run/secrets/anthropic
models:
  - id: gpt-4o-mini
    provider: openai
    input_price: "0.15"
    output_price: "0.60"
  - id: sonnet
    provider: claude
    upstream_model: claude-sonnet-4-5
    input_price: "3"
    output_price: "15"
    cache_write_price: "3.75"
    cache_read_price: "0.30"
workspaces:
  - id: acme
    name: Acme
    max_keys: 20
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keygate.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

// registry is the providers' and models' ids and what a test checks of
// them.
func registry(t *testing.T, ks keystorev1.KeystoreServiceClient) map[string]string {
	t.Helper()
	out := map[string]string{}
	pr, err := ks.ListProviders(t.Context(), &keystorev1.ListProvidersRequest{})
	require.NoError(t, err)
	for _, p := range pr.GetProviders() {
		out["provider/"+p.GetId()] = kindName(p.GetKind()) + " " + p.GetBaseUrl() + " " + p.GetApiKeyEnv() + p.GetApiKeyFile()
	}
	mr, err := ks.ListModels(t.Context(), &keystorev1.ListModelsRequest{})
	require.NoError(t, err)
	for _, m := range mr.GetModels() {
		out["model/"+m.GetId()] = strings.Join([]string{m.GetProvider(), m.GetUpstreamModel(), m.GetInputPricePerMillionUsd(),
			m.GetOutputPricePerMillionUsd(), m.GetCacheWritePricePerMillionUsd(), m.GetCacheReadPricePerMillionUsd()}, " ")
	}
	return out
}

// TestConfigApplied: keygate up --config applies the file at start, and
// applying it again changes nothing; a changed file updates, prune
// deletes what is no longer declared (never the built-in mock), and a file
// that fails half-way leaves the registry as it was.
func TestConfigApplied(t *testing.T) {
	path := writeConfig(t, declaredRegistry)
	app := MustRunApp(t, "", nil, func(a *App) { a.Config.ConfigFile = path })
	c, err := client.New(app.GRPCAddr, app.Config.RootToken)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ks := c.Keystore
	apply := func(t *testing.T, body string) error {
		d, err := parseDeclaration("keygate.yaml", []byte(body))
		require.NoError(t, err)
		return d.apply(t.Context(), ks)
	}

	want := map[string]string{
		"provider/mock":     "openai mock ",
		"provider/openai":   "openai https://api.openai.com/v1 OPENAI_API_KEY",
		"provider/claude":   "anthropic https://api.anthropic.com/v1 /run/secrets/anthropic",
		"model/mock-small":  "mock mock-small 0.15 0.60  ",
		"model/mock-large":  "mock mock-large 2.50 10.00  ",
		"model/gpt-4o-mini": "openai gpt-4o-mini 0.15 0.60  ",
		"model/sonnet":      "claude claude-sonnet-4-5 3 15 3.75 0.30",
	}
	require.Equal(t, want, registry(t, ks))
	w, err := ks.GetWorkspace(t.Context(), &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Equal(t, "Acme", w.GetWorkspace().GetName())
	require.EqualValues(t, 20, w.GetWorkspace().GetMaxKeys())

	t.Run("idempotent", func(t *testing.T) {
		before, err := ks.ListAuditEvents(t.Context(), &keystorev1.ListAuditEventsRequest{Workspace: "_registry"})
		require.NoError(t, err)
		require.NoError(t, apply(t, declaredRegistry))
		after, err := ks.ListAuditEvents(t.Context(), &keystorev1.ListAuditEventsRequest{Workspace: "_registry"})
		require.NoError(t, err)
		require.Len(t, after.GetEvents(), len(before.GetEvents()), "nothing written")
		require.Equal(t, want, registry(t, ks))
	})
	t.Run("updates", func(t *testing.T) {
		changed := strings.Replace(declaredRegistry, `cache_read_price: "0.30"`, `cache_read_price: "0.25"`, 1)
		changed = strings.Replace(changed, "api_key_file: /run/secrets/anthropic", "api_key_env: ANTHROPIC_API_KEY", 1)
		require.NoError(t, apply(t, changed))
		got := registry(t, ks)
		require.Equal(t, "claude claude-sonnet-4-5 3 15 3.75 0.25", got["model/sonnet"])
		require.Equal(t, "anthropic https://api.anthropic.com/v1 ANTHROPIC_API_KEY", got["provider/claude"])
		require.NoError(t, apply(t, declaredRegistry))
		require.Equal(t, want, registry(t, ks))
	})
	t.Run("all or nothing", func(t *testing.T) {
		broken := declaredRegistry + "\n" // a model whose provider exists nowhere, after changes
		broken = strings.Replace(broken, `input_price: "0.15"`, `input_price: "0.20"`, 1)
		broken = strings.Replace(broken, "workspaces:", "  - id: ghost\n    provider: nowhere\n    input_price: \"1\"\n    output_price: \"1\"\nworkspaces:", 1)
		err := apply(t, broken)
		require.ErrorContains(t, err, "keygate.yaml:")
		require.ErrorContains(t, err, "models[2] (ghost)")
		require.Equal(t, want, registry(t, ks), "the price change before it was undone")
	})
	t.Run("prune", func(t *testing.T) {
		pruned := declaredRegistry[:strings.Index(declaredRegistry, "  - id: sonnet")] + "prune: true\n"
		pruned = strings.Replace(pruned, "  - id: claude\n    kind: anthropic\n    base_url: https://api.anthropic.com/v1\n    api_key_file: /run/secrets/anthropic\n", "", 1)
		require.NoError(t, apply(t, pruned))
		got := registry(t, ks)
		require.NotContains(t, got, "model/sonnet")
		require.NotContains(t, got, "provider/claude")
		require.Contains(t, got, "model/mock-small", "the built-in mock is kept")
		require.Contains(t, got, "model/gpt-4o-mini")
	})
}

// TestConfigRefusedAtStart: keygate does not start on a wrong file.
func TestConfigRefusedAtStart(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "providers:\n  - id: x\n    base_url: https://x\n    api_key: sk-1\n")
	cfg, _, err := parseConfig("up", []string{"--config", path}, func(string) string { return "" })
	require.NoError(t, err)
	app := &App{Config: cfg, Roles: AllRoles, EmbedEtcd: true}
	err = app.Start(context.Background())
	_ = app.Close()
	require.ErrorContains(t, err, path+":4: providers[0].api_key")
}

// TestShippedConfigParses: the file the kustomize base ships is valid.
func TestShippedConfigParses(t *testing.T) {
	t.Parallel()
	d, err := loadDeclaration("../../deploy/base/config/keygate.yaml")
	require.NoError(t, err)
	require.Len(t, d.models, 2)
}
