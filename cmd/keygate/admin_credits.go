package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/limitkey"
)

func (a *admin) creditsCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "credits", Short: "Show and top up a workspace's prepaid credits"},
		a.creditsShow(), a.creditsEntry("add", keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_TOP_UP),
		a.creditsEntry("adjust", keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_ADJUSTMENT), a.creditsHistory())
}

func (a *admin) creditsShow() *cobra.Command {
	cmd := &cobra.Command{Use: "show", Short: "Show granted, spent and balance", Args: exactArgs(0)}
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		r, err := a.c.Credits(ctx)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.table("GRANTED\tSPENT\tBALANCE", [][]string{{r.GetGrantedUsd(), r.GetSpentUsd(), r.GetBalanceUsd()}})
	})
}

// creditsEntry is credits add (a top-up) or credits adjust (signed).
func (a *admin) creditsEntry(verb string, kind keystorev1.CreditEntryKind) *cobra.Command {
	short, example := "Top up the credits; <id> makes it idempotent", "  keygate credits add invoice-2026-12 250.00 --workspace acme"
	if kind == keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_ADJUSTMENT {
		short, example = "Correct the credits by a signed amount", "  keygate credits adjust refund-17 -- -12.50 --workspace acme"
	}
	var note string
	cmd := &cobra.Command{Use: verb + " <id> <amount-usd>", Short: short, Args: exactArgs(2), Example: example}
	cmd.Flags().StringVar(&note, "note", "", "why, for the history")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		add := a.c.AddCredits
		if kind == keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_ADJUSTMENT {
			add = a.c.AdjustCredits
		}
		e, replayed, err := add(ctx, args[0], args[1], note)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.AddCreditEntryResponse{Entry: e, Replayed: replayed})
		}
		if replayed {
			fmt.Fprintf(a.out, "entry %s was already recorded; nothing changed\n", e.GetId())
		}
		return a.showCreditEntries(e)
	})
}

func (a *admin) creditsHistory() *cobra.Command {
	cmd := &cobra.Command{Use: "history", Short: "List the credit entries, newest first", Args: exactArgs(0)}
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		es, err := a.c.CreditEntries(ctx)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.ListCreditEntriesResponse{Entries: es})
		}
		return a.showCreditEntries(es...)
	})
}

func (a *admin) showCreditEntries(es ...*keystorev1.CreditEntry) error {
	rows := make([][]string, 0, len(es))
	for _, e := range es {
		rows = append(rows, []string{e.GetCreateTime().AsTime().UTC().Format(time.RFC3339), e.GetId(),
			strings.ToLower(strings.TrimPrefix(e.GetKind().String(), "CREDIT_ENTRY_KIND_")), e.GetAmountUsd(), e.GetActor(), e.GetNote()})
	}
	return a.table("TIME\tID\tKIND\tAMOUNT\tACTOR\tNOTE", rows)
}

func (a *admin) webhooksCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "webhooks", Short: "Manage the webhooks that receive a workspace's alerts"},
		a.webhooksCreate(), a.webhooksList(), a.webhooksRotate(), a.webhooksTest(), a.webhooksDelete())
}

func (a *admin) webhooksCreate() *cobra.Command {
	var desc string
	cmd := &cobra.Command{Use: "create <url>", Short: "Add a webhook and show its signing secret, once", Args: exactArgs(1),
		Example: "  keygate webhooks create https://hooks.example.com/keygate --workspace acme"}
	cmd.Flags().StringVar(&desc, "description", "", "what it is for")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		w, secret, err := a.c.CreateWebhook(ctx, args[0], desc)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.CreateWebhookResponse{Webhook: w, Secret: secret})
		}
		return a.showWebhookSecret(w, secret)
	})
}

func (a *admin) showWebhookSecret(w *keystorev1.Webhook, secret string) error {
	if err := a.showWebhooks(w); err != nil {
		return err
	}
	_, err := fmt.Fprintf(a.out, "\nsigning secret (shown once, store it now): %s\n", secret)
	return err
}

func (a *admin) webhooksList() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the webhooks (never their secrets)", Args: exactArgs(0)}
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		ws, err := a.c.Webhooks(ctx)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.ListWebhooksResponse{Webhooks: ws})
		}
		return a.showWebhooks(ws...)
	})
}

func (a *admin) webhooksRotate() *cobra.Command {
	cmd := &cobra.Command{Use: "rotate-secret <webhook-id>", Short: "Give a webhook a new signing secret and show it, once", Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		secret, err := a.c.RotateWebhookSecret(ctx, args[0])
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.RotateWebhookSecretResponse{Secret: secret})
		}
		_, err = fmt.Fprintf(a.out, "new signing secret (shown once, store it now): %s\n", secret)
		return err
	})
}

func (a *admin) webhooksTest() *cobra.Command {
	cmd := &cobra.Command{Use: "test <webhook-id>", Short: "Send a sample alert to a webhook now", Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.TestWebhook(ctx, args[0])
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		if !r.GetDelivered() {
			return fmt.Errorf("not delivered (HTTP %d): %s", r.GetStatusCode(), r.GetError())
		}
		_, err = fmt.Fprintf(a.out, "delivered (HTTP %d)\n", r.GetStatusCode())
		return err
	})
}

func (a *admin) webhooksDelete() *cobra.Command {
	cmd := &cobra.Command{Use: "delete <webhook-id>", Short: "Remove a webhook", Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		return a.deleted(args[0], a.c.DeleteWebhook(ctx, args[0]))
	})
}

func (a *admin) showWebhooks(ws ...*keystorev1.Webhook) error {
	rows := make([][]string, 0, len(ws))
	for _, w := range ws {
		rows = append(rows, []string{w.GetId(), w.GetUrl(), w.GetDescription(), w.GetSecretTime().AsTime().UTC().Format(time.RFC3339)})
	}
	return a.table("ID\tURL\tDESCRIPTION\tSECRET SINCE", rows)
}

func (a *admin) alertsCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "alerts", Short: "List the threshold alerts a workspace raised and their delivery"}, a.alertsList())
}

func (a *admin) alertsList() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List alerts, newest first", Args: exactArgs(0)}
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		as, err := a.c.Alerts(ctx)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.ListAlertsResponse{Alerts: as})
		}
		rows := make([][]string, 0, len(as))
		for _, x := range as {
			level := limitkey.LevelName(x.GetLevel())
			if x.GetLevel() != typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE {
				level += "/" + x.GetLevelId()
			}
			limit := x.GetLimit()
			if x.GetModel() != "" {
				limit += ":" + x.GetModel()
			}
			rows = append(rows, []string{x.GetTime().AsTime().UTC().Format(time.RFC3339), level, limit,
				strconv.Itoa(int(x.GetThresholdPercent())) + "%", x.GetUsed() + " / " + x.GetLimitValue(), x.GetPeriod(),
				strings.ToLower(strings.TrimPrefix(x.GetDeliveryState().String(), "ALERT_DELIVERY_STATE_")), strconv.Itoa(int(x.GetAttempts()))})
		}
		return a.table("TIME\tLEVEL\tLIMIT\tTHRESHOLD\tUSED\tPERIOD\tDELIVERY\tATTEMPTS", rows)
	})
}
