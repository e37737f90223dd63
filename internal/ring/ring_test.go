package ring

import (
	"bytes"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/etcdtest"
)

func members(n int) []Member {
	var ms []Member
	for i := range n {
		ms = append(ms, Member{ID: "m" + strconv.Itoa(i), Addr: "10.0.0." + strconv.Itoa(i) + ":9090"})
	}
	return ms
}

func TestRendezvous(t *testing.T) {
	t.Parallel()
	r4 := New(members(4))
	counts := map[string]int{}
	const keys = 20_000
	for i := range keys {
		o, ok := r4.Owner("key-" + strconv.Itoa(i))
		require.True(t, ok)
		counts[o.ID]++
	}
	for id, n := range counts {
		require.InDelta(t, keys/4, n, keys/4*0.1, "member %s owns an even share", id)
	}
	// Removing a member moves only its own keys, each to its next choice.
	r3 := New(members(3))
	for i := range keys {
		k := "key-" + strconv.Itoa(i)
		before, _ := r4.Owner(k)
		after, _ := r3.Owner(k)
		next, _ := r4.OwnerExcept(k, map[string]bool{"m3": true})
		require.Equal(t, next, after)
		if before.ID != "m3" {
			require.Equal(t, before, after)
		}
	}
	_, ok := New(nil).Owner("k")
	require.False(t, ok)
	_, ok = r4.OwnerExcept("k", map[string]bool{"m0": true, "m1": true, "m2": true, "m3": true})
	require.False(t, ok)
}

func TestMembership(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	ctx := t.Context()
	const prefix = "/test/members/"
	changes := make(chan *Ring, 16)
	w, err := Watch(ctx, WatchConfig{Etcd: etcd.Client, Prefix: prefix, OnChange: func(r *Ring) { changes <- r }})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	require.Zero(t, w.Ring().Len())

	_, err = Register(ctx, etcd.Client, prefix, Member{}, 0, nil)
	require.Error(t, err)
	a, err := Register(ctx, etcd.Client, prefix, Member{ID: "a", Addr: "127.0.0.1:1"}, time.Second, nil)
	require.NoError(t, err)
	b, err := Register(ctx, etcd.Client, prefix, Member{ID: "b", Addr: "127.0.0.1:2"}, time.Second, nil)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return w.Ring().Len() == 2 }, 5*time.Second, 10*time.Millisecond)
	m, ok := w.Ring().Member("b")
	require.True(t, ok)
	require.Equal(t, "127.0.0.1:2", m.Addr)

	// A second watcher starts from the listed state.
	w2, err := Watch(ctx, WatchConfig{Etcd: etcd.Client, Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w2.Close() })
	require.Equal(t, 2, w2.Ring().Len())

	require.NoError(t, a.Close())
	require.Eventually(t, func() bool { return w.Ring().Len() == 1 && w2.Ring().Len() == 1 }, 5*time.Second, 10*time.Millisecond)
	_, ok = w.Ring().Member("a")
	require.False(t, ok)
	require.NoError(t, b.Close())
	require.Eventually(t, func() bool { return w.Ring().Len() == 0 }, 5*time.Second, 10*time.Millisecond)
	require.NotEmpty(t, changes)
}

// TestWatchProgress checks that a quiet watch is kept confirmed by
// progress requests: the watcher hears from etcd without any change and
// never takes the watch for silent.
func TestWatchProgress(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	var logs lockedBuffer
	w, err := Watch(t.Context(), WatchConfig{
		Etcd: etcd.Client, Prefix: "/test/progress/", ProgressInterval: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	listed := w.synced.Load()
	require.Eventually(t, func() bool { return w.synced.Load() > listed }, 5*time.Second, 5*time.Millisecond,
		"a progress notification arrives on a quiet watch")
	require.NotContains(t, logs.String(), "silent")
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
