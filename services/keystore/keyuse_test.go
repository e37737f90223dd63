package keystore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

// usedDir is where the keystore keeps last-used times (store.go).
const usedDir = "/keygate/keystore/used/"

func use(ws, key string, t time.Time) *keystorev1.KeyUse {
	return &keystorev1.KeyUse{Workspace: ws, Key: key, Time: timestamppb.New(t)}
}

func (e *env) recordUse(tb testing.TB, uses ...*keystorev1.KeyUse) {
	tb.Helper()
	_, err := e.client.RecordKeyUse(e.root(tb), &keystorev1.RecordKeyUseRequest{Uses: uses})
	require.NoError(tb, err)
}

func (e *env) lastUsed(tb testing.TB, ws, id string) *keystorev1.Key {
	tb.Helper()
	got, err := e.client.GetKey(e.root(tb), &keystorev1.GetKeyRequest{Workspace: ws, Key: id})
	require.NoError(tb, err)
	return got.GetKey()
}

// usedRecords counts the last-used records in etcd.
func (e *env) usedRecords(tb testing.TB) int64 {
	tb.Helper()
	resp, err := e.etcd.Client.Get(tb.Context(), usedDir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(tb, err)
	return resp.Count
}

func TestRecordKeyUse(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	e.workspace(t, "other", 0, nil)
	ctx := e.root(t)
	k1, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "one"})
	k2, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "two"})
	k3, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "three"})
	require.Nil(t, k1.GetLastUsedTime())
	t1 := epoch.Add(-time.Minute)

	e.recordUse(t, use("acme", k1.GetId(), t1), use("acme", k2.GetId(), t1.Add(-time.Hour)))

	t.Run("get shows it and the etag stays", func(t *testing.T) {
		got := e.lastUsed(t, "acme", k1.GetId())
		require.Equal(t, t1, got.GetLastUsedTime().AsTime())
		require.Equal(t, k1.GetEtag(), got.GetEtag())
		require.Nil(t, e.lastUsed(t, "acme", k3.GetId()).GetLastUsedTime())
	})

	t.Run("list shows it", func(t *testing.T) {
		want := map[string]time.Time{k1.GetId(): t1, k2.GetId(): t1.Add(-time.Hour)}
		for _, size := range []int32{0, 1} {
			seen := map[string]bool{}
			tok := ""
			for {
				page, err := e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: size, PageToken: tok})
				require.NoError(t, err)
				for _, k := range page.GetKeys() {
					seen[k.GetId()] = true
					if w, ok := want[k.GetId()]; ok {
						require.Equal(t, w, k.GetLastUsedTime().AsTime(), "page size %d", size)
					} else {
						require.Nil(t, k.GetLastUsedTime(), "page size %d", size)
					}
				}
				if tok = page.GetNextPageToken(); tok == "" {
					break
				}
			}
			require.Len(t, seen, 3, "page size %d", size)
		}
	})

	t.Run("older time does not move it back", func(t *testing.T) {
		e.recordUse(t, use("acme", k1.GetId(), t1.Add(-time.Second)))
		require.Equal(t, t1, e.lastUsed(t, "acme", k1.GetId()).GetLastUsedTime().AsTime())
	})

	t.Run("newer time moves it forward, latest of a batch wins", func(t *testing.T) {
		t2 := t1.Add(30 * time.Second)
		e.recordUse(t, use("acme", k1.GetId(), t2), use("acme", k1.GetId(), t1.Add(time.Second)))
		require.Equal(t, t2, e.lastUsed(t, "acme", k1.GetId()).GetLastUsedTime().AsTime())
	})

	t.Run("future time is recorded as now", func(t *testing.T) {
		e.recordUse(t, use("acme", k3.GetId(), epoch.Add(24*time.Hour)))
		require.Equal(t, epoch, e.lastUsed(t, "acme", k3.GetId()).GetLastUsedTime().AsTime())
	})

	t.Run("unknown keys are skipped, across transactions", func(t *testing.T) {
		before := e.usedRecords(t)
		var uses []*keystorev1.KeyUse
		for range 300 {
			uses = append(uses, use("acme", keyformat.NewID(), t1))
		}
		uses = append(uses, use("other", k2.GetId(), epoch), use("nope", k2.GetId(), epoch), use("acme", k2.GetId(), t1))
		e.recordUse(t, uses...)
		require.Equal(t, before, e.usedRecords(t))
		require.Equal(t, t1, e.lastUsed(t, "acme", k2.GetId()).GetLastUsedTime().AsTime())
	})

	t.Run("update keeps it out of the key record", func(t *testing.T) {
		up, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k2.GetId(),
			Patch: &keystorev1.Key{Name: "two-renamed"}, UpdateMask: mask("name")})
		require.NoError(t, err)
		require.Equal(t, t1, up.GetKey().GetLastUsedTime().AsTime())
		e.recordUse(t, use("acme", k2.GetId(), epoch))
		got := e.lastUsed(t, "acme", k2.GetId())
		require.Equal(t, epoch, got.GetLastUsedTime().AsTime())
		require.Equal(t, up.GetKey().GetEtag(), got.GetEtag())
	})

	t.Run("delete removes it and a later use does not bring it back", func(t *testing.T) {
		before := e.usedRecords(t)
		_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k1.GetId()})
		require.NoError(t, err)
		require.Equal(t, before-1, e.usedRecords(t))
		e.recordUse(t, use("acme", k1.GetId(), epoch))
		require.Equal(t, before-1, e.usedRecords(t))
	})
}

