package keystore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/pkg/keycache"
)

// startCache runs a keycache.Verifier against the env's keystore with the
// service (root) token, as the edge does.
func startCache(tb testing.TB, e *env) *keycache.Verifier {
	tb.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.Token{Value: rootToken}))
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = conn.Close() })
	v := keycache.New(keystorev1.NewKeystoreServiceClient(conn), keycache.Options{Clock: e.clock})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	return v
}

// cached verifies secret until the answer comes from the cache.
func cached(tb testing.TB, v *keycache.Verifier, secret string) {
	tb.Helper()
	require.Eventually(tb, func() bool {
		_, err := v.Verify(context.Background(), secret)
		require.NoError(tb, err)
		return v.Len() > 0
	}, 5*time.Second, time.Millisecond)
}

func rejected(v *keycache.Verifier, secret string) func() bool {
	return func() bool {
		_, err := v.Verify(context.Background(), secret)
		return errors.Is(err, keycache.ErrInvalidKey)
	}
}

func TestCacheFollowsChanges(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	v := startCache(t, e)
	ctx := e.root(t)
	cases := []struct {
		name   string
		change func(t *testing.T, id string) (newSecret string)
	}{
		{"disable", func(t *testing.T, id string) string {
			_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: id,
				Patch: &keystorev1.Key{}, UpdateMask: mask("enabled")})
			require.NoError(t, err)
			return ""
		}},
		{"expire", func(t *testing.T, id string) string {
			_, err := e.client.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: id})
			require.NoError(t, err)
			return ""
		}},
		{"rotate", func(t *testing.T, id string) string {
			r, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: id})
			require.NoError(t, err)
			return r.GetSecret()
		}},
		{"delete", func(t *testing.T, id string) string {
			_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: id})
			require.NoError(t, err)
			return ""
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, secret := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: c.name})
			cached(t, v, secret)
			newSecret := c.change(t, k.GetId())
			require.Eventually(t, rejected(v, secret), time.Second, time.Millisecond)
			if newSecret != "" {
				got, err := v.Verify(t.Context(), newSecret)
				require.NoError(t, err)
				require.Equal(t, k.GetId(), got.GetId())
			}
		})
	}

	t.Run("expiry on the clock", func(t *testing.T) {
		_, secret := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "timed",
			ExpireTime: timestamppb.New(e.clock.Now().Add(time.Second))})
		cached(t, v, secret)
		e.clock.Advance(time.Second)
		_, err := v.Verify(t.Context(), secret)
		require.ErrorIs(t, err, keycache.ErrInvalidKey)
	})
}

func TestCacheResetsWhenKeystoreRestarts(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	v := startCache(t, e)
	k, secret := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	cached(t, v, secret)

	addr := e.addr
	e.stop()
	require.Eventually(t, func() bool { return v.Len() == 0 }, 5*time.Second, time.Millisecond)
	_, err := v.Verify(t.Context(), secret)
	require.Error(t, err)
	require.NotErrorIs(t, err, keycache.ErrInvalidKey, "unreachable is not invalid")

	// While the stream is down, the key is deleted through another replica.
	other := &env{etcd: e.etcd, clock: e.clock}
	other.serve(t, "127.0.0.1:0")
	conn, err := grpc.NewClient(other.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	_, err = keystorev1.NewKeystoreServiceClient(conn).DeleteKey(e.root(t), &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)

	e.serve(t, addr)
	require.Eventually(t, rejected(v, secret), 10*time.Second, 5*time.Millisecond)
}
