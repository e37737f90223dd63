package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

func (a *admin) usageCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "usage", Short: "Show what a workspace's keys used and spent"},
		a.usageGet(), a.usageList(), a.usageSeries(), a.usageRequests())
}

// dayFlags are --from and --to, the UTC days a report covers.
func dayFlags(cmd *cobra.Command, from, to *string) {
	cmd.Flags().StringVar(from, "from", "", "first UTC day, YYYY-MM-DD (default 30 days ago)")
	cmd.Flags().StringVar(to, "to", "", "last UTC day, YYYY-MM-DD (default today)")
}

func (a *admin) usageGet() *cobra.Command {
	var model string
	cmd := &cobra.Command{Use: "get <key-id>", Short: "Show a key's use today against its limits", Args: exactArgs(1)}
	cmd.Flags().StringVar(&model, "model", "", "only this model")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		u, err := a.c.GetUsage(ctx, args[0], model)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(u)
		}
		return a.table("DAY\tREQUESTS\tREQ LIMIT\tTOKENS\tTOKEN LIMIT\tSPEND\tBUDGET", [][]string{{
			u.GetDay(), strconv.FormatInt(u.GetRequestsToday(), 10), strconv.FormatInt(u.GetRequestLimitToday(), 10),
			strconv.FormatInt(u.GetTokensToday(), 10), strconv.FormatInt(u.GetTokenLimitToday(), 10), u.GetSpendUsd(), u.GetBudgetUsd(),
		}})
	})
}

func (a *admin) usageList() *cobra.Command {
	var groupBy, from, to string
	cmd := &cobra.Command{Use: "list", Short: "Sum a workspace's use by key, model or owner", Args: exactArgs(0),
		Example: "  keygate usage list --workspace acme --group-by model --from 2026-11-01"}
	cmd.Flags().StringVar(&groupBy, "group-by", "key", "key, model or owner")
	dayFlags(cmd, &from, &to)
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		g, ok := usagev1.GroupBy_value["GROUP_BY_"+strings.ToUpper(groupBy)]
		if !ok || g == 0 {
			return fmt.Errorf("--group-by: want key, model or owner, got %q", groupBy)
		}
		r, err := a.c.Usage.ListUsage(ctx, &usagev1.ListUsageRequest{Workspace: a.workspace, GroupBy: usagev1.GroupBy(g), StartDate: from, EndDate: to})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetRows()))
		for _, x := range r.GetRows() {
			rows = append(rows, []string{x.GetGroup(), strconv.FormatInt(x.GetRequests(), 10), strconv.FormatInt(x.GetPromptTokens(), 10), strconv.FormatInt(x.GetCompletionTokens(), 10), x.GetSpendUsd()})
		}
		return a.table("GROUP\tREQUESTS\tPROMPT\tCOMPLETION\tSPEND", rows)
	})
}

func (a *admin) usageSeries() *cobra.Command {
	var model, from, to string
	cmd := &cobra.Command{Use: "series <key-id>", Short: "Show a key's use day by day", Args: exactArgs(1)}
	cmd.Flags().StringVar(&model, "model", "", "only this model")
	dayFlags(cmd, &from, &to)
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.Usage.GetUsageSeries(ctx, &usagev1.GetUsageSeriesRequest{Workspace: a.workspace, Key: args[0], Model: model, StartDate: from, EndDate: to})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetPoints()))
		for _, p := range r.GetPoints() {
			rows = append(rows, []string{p.GetDay(), strconv.FormatInt(p.GetRequests(), 10), strconv.FormatInt(p.GetPromptTokens(), 10), strconv.FormatInt(p.GetCompletionTokens(), 10), p.GetSpendUsd()})
		}
		return a.table("DAY\tREQUESTS\tPROMPT\tCOMPLETION\tSPEND", rows)
	})
}

func (a *admin) usageRequests() *cobra.Command {
	var key, model string
	var limit int
	cmd := &cobra.Command{Use: "requests", Short: "List a workspace's requests, one by one", Args: exactArgs(0)}
	cmd.Flags().StringVar(&key, "key", "", "only this key")
	cmd.Flags().StringVar(&model, "model", "", "only this model")
	cmd.Flags().IntVar(&limit, "limit", 50, "most to show")
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		r, err := a.c.Usage.ListRequests(ctx, &usagev1.ListRequestsRequest{Workspace: a.workspace, Key: key, Model: model, PageSize: int32(limit)})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetRequests()))
		for _, x := range r.GetRequests() {
			rows = append(rows, []string{x.GetTime().AsTime().UTC().Format(time.RFC3339), x.GetKey(), x.GetOwner(), x.GetModel(),
				strconv.FormatInt(x.GetPromptTokens()+x.GetCompletionTokens(), 10), x.GetCostUsd(),
				strings.TrimPrefix(x.GetStatus().String(), "REQUEST_STATUS_"), x.GetLatency().AsDuration().String()})
		}
		return a.table("TIME\tKEY\tOWNER\tMODEL\tTOKENS\tCOST\tSTATUS\tLATENCY", rows)
	})
}
