package keystore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/services/keystore"
)

// replicaServer is a second keystore on the same etcd and clock.
func (e *env) replicaServer(t *testing.T, opts ...func(*keystore.Config)) *keystore.Server {
	t.Helper()
	cfg := keystore.Config{Etcd: e.etcd.Client, Clock: e.clock, RootToken: rootToken}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := keystore.New(t.Context(), cfg)
	require.NoError(t, err)
	return srv
}

// replica serves a second keystore and returns its client.
func (e *env) replica(t *testing.T, opts ...func(*keystore.Config)) (keystorev1.KeystoreServiceClient, *keystore.Server) {
	t.Helper()
	srv := e.replicaServer(t, opts...)
	gs := grpctest.Serve(t, srv.Register)
	return keystorev1.NewKeystoreServiceClient(grpctest.Dial(t, gs.Addr)), srv
}

// run runs srv's background work for the rest of the test.
func run(t *testing.T, srv *keystore.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
}

func TestOverrideJanitor(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, map[string]keystorev1.Role{"mia": keystorev1.Role_ROLE_MEMBER})
	ctx := e.root(t)
	_, err := e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{Limits: rpm(10), LimitOverride: e.override(100, time.Hour)}, UpdateMask: paths("limits", "limit_override")})
	require.NoError(t, err)
	_, err = e.client.UpdateMember(ctx, &keystorev1.UpdateMemberRequest{Workspace: "acme", Member: "mia",
		Patch: &keystorev1.Member{LimitOverride: e.override(100, 2*time.Hour)}, UpdateMask: paths("limit_override")})
	require.NoError(t, err)
	k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web", LimitOverride: e.override(100, time.Hour)})
	// A key whose override was replaced leaves a stale entry behind only
	// if the index is wrong; this one moves its entry.
	moved, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "moved", LimitOverride: e.override(5, time.Hour)})
	_, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: moved.GetId(),
		Patch: &keystorev1.Key{LimitOverride: e.override(5, 3*time.Hour)}, UpdateMask: paths("limit_override")})
	require.NoError(t, err)
	// A deleted key's entry is dropped.
	gone, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "gone", LimitOverride: e.override(5, time.Hour)})
	_, err = e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: gone.GetId()})
	require.NoError(t, err)

	janitors := []*keystore.Server{e.srv, e.replicaServer(t)}
	sweep := func() int {
		var wg sync.WaitGroup
		counts := make([]int, len(janitors))
		errs := make([]error, len(janitors))
		for i, j := range janitors {
			wg.Go(func() { counts[i], errs[i] = j.ExpireOverrides(t.Context()) })
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		return counts[0] + counts[1]
	}
	expired := func() int {
		n := 0
		for _, ev := range e.auditActions(t, "acme", "") {
			if ev.GetAction() == "limit_override.expired" {
				n++
			}
		}
		return n
	}
	require.Zero(t, sweep(), "nothing due yet")

	e.clock.Advance(time.Hour)
	require.Equal(t, 2, sweep(), "the workspace's and the key's, each once")
	require.Equal(t, 2, expired())
	w := e.getWorkspace(t, "acme")
	require.Nil(t, w.GetLimitOverride())
	require.Equal(t, int64(10), w.GetLimits().GetGlobalLimits().GetRpm(), "the limits stay")
	got, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.Nil(t, got.GetKey().GetLimitOverride())
	keyEvents := e.auditActions(t, "acme", k.GetId())
	require.Equal(t, "limit_override.expired", keyEvents[0].GetAction())
	require.Contains(t, keyEvents[0].GetOldValue(), "launch")
	require.NotNil(t, e.member(t, "acme", "mia").GetLimitOverride(), "not due yet")

	e.clock.Advance(2 * time.Hour)
	require.Equal(t, 2, sweep(), "the member's and the moved key's")
	require.Nil(t, e.member(t, "acme", "mia").GetLimitOverride())
	require.Equal(t, 4, expired())
	require.Zero(t, sweep())
	left, err := e.etcd.Client.Get(t.Context(), "/keygate/keystore/overrides/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Zero(t, left.Count, "the index is empty")
}

// TestRunClearsOverrides: Run's first pass clears what is due, and Run
// returns when its context ends.
func TestRunClearsOverrides(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	_, err := e.client.UpdateWorkspace(e.root(t), &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{LimitOverride: e.override(100, time.Minute)}, UpdateMask: paths("limit_override")})
	require.NoError(t, err)
	e.clock.Advance(time.Minute)
	run(t, e.srv)
	require.Eventually(t, func() bool { return e.getWorkspace(t, "acme").GetLimitOverride() == nil }, 10*time.Second, 10*time.Millisecond)
}
