package etcdtest_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/etcdtest"
)

func TestStart(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	_, err := c.Client.Put(t.Context(), "/k", "v")
	require.NoError(t, err)
	resp, err := c.Client.Get(t.Context(), "/k")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, "v", string(resp.Kvs[0].Value))
}
