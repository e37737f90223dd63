package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// providerKinds are the kinds a provider may be given, by the name users
// write (CLI flags and the config file).
var providerKinds = map[string]keystorev1.ProviderKind{
	"openai":    keystorev1.ProviderKind_PROVIDER_KIND_OPENAI,
	"anthropic": keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC,
}

// parseKind reads a provider kind; empty is openai.
func parseKind(s string) (keystorev1.ProviderKind, error) {
	if s == "" {
		return keystorev1.ProviderKind_PROVIDER_KIND_OPENAI, nil
	}
	k, ok := providerKinds[s]
	if !ok {
		return 0, fmt.Errorf("unknown provider kind %q: want openai or anthropic", s)
	}
	return k, nil
}

// kindName is the name users write for k.
func kindName(k keystorev1.ProviderKind) string {
	if k == keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC {
		return "anthropic"
	}
	return "openai"
}

// updateMask is the update mask of the fields whose flags (keys of
// fields) were given on the command line; at least one must be.
func updateMask(fs *flag.FlagSet, fields map[string]string) (*fieldmaskpb.FieldMask, error) {
	m := &fieldmaskpb.FieldMask{}
	fs.Visit(func(f *flag.Flag) {
		if field, ok := fields[f.Name]; ok {
			m.Paths = append(m.Paths, field)
		}
	})
	if len(m.Paths) == 0 {
		names := slices.Sorted(maps.Keys(fields))
		return nil, errors.New("update: give at least one of --" + strings.Join(names, ", --"))
	}
	return m, nil
}

// deleted reports a deletion, or the error that prevented it.
func (a *admin) deleted(what string, err error) error {
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.out, "deleted "+what)
	return err
}

// providerFields maps the provider flags to their fields.
var providerFields = map[string]string{"base-url": "base_url", "kind": "kind", "api-key-env": "api_key_env", "api-key-file": "api_key_file"}

func (a *admin) providers(ctx context.Context, verb string, args []string) error {
	base := a.fs.String("base-url", "", `OpenAI- or Anthropic-compatible base URL, e.g. https://api.openai.com/v1, or "mock"`)
	kind := a.fs.String("kind", "", "openai (any OpenAI-compatible server; default) or anthropic")
	env := a.fs.String("api-key-env", "", "environment variable of the edge holding the provider's key")
	file := a.fs.String("api-key-file", "", "file (a mounted secret) holding the provider's key")
	pos, err := a.parse(args)
	if err != nil {
		return err
	}
	defer a.c.Close()
	ks := a.c.Keystore
	if verb != "list" && len(pos) != 1 {
		return fmt.Errorf("usage: keygate providers %s <id> [flags]", verb)
	}
	k, err := parseKind(*kind)
	if err != nil {
		return fmt.Errorf("--kind: %w", err)
	}
	p := &keystorev1.Provider{BaseUrl: *base, Kind: k, ApiKeyEnv: *env, ApiKeyFile: *file}
	switch verb {
	case "create":
		p.Id = pos[0]
		r, err := ks.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: p})
		if err != nil {
			return err
		}
		return a.showProviders(r.GetProvider())
	case "list":
		r, err := ks.ListProviders(ctx, &keystorev1.ListProvidersRequest{})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showProviders(r.GetProviders()...)
	case "get":
		r, err := ks.GetProvider(ctx, &keystorev1.GetProviderRequest{Provider: pos[0]})
		if err != nil {
			return err
		}
		return a.showProviders(r.GetProvider())
	case "update":
		m, err := updateMask(a.fs, providerFields)
		if err != nil {
			return err
		}
		r, err := ks.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: pos[0], Patch: p, UpdateMask: m})
		if err != nil {
			return err
		}
		return a.showProviders(r.GetProvider())
	case "delete":
		_, err := ks.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: pos[0]})
		return a.deleted("provider "+pos[0], err)
	}
	return fmt.Errorf("unknown command: providers %s (create, list, get, update, delete)", verb)
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

// modelFields maps the model flags to their fields.
var modelFields = map[string]string{
	"provider": "provider", "upstream-model": "upstream_model",
	"input-price": "input_price_per_million_usd", "output-price": "output_price_per_million_usd",
	"cache-write-price": "cache_write_price_per_million_usd", "cache-read-price": "cache_read_price_per_million_usd",
}

func (a *admin) models(ctx context.Context, verb string, args []string) error {
	provider := a.fs.String("provider", "", "provider id")
	in := a.fs.String("input-price", "", "USD per million input tokens")
	outp := a.fs.String("output-price", "", "USD per million output tokens")
	cw := a.fs.String("cache-write-price", "", "USD per million prompt tokens written to the provider's cache (default: the input price)")
	cr := a.fs.String("cache-read-price", "", "USD per million prompt tokens read from the provider's cache (default: the input price)")
	upstream := a.fs.String("upstream-model", "", "model name at the provider (default: the id)")
	pos, err := a.parse(args)
	if err != nil {
		return err
	}
	defer a.c.Close()
	ks := a.c.Keystore
	if verb != "list" && len(pos) != 1 {
		return fmt.Errorf("usage: keygate models %s <id> [flags]", verb)
	}
	m := &keystorev1.Model{Provider: *provider, UpstreamModel: *upstream, InputPricePerMillionUsd: *in, OutputPricePerMillionUsd: *outp,
		CacheWritePricePerMillionUsd: *cw, CacheReadPricePerMillionUsd: *cr}
	switch verb {
	case "list":
		r, err := ks.ListModels(ctx, &keystorev1.ListModelsRequest{})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showModels(r.GetModels()...)
	case "create":
		m.Id = pos[0]
		r, err := ks.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: m})
		if err != nil {
			return err
		}
		return a.showModels(r.GetModel())
	case "update":
		mask, err := updateMask(a.fs, modelFields)
		if err != nil {
			return err
		}
		r, err := ks.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: pos[0], Patch: m, UpdateMask: mask})
		if err != nil {
			return err
		}
		return a.showModels(r.GetModel())
	case "delete":
		_, err := ks.DeleteModel(ctx, &keystorev1.DeleteModelRequest{Model: pos[0]})
		return a.deleted("model "+pos[0], err)
	}
	return fmt.Errorf("unknown command: models %s (create, list, update, delete)", verb)
}

func (a *admin) showModels(ms ...*keystorev1.Model) error {
	if a.output == "json" && len(ms) == 1 {
		return a.json(ms[0])
	}
	rows := make([][]string, 0, len(ms))
	for _, m := range ms {
		rows = append(rows, []string{m.GetId(), m.GetProvider(), m.GetUpstreamModel(), m.GetInputPricePerMillionUsd(), m.GetOutputPricePerMillionUsd(),
			orDash(m.GetCacheWritePricePerMillionUsd()), orDash(m.GetCacheReadPricePerMillionUsd())})
	}
	return a.table("MODEL\tPROVIDER\tUPSTREAM\tIN $/M\tOUT $/M\tCACHE WRITE $/M\tCACHE READ $/M", rows)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return strings.TrimSpace(s)
}
