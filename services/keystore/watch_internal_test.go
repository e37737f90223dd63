package keystore

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/etcdtest"
)

// A watch that falls behind a compaction must end (watchKeyChanges then
// sends a RESET) rather than skip ahead and lose revocations.
func TestFollowKeysEndsOnCompaction(t *testing.T) {
	c := etcdtest.Start(t)
	s, err := New(t.Context(), Config{Etcd: c.Client, RootToken: "0123456789abcdef"})
	require.NoError(t, err)
	first, err := c.Client.Put(t.Context(), keyKey("acme", "aaaaaaaaaaaaaaaa"), "x")
	require.NoError(t, err)
	last, err := c.Client.Put(t.Context(), keyKey("acme", "aaaaaaaaaaaaaaaa"), "y")
	require.NoError(t, err)
	_, err = c.Client.Compact(t.Context(), last.Header.Revision)
	require.NoError(t, err)

	var sent []*keystorev1.WatchKeyChangesResponse
	err = s.followKeys(t.Context(), first.Header.Revision, func(m *keystorev1.WatchKeyChangesResponse) error {
		sent = append(sent, m)
		return nil
	})
	require.ErrorIs(t, err, ErrStreamBroken)
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
	require.Empty(t, sent)
	require.Contains(t, s.toStatus(t.Context(), err).Error(), "Unavailable")
}
