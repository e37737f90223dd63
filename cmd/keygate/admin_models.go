package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

func (a *admin) modelsCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "models", Short: "Declare the models keys may call, with their prices"},
		a.modelsCreate(), a.modelsList(), a.modelsUpdate(), a.modelsDelete())
}

// modelFlags are the settings of models create and update.
type modelFlags struct {
	provider, upstream, in, out, cacheWrite, cacheRead string
}

// modelFields maps the model flags to their fields.
func modelFields() map[string]string {
	return map[string]string{
		"provider": "provider", "upstream-model": "upstream_model",
		"input-price": "input_price_per_million_usd", "output-price": "output_price_per_million_usd",
		"cache-write-price": "cache_write_price_per_million_usd", "cache-read-price": "cache_read_price_per_million_usd",
	}
}

func (m *modelFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&m.provider, "provider", "", "provider id")
	fs.StringVar(&m.in, "input-price", "", "USD per million input tokens")
	fs.StringVar(&m.out, "output-price", "", "USD per million output tokens")
	fs.StringVar(&m.cacheWrite, "cache-write-price", "", "USD per million prompt tokens written to the provider's cache (default: the input price)")
	fs.StringVar(&m.cacheRead, "cache-read-price", "", "USD per million prompt tokens read from the provider's cache (default: the input price)")
	fs.StringVar(&m.upstream, "upstream-model", "", "model name at the provider (default: the id)")
}

// model is the model the flags describe.
func (m *modelFlags) model(id string) *keystorev1.Model {
	return &keystorev1.Model{Id: id, Provider: m.provider, UpstreamModel: m.upstream, InputPricePerMillionUsd: m.in, OutputPricePerMillionUsd: m.out,
		CacheWritePricePerMillionUsd: m.cacheWrite, CacheReadPricePerMillionUsd: m.cacheRead}
}

func (a *admin) modelsCreate() *cobra.Command {
	var mf modelFlags
	cmd := &cobra.Command{Use: "create <id>", Short: "Declare a model and its prices", Args: exactArgs(1),
		Example: "  keygate models create claude-sonnet-4-5 --provider anthropic --input-price 3 --output-price 15"}
	mf.register(cmd.Flags())
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.Keystore.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: mf.model(args[0])})
		if err != nil {
			return err
		}
		return a.showModels(r.GetModel())
	})
}

func (a *admin) modelsList() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the models and their prices", Args: exactArgs(0)}
	return a.verb(cmd, func(ctx context.Context, _ []string) error {
		r, err := a.c.Keystore.ListModels(ctx, &keystorev1.ListModelsRequest{})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showModels(r.GetModels()...)
	})
}

func (a *admin) modelsUpdate() *cobra.Command {
	var mf modelFlags
	cmd := &cobra.Command{Use: "update <id>", Short: "Change a model; only the flags given change", Args: exactArgs(1),
		Example: "  keygate models update claude-sonnet-4-5 --output-price 14"}
	mf.register(cmd.Flags())
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		mask, err := updateMask(cmd.Flags(), modelFields())
		if err != nil {
			return err
		}
		r, err := a.c.Keystore.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: args[0], Patch: mf.model(""), UpdateMask: mask})
		if err != nil {
			return err
		}
		return a.showModels(r.GetModel())
	})
}

func (a *admin) modelsDelete() *cobra.Command {
	cmd := &cobra.Command{Use: "delete <id>", Short: "Delete a model", Args: exactArgs(1)}
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		_, err := a.c.Keystore.DeleteModel(ctx, &keystorev1.DeleteModelRequest{Model: args[0]})
		return a.deleted("model "+args[0], err)
	})
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
