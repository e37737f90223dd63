package keystore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/services/keystore"
)

func sha(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// countingKV counts the reads and transactions a keystore sends to etcd.
type countingKV struct {
	clientv3.KV
	ops atomic.Int64
}

// count counts the etcd work of a gRPC call (its context carries the
// call's metadata), not that of the keystore's background loops.
func (c *countingKV) count(ctx context.Context) {
	if _, ok := metadata.FromIncomingContext(ctx); ok {
		c.ops.Add(1)
	}
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.count(ctx)
	return c.KV.Get(ctx, key, opts...)
}

func (c *countingKV) Txn(ctx context.Context) clientv3.Txn {
	c.count(ctx)
	return c.KV.Txn(ctx)
}

func (c *countingKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	c.count(ctx)
	return c.KV.Do(ctx, op)
}

func TestImportKeys(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	keys := e.workspace(t, "acme", 5, map[string]keystorev1.Role{
		"adam": keystorev1.Role_ROLE_ADMIN, "mia": keystorev1.Role_ROLE_MEMBER,
	})
	e.workspace(t, "beta", 0, nil)
	adam := as(t.Context(), keys["adam"])
	imp := func(ctx context.Context, ws string, ks ...*keystorev1.ImportedKey) (*keystorev1.ImportKeysResponse, error) {
		return e.client.ImportKeys(ctx, &keystorev1.ImportKeysRequest{Workspace: ws, Keys: ks})
	}
	const old1, old2 = "sk-legacy-0123456789abcdef", "sk-legacy-fedcba9876543210"
	resp, err := imp(adam, "acme",
		&keystorev1.ImportedKey{Name: "old-web", SecretSha256: sha(old1), PartialKey: "cdef", Owner: "mia",
			GlobalLimits: &typev1.Limits{Rpm: 60}, AllowedModels: []string{"mock-small"}},
		&keystorev1.ImportedKey{Name: "old-batch", SecretSha256: sha(old2), PartialKey: "sk-...3210"})
	require.NoError(t, err)
	require.Len(t, resp.GetKeys(), 2)
	web := resp.GetKeys()[0]
	require.True(t, web.GetLegacy())
	require.Equal(t, "mia", web.GetOwner())
	require.Equal(t, "…cdef", web.GetPartialKey())
	require.Equal(t, keystorev1.KeyState_KEY_STATE_ACTIVE, web.GetState())
	require.Equal(t, "adam", resp.GetKeys()[1].GetOwner(), "defaults to the caller")
	require.Equal(t, "…3210", resp.GetKeys()[1].GetPartialKey(), "the last four characters at most")
	require.Equal(t, int32(4), e.getWorkspace(t, "acme").GetKeyCount(), "counted against max_keys")
	require.Equal(t, "key.import", e.auditActions(t, "acme", web.GetId())[0].GetAction())

	t.Run("verify by the plaintext secret", func(t *testing.T) {
		v, err := e.verify(t.Context(), old1)
		require.NoError(t, err)
		require.Equal(t, web.GetId(), v.GetKey().GetId())
		require.Equal(t, int64(60), v.GetKey().GetGlobalLimits().GetRpm())
		require.Equal(t, "mia", v.GetMember().GetMember())
		require.Equal(t, "acme", v.GetWorkspace().GetId())
		_, err = e.verify(t.Context(), "sk-legacy-unknown")
		requireCode(t, codes.Unauthenticated, err)
	})
	t.Run("importing again answers with the key", func(t *testing.T) {
		again, err := imp(adam, "acme", &keystorev1.ImportedKey{Name: "old-web", SecretSha256: sha(old1)})
		require.NoError(t, err)
		require.Equal(t, web.GetId(), again.GetKeys()[0].GetId())
		require.Equal(t, int32(4), e.getWorkspace(t, "acme").GetKeyCount())
		_, err = imp(e.root(t), "beta", &keystorev1.ImportedKey{Name: "stolen", SecretSha256: sha(old1)})
		requireCode(t, codes.AlreadyExists, err)
	})
	t.Run("list the legacy keys for replacement", func(t *testing.T) {
		l, err := e.client.ListKeys(adam, &keystorev1.ListKeysRequest{Workspace: "acme", Legacy: true})
		require.NoError(t, err)
		require.Len(t, l.GetKeys(), 2)
		for _, k := range l.GetKeys() {
			require.True(t, k.GetLegacy())
		}
	})
	t.Run("rotation is refused", func(t *testing.T) {
		_, err := e.client.RotateKey(adam, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: web.GetId()})
		requireCode(t, codes.FailedPrecondition, err)
	})
	t.Run("members import nothing", func(t *testing.T) {
		_, err := imp(as(t.Context(), keys["mia"]), "acme", &keystorev1.ImportedKey{Name: "x", SecretSha256: sha("x-secret")})
		requireCode(t, codes.PermissionDenied, err)
	})
	t.Run("the cap holds for the whole import", func(t *testing.T) {
		_, err := imp(adam, "acme", &keystorev1.ImportedKey{Name: "a", SecretSha256: sha("a-secret")}, &keystorev1.ImportedKey{Name: "b", SecretSha256: sha("b-secret")})
		requireCode(t, codes.FailedPrecondition, err)
		require.Equal(t, int32(4), e.getWorkspace(t, "acme").GetKeyCount())
	})
	for _, c := range []struct {
		name string
		keys []*keystorev1.ImportedKey
	}{
		{"none", nil},
		{"a plaintext secret", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: old1}}},
		{"a keygate secret", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: "kg_" + sha("y")[:61]}}},
		{"upper-case hex", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: "AB" + sha("y")[2:]}}},
		{"short hash", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: sha("y")[:62]}}},
		{"same secret twice", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: sha("y")}, {Name: "q", SecretSha256: sha("y")}}},
		{"same name twice", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: sha("y")}, {Name: "p", SecretSha256: sha("z")}}},
		{"bad name", []*keystorev1.ImportedKey{{Name: "a/b", SecretSha256: sha("y")}}},
		{"partial with a control character", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: sha("y"), PartialKey: "a\nb"}}},
		{"unknown model", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: sha("y"), AllowedModels: []string{"nope"}}}},
		{"owner not a member", []*keystorev1.ImportedKey{{Name: "p", SecretSha256: sha("y"), Owner: "stranger"}}},
	} {
		t.Run("invalid: "+c.name, func(t *testing.T) {
			_, err := imp(e.root(t), "beta", c.keys...)
			requireCode(t, codes.InvalidArgument, err)
			if len(c.keys) > 0 && c.keys[0].GetSecretSha256() == old1 {
				require.NotContains(t, err.Error(), old1, "a secret is never echoed")
			}
			require.Zero(t, e.getWorkspace(t, "beta").GetKeyCount(), "nothing imported")
		})
	}
	t.Run("more than 100", func(t *testing.T) {
		var ks []*keystorev1.ImportedKey
		for i := range 101 {
			ks = append(ks, &keystorev1.ImportedKey{Name: fmt.Sprint("k", i), SecretSha256: sha(fmt.Sprintf("sk-imported-%04d-secret", i))})
		}
		_, err := imp(e.root(t), "beta", ks...)
		requireCode(t, codes.InvalidArgument, err)
	})
	t.Run("a deleted legacy key no longer verifies", func(t *testing.T) {
		_, err := e.client.DeleteKey(adam, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: web.GetId()})
		require.NoError(t, err)
		_, err = e.verify(t.Context(), old1)
		requireCode(t, codes.Unauthenticated, err)
	})
}

