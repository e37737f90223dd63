package keystore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/oidc"
	"github.com/keygate/keygate/internal/oidc/oidctest"
	"github.com/keygate/keygate/services/keystore"
)

// TestOIDCSignIn: a console user signed in with SSO acts as the member its
// ID token names, with that member's role in each workspace it calls.
func TestOIDCSignIn(t *testing.T) {
	iss := oidctest.New(t, "https://sso.example", "console")
	var v *oidc.Verifier
	e := newEnv(t, func(c *keystore.Config) {
		var err error
		v, err = oidc.New(oidc.Config{Issuer: iss.URL, Audience: "console", JWKSFile: iss.WriteJWKS(t), Clock: c.Clock})
		require.NoError(t, err)
		c.IDTokens = v
	})
	e.seedRegistry(t)
	e.workspace(t, "acme", 100, map[string]keystorev1.Role{"alice@example.com": keystorev1.Role_ROLE_ADMIN, "carol@example.com": keystorev1.Role_ROLE_MEMBER})
	e.workspace(t, "other", 100, map[string]keystorev1.Role{"bob@example.com": keystorev1.Role_ROLE_OWNER})

	now := e.clock.Now()
	alice := as(t.Context(), iss.Token("alice@example.com", now, nil))
	carol := as(t.Context(), iss.Token("carol@example.com", now, nil))

	// An admin manages every key and may create admin keys.
	k, _ := e.createKey(t, alice, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "sso-made", Owner: "carol@example.com"})
	require.Equal(t, "alice@example.com", k.GetCreator())
	_, err := e.client.CreateKey(alice, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "sso-admin", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
	require.NoError(t, err)

	// A member manages only their own standard keys.
	_, err = e.client.CreateKey(carol, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "carol-admin", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.GetKey(carol, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)

	// GetWorkspace tells services acting for the caller who that is.
	gw, err := e.client.GetWorkspace(carol, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Equal(t, "carol@example.com", gw.GetCaller())
	require.Equal(t, keystorev1.Role_ROLE_MEMBER, gw.GetCallerRole())
	gw, err = e.client.GetWorkspace(e.root(t), &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Equal(t, keystorev1.Role_ROLE_OWNER, gw.GetCallerRole())

	// Signed in with SSO, a person lists the workspaces they belong to.
	lw, err := e.client.ListWorkspaces(carol, &keystorev1.ListWorkspacesRequest{})
	require.NoError(t, err)
	require.Len(t, lw.GetWorkspaces(), 1)
	require.Equal(t, "acme", lw.GetWorkspaces()[0].GetId())
	lw, err = e.client.ListWorkspaces(as(t.Context(), iss.Token("nobody@example.com", now, nil)), &keystorev1.ListWorkspacesRequest{})
	require.NoError(t, err)
	require.Empty(t, lw.GetWorkspaces())

	// Another workspace answers as if it did not exist.
	_, err = e.client.GetWorkspace(alice, &keystorev1.GetWorkspaceRequest{Workspace: "other"})
	requireCode(t, codes.NotFound, err)
	_, err = e.client.ListKeys(alice, &keystorev1.ListKeysRequest{Workspace: "other"})
	requireCode(t, codes.NotFound, err)

	// Root-only calls stay root-only.
	_, err = e.client.CreateWorkspace(alice, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: "mine"}})
	requireCode(t, codes.PermissionDenied, err)

	// Expired, foreign, or unsigned tokens authenticate nobody.
	for name, tok := range map[string]string{
		"expired":      iss.Token("alice@example.com", now.Add(-2*time.Hour), nil),
		"other issuer": iss.Token("alice@example.com", now, map[string]any{"iss": "https://evil.example"}),
		"not a member": iss.Token("mallory@example.com", now, nil),
	} {
		_, err := e.client.ListKeys(as(t.Context(), tok), &keystorev1.ListKeysRequest{Workspace: "acme"})
		if name == "not a member" {
			requireCode(t, codes.NotFound, err)
			continue
		}
		requireCode(t, codes.Unauthenticated, err)
	}

	// The audit log names the SSO credential.
	ev, err := e.client.ListAuditEvents(e.root(t), &keystorev1.ListAuditEventsRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.NotEmpty(t, ev.GetEvents())
	require.Equal(t, "oidc", ev.GetEvents()[len(ev.GetEvents())-1].GetCredential())
}