func TestRecordKeyUseNeedsServiceToken(t *testing.T) {
	e := newEnv(t)
	secrets := e.workspace(t, "acme", 0, map[string]keystorev1.Role{"alice": keystorev1.Role_ROLE_OWNER})
	k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web"})
	req := &keystorev1.RecordKeyUseRequest{Uses: []*keystorev1.KeyUse{use("acme", k.GetId(), epoch)}}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"no credential", t.Context(), codes.Unauthenticated},
		{"wrong token", as(t.Context(), "not-the-root-token-at-all"), codes.Unauthenticated},
		{"workspace owner's admin key", as(t.Context(), secrets["alice"]), codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.RecordKeyUse(tc.ctx, req)
			requireCode(t, tc.want, err)
			require.Zero(t, e.usedRecords(t))
		})
	}
}

func TestRecordKeyUseRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web"})
	good := use("acme", k.GetId(), epoch)
	tooMany := make([]*keystorev1.KeyUse, 1001)
	for i := range tooMany {
		tooMany[i] = good
	}
	for _, tc := range []struct {
		name string
		uses []*keystorev1.KeyUse
	}{
		{"no workspace", []*keystorev1.KeyUse{good, use("", k.GetId(), epoch)}},
		{"bad workspace", []*keystorev1.KeyUse{good, use("Acme/x", k.GetId(), epoch)}},
		{"no key", []*keystorev1.KeyUse{good, use("acme", "", epoch)}},
		{"bad key", []*keystorev1.KeyUse{good, use("acme", "../x", epoch)}},
		{"no time", []*keystorev1.KeyUse{good, {Workspace: "acme", Key: k.GetId()}}},
		{"invalid time", []*keystorev1.KeyUse{good, {Workspace: "acme", Key: k.GetId(), Time: &timestamppb.Timestamp{Nanos: -1}}}},
		{"before 1970", []*keystorev1.KeyUse{good, use("acme", k.GetId(), time.Unix(-1, 0))}},
		{"too many", tooMany},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.RecordKeyUse(e.root(t), &keystorev1.RecordKeyUseRequest{Uses: tc.uses})
			requireCode(t, codes.InvalidArgument, err)
			require.Zero(t, e.usedRecords(t))
			require.Nil(t, e.lastUsed(t, "acme", k.GetId()).GetLastUsedTime())
		})
	}
	t.Run("empty is fine", func(t *testing.T) {
		e.recordUse(t)
		require.Zero(t, e.usedRecords(t))
	})
}

// Recording use must not wake key caches: the change stream's next message
// after a RecordKeyUse is a progress report past it, not an update.
func TestRecordKeyUseIsNotAKeyChange(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web"})
	ctx, cancel := context.WithCancel(e.root(t))
	defer cancel()
	st, err := e.client.WatchKeyChanges(ctx, &keystorev1.WatchKeyChangesRequest{})
	require.NoError(t, err)
	first, err := st.Recv()
	require.NoError(t, err)
	require.Equal(t, keystorev1.WatchKeyChangesResponse_TYPE_RESET, first.GetType())

	e.recordUse(t, use("acme", k.GetId(), epoch))
	require.Equal(t, epoch, e.lastUsed(t, "acme", k.GetId()).GetLastUsedTime().AsTime())
	head, err := e.etcd.Client.Get(t.Context(), usedDir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Greater(t, head.Header.Revision, first.GetRevision(), "the use was written")
	for {
		m, err := st.Recv()
		require.NoError(t, err)
		require.Equal(t, keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS, m.GetType(), "message %v", m)
		if m.GetRevision() >= head.Header.Revision {
			break
		}
	}
}