// TestImportMany: an import larger than one transaction holds is written
// whole.
func TestImportMany(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 200, nil)
	var ks []*keystorev1.ImportedKey
	for i := range 100 {
		ks = append(ks, &keystorev1.ImportedKey{Name: fmt.Sprint("k", i), SecretSha256: sha(fmt.Sprintf("sk-imported-%04d-secret", i))})
	}
	resp, err := e.client.ImportKeys(e.root(t), &keystorev1.ImportKeysRequest{Workspace: "acme", Keys: ks})
	require.NoError(t, err)
	require.Len(t, resp.GetKeys(), 100)
	require.Equal(t, int32(100), e.getWorkspace(t, "acme").GetKeyCount())
	v, err := e.verify(t.Context(), "sk-imported-0099-secret")
	require.NoError(t, err)
	require.Equal(t, "k99", v.GetKey().GetName())
}

// TestLegacyLookupOnlyWhenImported: while no legacy key exists, a secret
// without keygate's prefix is refused without reading etcd; a malformed
// keygate secret always is.
func TestLegacyLookupOnlyWhenImported(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	cli := etcdtest.NewClient(t, e.etcd.Endpoints)
	kv := &countingKV{KV: cli.KV}
	cli.KV = kv
	client, srv := e.replica(t, func(c *keystore.Config) { c.Etcd = cli })
	verify := func(secret string) (int64, error) {
		before := kv.ops.Load()
		_, err := client.VerifyKey(t.Context(), &keystorev1.VerifyKeyRequest{Secret: secret})
		return kv.ops.Load() - before, err
	}
	// Until Run has counted the imported keys, every one is looked up.
	reads, err := verify("sk-unknown-0123456789")
	requireCode(t, codes.Unauthenticated, err)
	require.Equal(t, int64(1), reads)

	run(t, srv)
	require.Eventually(t, func() bool {
		reads, err := verify("sk-unknown-0123456789")
		return reads == 0 && err != nil
	}, 10*time.Second, 5*time.Millisecond, "no legacy keys: no reads")
	reads, err = verify("kg_malformed")
	requireCode(t, codes.Unauthenticated, err)
	require.Zero(t, reads)

	_, err = e.client.ImportKeys(e.root(t), &keystorev1.ImportKeysRequest{Workspace: "acme", Keys: []*keystorev1.ImportedKey{
		{Name: "old", SecretSha256: sha("sk-old-secret-0123456789")}}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := verify("sk-old-secret-0123456789")
		return err == nil
	}, 10*time.Second, 5*time.Millisecond, "another replica learns of the import")
	reads, err = verify("sk-unknown-0123456789")
	requireCode(t, codes.Unauthenticated, err)
	require.Equal(t, int64(1), reads, "with legacy keys, one read")
	reads, err = verify("kg_malformed")
	requireCode(t, codes.Unauthenticated, err)
	require.Zero(t, reads, "a keygate-prefixed secret is never looked up by hash")
	for _, implausible := range []string{"short", "sk-with space-0123456789", strings.Repeat("x", 300)} {
		reads, err = verify(implausible)
		requireCode(t, codes.Unauthenticated, err)
		require.Zero(t, reads, "%q could not be an imported secret: no lookup", implausible)
	}
}
