package keystore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/keystore"
)

const rootToken = "test-root-token-0123456789"

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// env is a keystore on embedded etcd, served over loopback gRPC.
type env struct {
	etcd   *etcdtest.Cluster
	clock  *clock.Fake
	client keystorev1.KeystoreServiceClient
	conn   *grpc.ClientConn
	addr   string
	stop   func()
	opts   []func(*keystore.Config)
	srv    *keystore.Server
}

func newEnv(tb testing.TB, opts ...func(*keystore.Config)) *env {
	tb.Helper()
	e := &env{etcd: etcdtest.Start(tb), clock: clock.NewFake(epoch), opts: opts}
	e.serve(tb, "127.0.0.1:0")
	e.conn = grpctest.Dial(tb, e.addr)
	e.client = keystorev1.NewKeystoreServiceClient(e.conn)
	return e
}

// serve starts a keystore gRPC server on addr (":0" picks a port; a
// restarted keystore comes back on its address once it is free).
func (e *env) serve(tb testing.TB, addr string) {
	tb.Helper()
	cfg := keystore.Config{Etcd: e.etcd.Client, Clock: e.clock, RootToken: rootToken}
	for _, o := range e.opts {
		o(&cfg)
	}
	srv, err := keystore.New(tb.Context(), cfg)
	require.NoError(tb, err)
	gs := grpctest.Serve(tb, srv.Register, grpctest.WithListener(grpctest.Listen(tb, addr)))
	e.addr, e.srv = gs.Addr, srv
	e.stop = func() { gs.Stop(); _ = srv.Close() }
	tb.Cleanup(func() { e.stop() })
}

func as(ctx context.Context, token string) context.Context { return auth.WithBearer(ctx, token) }

func (e *env) root(tb testing.TB) context.Context { return as(tb.Context(), rootToken) }

// seedRegistry registers the mock provider and two priced models.
func (e *env) seedRegistry(tb testing.TB) {
	tb.Helper()
	ctx := e.root(tb)
	_, err := e.client.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: &keystorev1.Provider{Id: "mock", BaseUrl: "mock"}})
	require.NoError(tb, err)
	for _, m := range []string{"mock-small", "mock-large"} {
		_, err := e.client.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: &keystorev1.Model{
			Id: m, Provider: "mock", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60",
		}})
		require.NoError(tb, err)
	}
}

// workspace creates a workspace with members by role and returns an admin
// key secret for each member.
func (e *env) workspace(tb testing.TB, id string, maxKeys int32, members map[string]keystorev1.Role) map[string]string {
	tb.Helper()
	ctx := e.root(tb)
	_, err := e.client.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: id, MaxKeys: maxKeys}})
	require.NoError(tb, err)
	secrets := map[string]string{}
	for m, r := range members {
		_, err := e.client.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: id, Member: m, Role: r})
		require.NoError(tb, err)
		resp, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{
			Workspace: id, Name: "admin-" + m, Kind: keystorev1.KeyKind_KEY_KIND_ADMIN, Owner: m,
		})
		require.NoError(tb, err)
		secrets[m] = resp.GetSecret()
	}
	return secrets
}

func (e *env) createKey(tb testing.TB, ctx context.Context, req *keystorev1.CreateKeyRequest) (*keystorev1.Key, string) {
	tb.Helper()
	resp, err := e.client.CreateKey(ctx, req)
	require.NoError(tb, err)
	return resp.GetKey(), resp.GetSecret()
}

func (e *env) verify(ctx context.Context, secret string) (*keystorev1.VerifyKeyResponse, error) {
	return e.client.VerifyKey(ctx, &keystorev1.VerifyKeyRequest{Secret: secret})
}

func requireCode(tb testing.TB, want codes.Code, err error) {
	tb.Helper()
	require.Equal(tb, want.String(), status.Code(err).String(), "error: %v", err)
}
