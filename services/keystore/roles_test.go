package keystore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

// TestRoleMatrix runs every action as every kind of caller.
func TestRoleMatrix(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	secrets := e.workspace(t, "acme", 1000, map[string]keystorev1.Role{
		"alice": keystorev1.Role_ROLE_OWNER, "bob": keystorev1.Role_ROLE_ADMIN,
		"carol": keystorev1.Role_ROLE_MEMBER, "dave": keystorev1.Role_ROLE_MEMBER,
	})
	unknownAdmin, _ := keyformat.New(keyformat.Admin, keyformat.NewID())
	callers := []struct {
		name, subject, token string
	}{
		{"root", "root", rootToken},
		{"owner", "alice", secrets["alice"]},
		{"admin", "bob", secrets["bob"]},
		{"member", "carol", secrets["carol"]},
		{"anonymous", "", ""},
		{"unknown key", "", unknownAdmin},
	}
	n := 0
	fresh := func() string { n++; return fmt.Sprintf("x%d", n) }
	// keyOf makes a standard key owned by owner, as root.
	keyOf := func(t *testing.T, owner string) string {
		k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh(), Owner: owner})
		return k.GetId()
	}
	member := func(t *testing.T, role keystorev1.Role) string {
		m := fresh()
		_, err := e.client.SetMember(e.root(t), &keystorev1.SetMemberRequest{Workspace: "acme", Member: m, Role: role})
		require.NoError(t, err)
		return m
	}
	type action func(t *testing.T, ctx context.Context, self string) error
	const (
		ok   = codes.OK
		deny = codes.PermissionDenied
	)
	actions := []struct {
		name                        string
		do                          action
		root, owner, admin, member_ codes.Code
	}{
		{"get workspace", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
			return err
		}, ok, ok, ok, ok},
		{"list workspaces", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.ListWorkspaces(ctx, &keystorev1.ListWorkspacesRequest{})
			return err
		}, ok, ok, ok, ok},
		{"update workspace", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
				Patch: &keystorev1.Workspace{Name: "Acme"}, UpdateMask: mask("name")})
			return err
		}, ok, ok, deny, deny},
		{"create workspace", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: fresh()}})
			return err
		}, ok, deny, deny, deny},
		{"list members", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.ListMembers(ctx, &keystorev1.ListMembersRequest{Workspace: "acme"})
			return err
		}, ok, ok, ok, ok},
		{"add plain member", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: "acme", Member: fresh(), Role: keystorev1.Role_ROLE_MEMBER})
			return err
		}, ok, ok, ok, deny},
		{"add owner", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: "acme", Member: fresh(), Role: keystorev1.Role_ROLE_OWNER})
			return err
		}, ok, ok, deny, deny},
		{"remove plain member", func(t *testing.T, ctx context.Context, _ string) error {
			m := member(t, keystorev1.Role_ROLE_MEMBER)
			_, err := e.client.RemoveMember(ctx, &keystorev1.RemoveMemberRequest{Workspace: "acme", Member: m})
			return err
		}, ok, ok, ok, deny},
		{"remove admin", func(t *testing.T, ctx context.Context, _ string) error {
			m := member(t, keystorev1.Role_ROLE_ADMIN)
			_, err := e.client.RemoveMember(ctx, &keystorev1.RemoveMemberRequest{Workspace: "acme", Member: m})
			return err
		}, ok, ok, deny, deny},
		{"create own standard key", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh()})
			return err
		}, ok, ok, ok, ok},
		{"create key for another member", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh(), Owner: "dave"})
			return err
		}, ok, ok, ok, deny},
		{"create admin key", func(t *testing.T, ctx context.Context, self string) error {
			owner := self
			if self == "root" {
				owner = "dave"
			}
			_, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh(), Owner: owner, Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
			return err
		}, ok, ok, ok, deny},
		{"get own key", func(t *testing.T, ctx context.Context, self string) error {
			_, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: keyOf(t, self)})
			return err
		}, ok, ok, ok, ok},
		{"get another's key", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: keyOf(t, "dave")})
			return err
		}, ok, ok, ok, deny},
		{"list keys", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: "acme"})
			return err
		}, ok, ok, ok, ok},
		{"update own key", func(t *testing.T, ctx context.Context, self string) error {
			_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: keyOf(t, self),
				Patch: &keystorev1.Key{Enabled: false}, UpdateMask: mask("enabled")})
			return err
		}, ok, ok, ok, ok},
		{"update another's key", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: keyOf(t, "dave"),
				Patch: &keystorev1.Key{Enabled: false}, UpdateMask: mask("enabled")})
			return err
		}, ok, ok, ok, deny},
		{"update own admin key", func(t *testing.T, ctx context.Context, self string) error {
			owner := self
			if self == "root" {
				owner = "dave"
			}
			k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh(), Owner: owner, Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
			_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
				Patch: &keystorev1.Key{Labels: map[string]string{"a": "b"}}, UpdateMask: mask("labels")})
			return err
		}, ok, ok, ok, deny},
		{"rotate own key", func(t *testing.T, ctx context.Context, self string) error {
			_, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: keyOf(t, self)})
			return err
		}, ok, ok, ok, ok},
		{"rotate another's key", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: keyOf(t, "dave")})
			return err
		}, ok, ok, ok, deny},
		{"expire own key", func(t *testing.T, ctx context.Context, self string) error {
			_, err := e.client.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: keyOf(t, self)})
			return err
		}, ok, ok, ok, ok},
		{"expire another's key", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: keyOf(t, "dave")})
			return err
		}, ok, ok, ok, deny},
		{"delete own key", func(t *testing.T, ctx context.Context, self string) error {
			_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: keyOf(t, self)})
			return err
		}, ok, ok, ok, ok},
		{"delete another's key", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: keyOf(t, "dave")})
			return err
		}, ok, ok, ok, deny},
		{"list audit", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme"})
			return err
		}, ok, ok, ok, deny},
		{"list models", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.ListModels(ctx, &keystorev1.ListModelsRequest{})
			return err
		}, ok, ok, ok, ok},
		{"create model", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: &keystorev1.Model{
				Id: fresh(), Provider: "mock", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "1"}})
			return err
		}, ok, deny, deny, deny},
		{"create provider", func(t *testing.T, ctx context.Context, _ string) error {
			_, err := e.client.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: &keystorev1.Provider{Id: fresh(), BaseUrl: "mock"}})
			return err
		}, ok, deny, deny, deny},
		{"watch key changes", func(t *testing.T, ctx context.Context, _ string) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			st, err := e.client.WatchKeyChanges(ctx, &keystorev1.WatchKeyChangesRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}, ok, deny, deny, deny},
	}
	for _, a := range actions {
		for _, c := range callers {
			want := map[string]codes.Code{"root": a.root, "owner": a.owner, "admin": a.admin, "member": a.member_}[c.name]
			if c.token == "" || c.name == "unknown key" {
				want = codes.Unauthenticated
			}
			t.Run(a.name+"/"+c.name, func(t *testing.T) {
				ctx := t.Context()
				if c.token != "" {
					ctx = as(ctx, c.token)
				}
				self := c.subject
				if self == "" {
					self = "dave"
				}
				requireCode(t, want, a.do(t, ctx, self))
			})
		}
	}

	t.Run("member lists only own keys", func(t *testing.T) {
		list, err := e.client.ListKeys(as(t.Context(), secrets["carol"]), &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: 1000})
		require.NoError(t, err)
		require.NotEmpty(t, list.GetKeys())
		for _, k := range list.GetKeys() {
			require.Equal(t, "carol", k.GetOwner())
		}
	})
	t.Run("disabled admin key stops working", func(t *testing.T) {
		k, secret := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh(), Owner: "alice", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
		_, err := e.client.GetWorkspace(as(t.Context(), secret), &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
		require.NoError(t, err)
		_, err = e.client.UpdateKey(e.root(t), &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch: &keystorev1.Key{}, UpdateMask: mask("enabled")})
		require.NoError(t, err)
		_, err = e.client.GetWorkspace(as(t.Context(), secret), &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
		requireCode(t, codes.Unauthenticated, err)
	})
	t.Run("standard key is no management credential", func(t *testing.T) {
		_, secret := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh(), Owner: "alice"})
		_, err := e.client.GetWorkspace(as(t.Context(), secret), &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
		requireCode(t, codes.Unauthenticated, err)
	})
	t.Run("audit names the acting member", func(t *testing.T) {
		ctx := as(t.Context(), secrets["bob"])
		k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fresh()})
		ev, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme", Key: k.GetId()})
		require.NoError(t, err)
		require.Equal(t, "bob", ev.GetEvents()[0].GetActor())
		require.Equal(t, "admin_key", ev.GetEvents()[0].GetCredential())
		require.Equal(t, "bob", k.GetOwner())
	})
}

