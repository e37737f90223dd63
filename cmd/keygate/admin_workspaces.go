package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

func (a *admin) workspacesCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "workspaces", Short: "Create, show and list workspaces, and set their members"},
		a.workspacesCreate(), a.workspacesGet(), a.workspacesList(), a.workspacesSet(), a.workspacesAddMember())
}

func (a *admin) workspacesCreate() *cobra.Command {
	var name string
	var maxKeys int
	cmd := &cobra.Command{Use: "create <id>", Short: "Create a workspace", Args: exactArgs(1),
		Example: "  keygate workspaces create acme --name Acme --max-keys 50"}
	cmd.Flags().StringVar(&name, "name", "", "display name")
	cmd.Flags().IntVar(&maxKeys, "max-keys", 0, "most keys the workspace may hold (0: default 10)")
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		w := &keystorev1.Workspace{Id: args[0], Name: name, MaxKeys: int32(maxKeys)}
		r, err := a.c.Keystore.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: w})
		if err != nil {
			return err
		}
		return a.showWorkspaces(r.GetWorkspace())
	})
}

func (a *admin) workspacesGet() *cobra.Command {
	cmd := &cobra.Command{Use: "get <id>", Short: "Show a workspace", Args: exactArgs(1)}
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.Keystore.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: args[0]})
		if err != nil {
			return err
		}
		return a.showWorkspaces(r.GetWorkspace())
	})
}

func (a *admin) workspacesList() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the workspaces the credential may see", Args: exactArgs(0)}
	return a.verb(cmd, func(ctx context.Context, _ []string) error {
		r, err := a.c.Keystore.ListWorkspaces(ctx, &keystorev1.ListWorkspacesRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showWorkspaces(r.GetWorkspaces()...)
	})
}

// memberRoles are the roles a member may be given, by the name users write.
func memberRoles() map[string]keystorev1.Role {
	return map[string]keystorev1.Role{"owner": keystorev1.Role_ROLE_OWNER, "admin": keystorev1.Role_ROLE_ADMIN, "member": keystorev1.Role_ROLE_MEMBER}
}

func (a *admin) workspacesAddMember() *cobra.Command {
	cmd := &cobra.Command{Use: "add-member <workspace> <member> owner|admin|member", Short: "Give a member a role in a workspace",
		Args: exactArgs(3), ValidArgsFunction: completeRole}
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		role := memberRoles()[args[2]]
		if role == 0 {
			return errors.New("usage: " + cmd.UseLine())
		}
		r, err := a.c.Keystore.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: args[0], Member: args[1], Role: role})
		if err != nil {
			return err
		}
		return a.json(r.GetMember())
	})
}

// completeRole completes the role, the third argument of add-member.
func completeRole(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) != 2 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return []cobra.Completion{"owner", "admin", "member"}, cobra.ShellCompDirectiveNoFileComp
}

func (a *admin) showWorkspaces(ws ...*keystorev1.Workspace) error {
	if a.output == "json" && len(ws) == 1 {
		return a.json(ws[0])
	}
	rows := make([][]string, 0, len(ws))
	for _, w := range ws {
		alerts := make([]string, 0, len(w.GetAlertThresholds()))
		for _, t := range w.GetAlertThresholds() {
			alerts = append(alerts, strconv.Itoa(int(t))+"%")
		}
		editors := "key-owners"
		if w.GetLimitEditors() == keystorev1.LimitEditors_LIMIT_EDITORS_ADMINS {
			editors = "admins"
		}
		rows = append(rows, []string{w.GetId(), w.GetName(), strconv.Itoa(int(w.GetKeyCount())), strconv.Itoa(int(w.GetMaxKeys())),
			orDash(w.GetCreditsGrantedUsd()), orDash(strings.Join(alerts, ",")), editors})
	}
	return a.table("ID\tNAME\tKEYS\tMAX\tCREDITS GRANTED\tALERTS\tLIMIT EDITORS", rows)
}

// limitEditors are the limit_editors policies, by the name users write.
func limitEditors() map[string]keystorev1.LimitEditors {
	return map[string]keystorev1.LimitEditors{
		"key-owners": keystorev1.LimitEditors_LIMIT_EDITORS_KEY_OWNERS, "admins": keystorev1.LimitEditors_LIMIT_EDITORS_ADMINS,
	}
}

func (a *admin) workspacesSet() *cobra.Command {
	var thresholds, editors string
	var logCap int64
	cmd := &cobra.Command{Use: "set <id>", Short: "Change a workspace's alert thresholds, limit policy or request-log cap", Args: exactArgs(1),
		Example: "  keygate workspaces set acme --alert-thresholds 50,80,100 --limit-editors admins --request-log-cap 100000"}
	cmd.Flags().StringVar(&thresholds, "alert-thresholds", "", "comma-separated percentages of any limit that raise an alert (\"\" with the flag: none)")
	cmd.Flags().StringVar(&editors, "limit-editors", "", "who may change a key's limits: key-owners or admins")
	cmd.Flags().Int64Var(&logCap, "request-log-cap", 0, "most request-log records the workspace keeps (0: the global cap)")
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		patch, paths := &keystorev1.Workspace{}, []string{}
		fs := cmd.Flags()
		if fs.Changed("alert-thresholds") {
			for _, t := range strings.FieldsFunc(thresholds, func(r rune) bool { return r == ',' }) {
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(t), "%"), 10, 32)
				if err != nil {
					return fmt.Errorf("--alert-thresholds: %q is not a percentage", t)
				}
				patch.AlertThresholds = append(patch.AlertThresholds, int32(n))
			}
			paths = append(paths, "alert_thresholds")
		}
		if fs.Changed("limit-editors") {
			e, ok := limitEditors()[editors]
			if !ok {
				return fmt.Errorf("--limit-editors: want key-owners or admins, got %q", editors)
			}
			patch.LimitEditors, paths = e, append(paths, "limit_editors")
		}
		if fs.Changed("request-log-cap") {
			patch.RequestLogCap, paths = logCap, append(paths, "request_log_cap")
		}
		if len(paths) == 0 {
			return errors.New("set: nothing to change; pass --alert-thresholds, --limit-editors or --request-log-cap")
		}
		r, err := a.c.Keystore.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{
			Workspace: args[0], Patch: patch, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		if err != nil {
			return err
		}
		return a.showWorkspaces(r.GetWorkspace())
	})
}
