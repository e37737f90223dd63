package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

func (a *admin) keysCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "keys", Short: "Create, inspect, limit, rotate and revoke the API keys of a workspace"},
		a.keysCreate(), a.keysList(), a.keysGet(), a.keysUpdate(),
		a.keysSetEnabled("disable", "Disable a key at once (enable undoes it)"),
		a.keysSetEnabled("enable", "Enable a disabled key"),
		a.keysExpire(), a.keysRotate(), a.keysDelete(), a.keysExplain(), a.keysImport())
}

func (a *admin) keysCreate() *cobra.Command {
	var lf limitFlags
	var isAdmin bool
	var owner string
	cmd := &cobra.Command{Use: "create <name>", Short: "Create a key and show its secret, once", Args: exactArgs(1),
		Example: "  keygate keys create web --workspace acme --rpm 60 --tpd 100000 --budget 5.00 --expire 720h"}
	lf.register(cmd.Flags())
	cmd.Flags().BoolVar(&isAdmin, "admin", false, "create an admin (management) key")
	cmd.Flags().StringVar(&owner, "owner", "", "owner member (default: the caller)")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		k := &keystorev1.Key{Name: args[0], Owner: owner, Kind: keystorev1.KeyKind_KEY_KIND_STANDARD}
		if isAdmin {
			k.Kind = keystorev1.KeyKind_KEY_KIND_ADMIN
		}
		if _, err := lf.apply(k, time.Now()); err != nil {
			return err
		}
		r, err := a.c.Keystore.CreateKey(ctx, createKeyRequest(a.workspace, k))
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showSecret("secret", r.GetKey(), r.GetSecret())
	})
}

// createKeyRequest asks for a key with k's settings.
func createKeyRequest(workspace string, k *keystorev1.Key) *keystorev1.CreateKeyRequest {
	return &keystorev1.CreateKeyRequest{
		Workspace: workspace, Name: k.Name, Kind: k.Kind, Owner: k.Owner, ExpireTime: k.ExpireTime,
		AllowedModels: k.AllowedModels, Labels: k.Labels, GlobalLimits: k.GlobalLimits,
		ModelLimits: k.ModelLimits, TokenCap: k.TokenCap, Budget: k.Budget,
	}
}

// showSecret shows a key and, below it, its secret: the one time anyone
// sees it.
func (a *admin) showSecret(what string, k *keystorev1.Key, secret string) error {
	if err := a.showKeys(k); err != nil {
		return err
	}
	_, err := fmt.Fprintf(a.out, "\n%s (shown once, store it now): %s\n", what, secret)
	return err
}

func (a *admin) keysList() *cobra.Command {
	var owner, state string
	var legacy bool
	cmd := &cobra.Command{Use: "list", Short: "List a workspace's keys (never their secrets)", Args: exactArgs(0),
		Example: "  keygate keys list --workspace acme --state active\n  keygate keys list --workspace acme --legacy"}
	cmd.Flags().StringVar(&owner, "owner", "", "only the keys of this member")
	cmd.Flags().BoolVar(&legacy, "legacy", false, "only imported (legacy) keys, to be replaced")
	cmd.Flags().StringVar(&state, "state", "", "only keys in this state: active, disabled or expired")
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		req := &keystorev1.ListKeysRequest{Workspace: a.workspace, PageSize: 1000, Owner: owner, Legacy: legacy}
		if state != "" {
			v, ok := keystorev1.KeyState_value["KEY_STATE_"+strings.ToUpper(state)]
			if !ok {
				return fmt.Errorf("--state: want active, disabled or expired, got %q", state)
			}
			req.State = keystorev1.KeyState(v)
		}
		all, err := a.listKeys(ctx, req)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.ListKeysResponse{Keys: all})
		}
		return a.showKeys(all...)
	})
}

// listKeys reads every page of a listing.
func (a *admin) listKeys(ctx context.Context, req *keystorev1.ListKeysRequest) ([]*keystorev1.Key, error) {
	var all []*keystorev1.Key
	for {
		r, err := a.c.Keystore.ListKeys(ctx, req)
		if err != nil {
			return nil, err
		}
		all = append(all, r.GetKeys()...)
		if req.PageToken = r.GetNextPageToken(); req.PageToken == "" {
			return all, nil
		}
	}
}

func (a *admin) keysGet() *cobra.Command {
	cmd := &cobra.Command{Use: "get <key-id>", Short: "Show a key", Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		k, err := a.c.GetKey(ctx, args[0])
		if err != nil {
			return err
		}
		return a.showKeys(k)
	})
}