// TestCrossWorkspaceNotFound: another workspace's objects look missing.
func TestCrossWorkspaceNotFound(t *testing.T) {
	e := newEnv(t)
	acme := e.workspace(t, "acme", 0, map[string]keystorev1.Role{"alice": keystorev1.Role_ROLE_OWNER})
	e.workspace(t, "beta", 0, map[string]keystorev1.Role{"bert": keystorev1.Role_ROLE_OWNER})
	betaKey, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "beta", Name: "b", Owner: "bert"})
	ctx := as(t.Context(), acme["alice"])
	missing := keyformat.NewID()

	// Each call, aimed at beta and at a workspace or key that does not
	// exist, must fail identically (modulo the name asked for).
	calls := []struct {
		name string
		do   func(ws, key string) error
	}{
		{"get workspace", func(ws, _ string) error {
			_, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: ws})
			return err
		}},
		{"list keys", func(ws, _ string) error {
			_, err := e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: ws})
			return err
		}},
		{"list members", func(ws, _ string) error {
			_, err := e.client.ListMembers(ctx, &keystorev1.ListMembersRequest{Workspace: ws})
			return err
		}},
		{"set member", func(ws, _ string) error {
			_, err := e.client.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: ws, Member: "eve", Role: keystorev1.Role_ROLE_OWNER})
			return err
		}},
		{"create key", func(ws, _ string) error {
			_, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: ws, Name: "x"})
			return err
		}},
		{"audit", func(ws, _ string) error {
			_, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: ws})
			return err
		}},
		{"get key in beta", func(ws, key string) error {
			_, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: ws, Key: key})
			return err
		}},
		{"delete key in beta", func(ws, key string) error {
			_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: ws, Key: key})
			return err
		}},
		{"get beta's key via acme", func(_, key string) error {
			_, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: key})
			return err
		}},
		{"rotate beta's key via acme", func(_, key string) error {
			_, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: key})
			return err
		}},
		{"expire beta's key via acme", func(_, key string) error {
			_, err := e.client.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: key})
			return err
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			real := c.do("beta", betaKey.GetId())
			ghost := c.do("ghost", missing)
			requireCode(t, codes.NotFound, real)
			requireCode(t, codes.NotFound, ghost)
			norm := strings.NewReplacer("beta", "W", "ghost", "W", betaKey.GetId(), "K", missing, "K")
			require.Equal(t, norm.Replace(status.Convert(ghost).Message()), norm.Replace(status.Convert(real).Message()))
		})
	}
	got, err := e.client.GetKey(e.root(t), &keystorev1.GetKeyRequest{Workspace: "beta", Key: betaKey.GetId()})
	require.NoError(t, err)
	require.Equal(t, betaKey.GetEtag(), got.GetKey().GetEtag(), "beta's key is untouched")
}

// TestMemberOwnAdminKey: a member's admin key is managed by owners and
// admins; the member who owns it is refused with words that fit.
func TestMemberOwnAdminKey(t *testing.T) {
	e := newEnv(t)
	secrets := e.workspace(t, "acme", 10, map[string]keystorev1.Role{
		"alice": keystorev1.Role_ROLE_OWNER, "carol": keystorev1.Role_ROLE_MEMBER,
	})
	k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "carols-admin",
		Owner: "carol", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
	_, err := e.client.GetKey(as(t.Context(), secrets["carol"]), &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	requireCode(t, codes.PermissionDenied, err)
	require.ErrorContains(t, err, "a member's own included")
	_, err = e.client.GetKey(as(t.Context(), secrets["alice"]), &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
}
