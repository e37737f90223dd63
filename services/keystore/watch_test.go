package keystore_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// watch opens a change stream from start; it ends with the test.
func (e *env) watch(t *testing.T, start int64) grpc.ServerStreamingClient[keystorev1.WatchKeyChangesResponse] {
	t.Helper()
	ctx, cancel := context.WithCancel(e.root(t))
	t.Cleanup(cancel)
	st, err := e.client.WatchKeyChanges(ctx, &keystorev1.WatchKeyChangesRequest{StartRevision: start})
	require.NoError(t, err)
	return st
}

// head is etcd's current revision.
func (e *env) head(t *testing.T) int64 {
	t.Helper()
	resp, err := e.etcd.Client.Get(t.Context(), "/", clientv3.WithCountOnly())
	require.NoError(t, err)
	return resp.Header.Revision
}

// until reads the stream up to a PROGRESS at rev or later and returns
// what came before it.
func until(t *testing.T, st grpc.ServerStreamingClient[keystorev1.WatchKeyChangesResponse], rev int64) []*keystorev1.WatchKeyChangesResponse {
	t.Helper()
	var got []*keystorev1.WatchKeyChangesResponse
	for {
		m, err := st.Recv()
		require.NoError(t, err)
		if m.GetType() == keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS && m.GetRevision() >= rev {
			return got
		}
		if m.GetType() != keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS {
			got = append(got, m)
		}
	}
}

func TestWatchKeyChangesResumes(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)

	st := e.watch(t, 0)
	first, err := st.Recv()
	require.NoError(t, err)
	require.Equal(t, keystorev1.WatchKeyChangesResponse_TYPE_RESET, first.GetType())
	from := first.GetRevision()
	require.Equal(t, e.head(t), from)
	require.Empty(t, until(t, st, from), "an idle stream reports progress")

	a, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "a"})
	b, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "b"})
	_, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: a.GetId(),
		Patch: &keystorev1.Key{}, UpdateMask: mask("enabled")})
	require.NoError(t, err)
	_, err = e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: b.GetId()})
	require.NoError(t, err)
	head := e.head(t)

	t.Run("changes since the start revision, no RESET", func(t *testing.T) {
		got := until(t, e.watch(t, from), head)
		var kinds []string
		last := from
		for _, m := range got {
			require.Greater(t, m.GetRevision(), from)
			require.GreaterOrEqual(t, m.GetRevision(), last, "in revision order")
			last = m.GetRevision()
			kinds = append(kinds, m.GetType().String()+" "+m.GetKey())
		}
		up, del := keystorev1.WatchKeyChangesResponse_TYPE_UPDATED.String(), keystorev1.WatchKeyChangesResponse_TYPE_DELETED.String()
		require.Equal(t, []string{up + " " + a.GetId(), up + " " + b.GetId(), up + " " + a.GetId(), del + " " + b.GetId()}, kinds)
	})
	t.Run("from the head: progress only", func(t *testing.T) {
		require.Empty(t, until(t, e.watch(t, head), head))
	})
	t.Run("ahead of etcd: RESET", func(t *testing.T) {
		m, err := e.watch(t, head+1000).Recv()
		require.NoError(t, err)
		require.Equal(t, keystorev1.WatchKeyChangesResponse_TYPE_RESET, m.GetType())
		require.Equal(t, head, m.GetRevision())
	})
	t.Run("negative", func(t *testing.T) {
		_, err := e.watch(t, -1).Recv()
		requireCode(t, codes.InvalidArgument, err)
	})
	t.Run("compacted: RESET, then the changes after it", func(t *testing.T) {
		_, err := e.etcd.Client.Compact(t.Context(), head)
		require.NoError(t, err)
		st := e.watch(t, from)
		m, err := st.Recv()
		require.NoError(t, err)
		require.Equal(t, keystorev1.WatchKeyChangesResponse_TYPE_RESET, m.GetType())
		require.Equal(t, head, m.GetRevision())
		c, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "c"})
		got := until(t, st, e.head(t))
		require.Len(t, got, 1)
		require.Equal(t, c.GetId(), got[0].GetKey())
	})
}