func (a *admin) keysUpdate() *cobra.Command {
	var lf limitFlags
	var rename string
	cmd := &cobra.Command{Use: "update <key-id>", Short: "Change a key's name or limits; only the flags given change", Args: exactArgs(1),
		Example: "  keygate keys update <key-id> --workspace acme --model mock-small --rpm 10"}
	lf.register(cmd.Flags())
	cmd.Flags().StringVar(&rename, "name", "", "new name")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		k, err := a.c.GetKey(ctx, args[0])
		if err != nil {
			return err
		}
		paths, err := lf.apply(k, time.Now())
		if err != nil {
			return err
		}
		if rename != "" {
			k.Name = rename
			paths = append(paths, "name")
		}
		if len(paths) == 0 {
			return errors.New("update: nothing to change; pass --name, --rpm, --budget, ...")
		}
		r, err := a.c.Keystore.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{
			Workspace: a.workspace, Key: args[0], Patch: k, Etag: k.GetEtag(), UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
		})
		if err != nil {
			return err
		}
		return a.showKeys(r.GetKey())
	})
}

// keysSetEnabled is keys disable or keys enable.
func (a *admin) keysSetEnabled(verb, short string) *cobra.Command {
	cmd := &cobra.Command{Use: verb + " <key-id>", Short: short, Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		if err := a.c.SetEnabled(ctx, args[0], verb == "enable"); err != nil {
			return err
		}
		k, err := a.c.GetKey(ctx, args[0])
		if err != nil {
			return err
		}
		return a.showKeys(k)
	})
}

func (a *admin) keysExpire() *cobra.Command {
	cmd := &cobra.Command{Use: "expire <key-id>", Short: "Expire a key now, for good", Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.Keystore.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: a.workspace, Key: args[0]})
		if err != nil {
			return err
		}
		return a.showKeys(r.GetKey())
	})
}

func (a *admin) keysRotate() *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{Use: "rotate <key-id>", Short: "Give a key a new secret and show it, once", Args: exactArgs(1),
		Example: "  keygate keys rotate <key-id> --workspace acme --grace 24h"}
	cmd.Flags().DurationVar(&grace, "grace", 0, "how long the old secret keeps working")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		var until *timestamppb.Timestamp
		if grace > 0 {
			until = timestamppb.New(time.Now().Add(grace))
		}
		k, secret, err := a.c.Rotate(ctx, args[0], until)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.RotateKeyResponse{Key: k, Secret: secret})
		}
		return a.showSecret("new secret", k, secret)
	})
}

func (a *admin) keysDelete() *cobra.Command {
	cmd := &cobra.Command{Use: "delete <key-id>", Short: "Delete a key and its secret", Args: exactArgs(1)}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		return a.deleted(args[0], a.c.Delete(ctx, args[0]))
	})
}

func (a *admin) showKeys(keys ...*keystorev1.Key) error {
	if a.output == "json" {
		if len(keys) == 1 {
			return a.json(keys[0])
		}
		return a.json(&keystorev1.ListKeysResponse{Keys: keys})
	}
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		l := k.GetGlobalLimits()
		exp := "-"
		if k.GetExpireTime() != nil {
			exp = k.GetExpireTime().AsTime().UTC().Format(time.RFC3339)
		}
		rows = append(rows, []string{
			k.GetId(), k.GetName(), keyKind(k),
			strings.TrimPrefix(k.GetState().String(), "KEY_STATE_"), k.GetPartialKey(), k.GetOwner(),
			fmt.Sprintf("%d/%d/%d/%d", l.GetRpm(), l.GetRpd(), l.GetTpm(), l.GetTpd()), exp,
		})
	}
	return a.table("ID\tNAME\tKIND\tSTATE\tKEY\tOWNER\tRPM/RPD/TPM/TPD\tEXPIRES", rows)
}

func (a *admin) keysImport() *cobra.Command {
	var file string
	cmd := &cobra.Command{Use: "import --file <keys.json>", Short: "Import the keys of the system keygate replaces, by the SHA-256 of their secrets",
		Args: exactArgs(0),
		Long: `Import the keys of the system keygate replaces, by the SHA-256 of their
secrets (never the secrets): they keep working at the edge, marked legacy,
and may carry limits and budgets like any key. The file holds
{"keys": [{"name": "...", "secretSha256": "<64 hex>", "partialKey": "sk-...abcd",
"owner": "...", "globalLimits": {"rpm": 60}, ...}]}.`,
		Example: "  keygate keys import --file legacy.json --workspace acme"}
	cmd.Flags().StringVar(&file, "file", "", "JSON file of the keys to import")
	return a.inWorkspace(cmd, func(ctx context.Context, _ []string) error {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		req := &keystorev1.ImportKeysRequest{}
		if err := protojson.Unmarshal(b, req); err != nil {
			return fmt.Errorf("--file %s: %w", file, err)
		}
		keys, err := a.c.ImportKeys(ctx, req.GetKeys()...)
		if err != nil {
			return err
		}
		return a.showKeys(keys...)
	})
}

// keyKind is STANDARD or ADMIN, marked when the key was imported.
func keyKind(k *keystorev1.Key) string {
	s := strings.TrimPrefix(k.GetKind().String(), "KEY_KIND_")
	if k.GetLegacy() {
		s += " (legacy)"
	}
	return s
}
