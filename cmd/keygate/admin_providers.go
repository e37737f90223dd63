package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

func (a *admin) providersCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "providers", Short: "Declare the model providers the edge forwards to"},
		a.providersCreate(), a.providersList(), a.providersGet(), a.providersUpdate(), a.providersDelete())
}

// providerFlags are the settings of providers create and update.
type providerFlags struct {
	base, kind, env, file string
}

// providerFields maps the provider flags to their fields.
func providerFields() map[string]string {
	return map[string]string{"base-url": "base_url", "kind": "kind", "api-key-env": "api_key_env", "api-key-file": "api_key_file"}
}

func (p *providerFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&p.base, "base-url", "", `OpenAI- or Anthropic-compatible base URL, e.g. https://api.openai.com/v1, or "mock"`)
	fs.StringVar(&p.kind, "kind", "", "openai (any OpenAI-compatible server; default) or anthropic")
	fs.StringVar(&p.env, "api-key-env", "", "environment variable of the edge holding the provider's key")
	fs.StringVar(&p.file, "api-key-file", "", "file (a mounted secret) holding the provider's key")
}

// provider is the provider the flags describe.
func (p *providerFlags) provider(id string) (*keystorev1.Provider, error) {
	k, err := parseKind(p.kind)
	if err != nil {
		return nil, fmt.Errorf("--kind: %w", err)
	}
	return &keystorev1.Provider{Id: id, BaseUrl: p.base, Kind: k, ApiKeyEnv: p.env, ApiKeyFile: p.file}, nil
}

func (a *admin) providersCreate() *cobra.Command {
	var pf providerFlags
	cmd := &cobra.Command{Use: "create <id>", Short: "Declare a provider", Args: exactArgs(1),
		Example: "  keygate providers create anthropic --kind anthropic --base-url https://api.anthropic.com/v1 --api-key-env ANTHROPIC_API_KEY"}
	pf.register(cmd.Flags())
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		p, err := pf.provider(args[0])
		if err != nil {
			return err
		}
		r, err := a.c.Keystore.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: p})
		if err != nil {
			return err
		}
		return a.showProviders(r.GetProvider())
	})
}

func (a *admin) providersList() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the providers", Args: exactArgs(0)}
	return a.verb(cmd, func(ctx context.Context, _ []string) error {
		r, err := a.c.Keystore.ListProviders(ctx, &keystorev1.ListProvidersRequest{})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showProviders(r.GetProviders()...)
	})
}

func (a *admin) providersGet() *cobra.Command {
	cmd := &cobra.Command{Use: "get <id>", Short: "Show a provider", Args: exactArgs(1)}
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.Keystore.GetProvider(ctx, &keystorev1.GetProviderRequest{Provider: args[0]})
		if err != nil {
			return err
		}
		return a.showProviders(r.GetProvider())
	})
}

func (a *admin) providersUpdate() *cobra.Command {
	var pf providerFlags
	cmd := &cobra.Command{Use: "update <id>", Short: "Change a provider; only the flags given change", Args: exactArgs(1),
		Example: "  keygate providers update anthropic --api-key-file /run/secrets/anthropic"}
	pf.register(cmd.Flags())
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		p, err := pf.provider("")
		if err != nil {
			return err
		}
		m, err := updateMask(cmd.Flags(), providerFields())
		if err != nil {
			return err
		}
		r, err := a.c.Keystore.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: args[0], Patch: p, UpdateMask: m})
		if err != nil {
			return err
		}
		return a.showProviders(r.GetProvider())
	})
}

func (a *admin) providersDelete() *cobra.Command {
	cmd := &cobra.Command{Use: "delete <id>", Short: "Delete a provider no model uses", Args: exactArgs(1)}
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		_, err := a.c.Keystore.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: args[0]})
		return a.deleted("provider "+args[0], err)
	})
}

func (a *admin) showProviders(ps ...*keystorev1.Provider) error {
	if a.output == "json" && len(ps) == 1 {
		return a.json(ps[0])
	}
	rows := make([][]string, 0, len(ps))
	for _, p := range ps {
		cred := "-"
		switch {
		case p.GetApiKeyEnv() != "":
			cred = "env " + p.GetApiKeyEnv()
		case p.GetApiKeyFile() != "":
			cred = "file " + p.GetApiKeyFile()
		}
		rows = append(rows, []string{p.GetId(), kindName(p.GetKind()), p.GetBaseUrl(), cred})
	}
	return a.table("PROVIDER\tKIND\tBASE URL\tCREDENTIAL", rows)
}
