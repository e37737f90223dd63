package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

func (a *admin) auditCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "audit", Short: "Read a workspace's audit log"}, a.auditList())
}

func (a *admin) auditList() *cobra.Command {
	var key string
	var limit int
	cmd := &cobra.Command{Use: "list", Short: "List who changed what in a workspace", Args: exactArgs(0),
		Example: "  keygate audit list --workspace acme --key <key-id>"}
	cmd.Flags().StringVar(&key, "key", "", "only events about this key")
	cmd.Flags().IntVar(&limit, "limit", 50, "most events to show")
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		r, err := a.c.Keystore.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: a.workspace, Key: key, PageSize: int32(limit)})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetEvents()))
		for _, e := range r.GetEvents() {
			rows = append(rows, []string{e.GetTime().AsTime().UTC().Format(time.RFC3339), e.GetAction(), e.GetKey(), e.GetActor(), e.GetCredential()})
		}
		return a.table("TIME\tACTION\tKEY\tACTOR\tCREDENTIAL", rows)
	})
}
