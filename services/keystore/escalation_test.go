package keystore_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// TestAdminCannotActAsOwner: an admin key acts with its owner's role, so an
// admin may neither mint one for an owner nor take over an owner's.
func TestAdminCannotActAsOwner(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	secrets := e.workspace(t, "acme", 100, map[string]keystorev1.Role{
		"alice": keystorev1.Role_ROLE_OWNER, "bob": keystorev1.Role_ROLE_ADMIN, "carol": keystorev1.Role_ROLE_MEMBER,
	})
	alice, bob := as(t.Context(), secrets["alice"]), as(t.Context(), secrets["bob"])
	adminKeyOf := func(owner string) string {
		r, err := e.client.ListKeys(e.root(t), &keystorev1.ListKeysRequest{Workspace: "acme", Owner: owner, Kind: keystorev1.KeyKind_KEY_KIND_ADMIN})
		require.NoError(t, err)
		require.Len(t, r.GetKeys(), 1)
		return r.GetKeys()[0].GetId()
	}
	aliceKey, bobKey := adminKeyOf("alice"), adminKeyOf("bob")

	// Minting: not for someone who outranks you.
	_, err := e.client.CreateKey(bob, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "as-alice", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN, Owner: "alice"})
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.CreateKey(bob, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "for-carol", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN, Owner: "carol"})
	require.NoError(t, err, "an admin key for a member grants no more than the admin has")
	_, err = e.client.CreateKey(alice, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "for-bob", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN, Owner: "bob"})
	require.NoError(t, err)

	// Taking over: an admin cannot rotate, change or delete an owner's admin key.
	_, err = e.client.RotateKey(bob, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: aliceKey})
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.UpdateKey(bob, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: aliceKey, Patch: &keystorev1.Key{Enabled: false}, UpdateMask: mask("enabled")})
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.DeleteKey(bob, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: aliceKey})
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.SetMember(bob, &keystorev1.SetMemberRequest{Workspace: "acme", Member: "mallory", Role: keystorev1.Role_ROLE_OWNER})
	requireCode(t, codes.PermissionDenied, err)

	// Their own admin keys, and owners over everyone's, still work.
	_, err = e.client.RotateKey(bob, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: bobKey})
	require.NoError(t, err)
	_, err = e.client.ExpireKey(alice, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: bobKey})
	require.NoError(t, err)
}
