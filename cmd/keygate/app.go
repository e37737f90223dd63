package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdembed"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/internal/oidc"
	"github.com/keygate/keygate/internal/telemetry"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/edge"
	"github.com/keygate/keygate/services/edge/mock"
	"github.com/keygate/keygate/services/gateway"
	"github.com/keygate/keygate/services/gateway/console"
	"github.com/keygate/keygate/services/keystore"
	"github.com/keygate/keygate/services/limiter"
	"github.com/keygate/keygate/services/usage"
)

// Role is one part of keygate that a process can run.
type Role string

const (
	RoleKeystore Role = "keystore"
	RoleLimiter  Role = "limiter"
	RoleUsage    Role = "usage"
	RoleEdge     Role = "edge"
	RoleGateway  Role = "gateway"
)

// AllRoles is what `keygate up` runs.
var AllRoles = []Role{RoleKeystore, RoleLimiter, RoleUsage, RoleEdge, RoleGateway}

// App is one keygate process: `keygate up` (every role in one process with an
// embedded etcd member) or `keygate serve <role>`.
//
// Close shuts down in the reverse order of start, so that nothing is cut off
// mid-request: first the HTTP listeners stop accepting and in-flight requests
// finish (the edge settles and hands off their usage), then the edge flushes
// its usage buffer to the usage service, then the limiter leaves the
// membership and hands its keys over (Shutdown), then the gRPC server drains
// (limiter streams still open after a second are cut), then the services
// release their state, then the etcd client and the embedded etcd member
// stop, and last the telemetry exporters flush.
type App struct {
	Config Config
	Roles  []Role
	// EmbedEtcd runs an etcd member in-process (keygate up).
	EmbedEtcd bool
	Clock     clock.Clock
	Logger    *slog.Logger
	// Out receives the generated root token, printed once.
	Out io.Writer
	// SpanProcessors see every span (tests); OTLP export is configured apart.
	SpanProcessors []sdktrace.SpanProcessor

	// Bound addresses, set by Start.
	GRPCAddr, HTTPAddr, EdgeAddr, MetricsAddr, PprofAddr string

	ctx     context.Context
	cancel  context.CancelFunc
	tls     transport
	tel     *telemetry.Telemetry
	etcdSrv *etcdembed.Server
	etcd    *clientv3.Client
	grpcSrv *grpc.Server
	health  *health.Server
	conns   []*grpc.ClientConn
	https   []*http.Server
	edge    *edge.Server
	limiter *limiter.Server
	// usage is the usage service when this process runs it.
	usage *usage.Server
	// limiterAddr is the limiter's advertised address (its member ID).
	limiterAddr string
	// limits is the limiter client the edge and the keystore share.
	limits  limits
	closers []func() error
	bg      sync.WaitGroup
	errc    chan error
}

func (a *App) has(r Role) bool {
	for _, x := range a.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Run starts the app, serves until ctx ends or a server fails, then closes.
func (a *App) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		_ = a.Close()
		return err
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-a.errc:
	}
	return errors.Join(err, a.Close())
}

// Start binds every listener and starts serving; it returns once serving.
func (a *App) Start(ctx context.Context) error {
	a.defaults(ctx)
	a.limits.a = a
	decl, err := a.prepare(ctx)
	if err != nil {
		return err
	}
	if err := a.connectEtcd(); err != nil {
		return err
	}
	grpcLis, err := a.listenGRPC()
	if err != nil {
		return err
	}
	conns, err := a.connections()
	if err != nil {
		return err
	}
	// The roles, in the order they depend on each other.
	for _, start := range []struct {
		role Role
		run  func(context.Context, *roleConns) error
	}{
		{RoleKeystore, a.startKeystore},
		{RoleUsage, a.startUsage},
		{RoleLimiter, a.startLimiter},
	} {
		if a.has(start.role) {
			if err := start.run(ctx, conns); err != nil {
				return err
			}
		}
	}
	if a.grpcSrv != nil {
		a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		a.goServe("grpc", func() error { return a.grpcSrv.Serve(grpcLis) })
	}
	if a.EmbedEtcd {
		if err := a.registerMockModels(ctx, conns.edgeKeystore); err != nil {
			return err
		}
	}
	if decl != nil {
		if err := a.applyDeclaration(ctx, decl, conns.keystoreAddr); err != nil {
			return err
		}
	}
	if a.has(RoleEdge) {
		if err := a.startEdge(ctx, conns.edgeKeystore, conns.usage); err != nil {
			return err
		}
	}
	if a.has(RoleGateway) {
		if err := a.startGateway(conns); err != nil {
			return err
		}
	}
	if err := a.serveOperations(); err != nil {
		return err
	}
	a.Logger.Info("keygate serving", "roles", fmt.Sprint(a.Roles), "grpc", a.GRPCAddr, "http", a.HTTPAddr, "console", consoleURL(a.HTTPAddr), "edge", a.EdgeAddr, "metrics", a.MetricsAddr, "pprof", a.PprofAddr)
	return nil
}

// defaults fills what the caller left unset and the app's own lifetime.
func (a *App) defaults(ctx context.Context) {
	if a.Clock == nil {
		a.Clock = clock.Real{}
	}
	if a.Logger == nil {
		a.Logger = telemetry.NewLogger(os.Stderr, a.Config.LogLevel)
	}
	if a.Out == nil {
		a.Out = os.Stdout
	}
	a.errc = make(chan error, 8)
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
}

// prepare loads TLS and the config file (a wrong one stops the start
// before anything runs), sets telemetry up, starts the embedded etcd and
// settles the root token.
func (a *App) prepare(ctx context.Context) (*declaration, error) {
	c := &a.Config
	var err error
	if a.tls, err = loadTransport(*c); err != nil {
		return nil, err
	}
	var decl *declaration
	if c.ConfigFile != "" {
		if decl, err = loadDeclaration(c.ConfigFile); err != nil {
			return nil, err
		}
	}
	if a.tel, err = telemetry.Setup(ctx, telemetry.Options{ServiceName: "keygate", OTLPEndpoint: c.OTLPEndpoint, OTLPInsecure: c.OTLPInsecure, SampleRatio: c.SampleRatio, SpanProcessors: a.SpanProcessors}); err != nil {
		return nil, err
	}
	if a.EmbedEtcd {
		if err := a.startEmbeddedEtcd(ctx); err != nil {
			return nil, err
		}
		if c.RootToken == "" {
			if c.RootToken, err = loadOrCreateRootToken(c.DataDir, a.Out); err != nil {
				return nil, err
			}
		}
	}
	// The gateway alone holds no token: it forwards each caller's.
	if c.RootToken == "" && !(len(a.Roles) == 1 && a.has(RoleGateway)) {
		return nil, errors.New("no root token: set KEYGATE_ROOT_TOKEN (the services use it to call each other)")
	}
	return decl, nil
}

// connectEtcd opens the etcd client, for the roles that keep state there.
func (a *App) connectEtcd() error {
	c := &a.Config
	if !(a.has(RoleKeystore) || a.has(RoleLimiter) || a.has(RoleUsage) || a.has(RoleEdge)) {
		return nil
	}
	if len(c.EtcdEndpoints) == 0 {
		return errors.New("no etcd: set KEYGATE_ETCD_ENDPOINTS (or run `keygate up`, which embeds one)")
	}
	etcdTLS, err := etcdClientTLS(*c)
	if err != nil {
		return err
	}
	a.etcd, err = clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints, DialTimeout: 5 * time.Second, TLS: etcdTLS, Logger: nil})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	return nil
}

// listenGRPC makes the gRPC server of the keystore, usage and limiter
// roles and binds its address; nil when this process has none of them.
func (a *App) listenGRPC() (net.Listener, error) {
	if !(a.has(RoleKeystore) || a.has(RoleLimiter) || a.has(RoleUsage)) {
		return nil, nil
	}
	lis, err := net.Listen("tcp", a.Config.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("grpc listen %s: %w", a.Config.GRPCAddr, err)
	}
	a.GRPCAddr = lis.Addr().String()
	opts := append(a.tel.ServerOptions(a.Logger),
		// Clients ping idle connections to find dead peers early; allow
		// it at the rate they use.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
	if a.tls.server != nil {
		opts = append(opts, grpc.Creds(a.tls.server))
	}
	a.grpcSrv = grpc.NewServer(opts...)
	a.health = health.NewServer()
	healthpb.RegisterHealthServer(a.grpcSrv, a.health)
	reflection.Register(a.grpcSrv)
	return lis, nil
}

// roleConns are where this process reaches each service and the
// connections its roles use.
type roleConns struct {
	self, keystoreAddr, usageAddr string
	// keystore carries no token of its own (the usage service calls with
	// the caller's credential, or its own token explicitly); edgeKeystore
	// and usage carry the service token.
	keystore, edgeKeystore, usage *grpc.ClientConn
}

// connections dials the services this process's roles call: itself over
// loopback, or the configured addresses.
func (a *App) connections() (*roleConns, error) {
	c := &a.Config
	rc := &roleConns{self: loopback(a.GRPCAddr), keystoreAddr: c.KeystoreAddr, usageAddr: c.UsageAddr}
	if a.has(RoleKeystore) {
		rc.keystoreAddr = rc.self
	}
	if a.has(RoleUsage) {
		rc.usageAddr = rc.self
	}
	var err error
	if a.has(RoleUsage) {
		if rc.keystore, err = a.dial(rc.keystoreAddr, false); err != nil {
			return nil, err
		}
	}
	if a.has(RoleEdge) || a.EmbedEtcd {
		// The edge's key cache reopens its change stream within seconds of
		// a keystore's return, whatever the outage's length: the stream's
		// reconnection is bounded by the cache's backoff, not by gRPC's
		// (which grows to two minutes).
		if rc.edgeKeystore, err = a.dial(rc.keystoreAddr, true, grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			// Without it an attempt gets only the backoff (100 ms) to connect.
			MinConnectTimeout: 20 * time.Second,
		})); err != nil {
			return nil, err
		}
	}
	// The keystore reads workspaces' credit spend from the usage service.
	if a.has(RoleLimiter) || a.has(RoleEdge) || a.has(RoleKeystore) {
		if rc.usage, err = a.dial(rc.usageAddr, true); err != nil {
			return nil, err
		}
	}
	return rc, nil
}

func (a *App) startKeystore(ctx context.Context, rc *roleConns) error {
	c := &a.Config
	kc := keystore.Config{Etcd: a.etcd, Clock: a.Clock, Logger: a.Logger.With("service", "keystore"), Meter: a.tel.MeterProvider(),
		RootToken: c.RootToken, PreviousRootTokens: c.PreviousRootTokens, StorageTimeout: c.StorageTimeout, Limits: &a.limits,
		CreditSpend: keystore.UsageCreditSpend{Usage: usagev1.NewUsageServiceClient(rc.usage)},
		Alerts: keystore.DispatchConfig{Attempts: int(c.AlertAttempts), Backoff: c.AlertBackoff, MaxBackoff: c.AlertMaxBackoff,
			Name: cmp.Or(c.AdvertiseAddr, rc.self)}}
	if c.OIDCIssuer != "" {
		v, err := oidc.New(oidc.Config{Issuer: c.OIDCIssuer, Audience: c.OIDCAudience, JWKSFile: c.OIDCJWKSFile, JWKSURL: c.OIDCJWKSURL, Clock: a.Clock})
		if err != nil {
			return err
		}
		kc.IDTokens = v
	}
	ks, err := keystore.New(ctx, kc)
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	a.addService(keystorev1.KeystoreService_ServiceDesc.ServiceName, ks.Register, ks.Close)
	// Clears expired overrides, follows the count of imported keys and
	// (one replica at a time) delivers alerts.
	a.goBackground(func() { _ = ks.Run(a.ctx) })
	return nil
}

func (a *App) startUsage(ctx context.Context, rc *roleConns) error {
	c := &a.Config
	log := a.Logger.With("service", "usage")
	rlog, err := usage.OpenRequestLog(ctx, c.RequestLog, filepath.Join(c.DataDir, "request-log"), c.RequestLogMaxBytes, log)
	if err != nil {
		return err
	}
	a.closers = append(a.closers, rlog.Close)
	us, err := usage.New(ctx, usage.Config{Etcd: a.etcd, Clock: a.Clock, Logger: log, Meter: a.tel.MeterProvider(),
		ServiceToken: c.RootToken, PreviousServiceTokens: c.PreviousRootTokens,
		Keystore: keystorev1.NewKeystoreServiceClient(rc.keystore), RequestLog: rlog})
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	// The ledger commits until its Close, after the gRPC server drained:
	// records sent while it drains are still counted.
	a.usage = us
	a.goBackground(func() { _ = us.Run(context.WithoutCancel(a.ctx)) })
	a.addService(usagev1.UsageService_ServiceDesc.ServiceName, us.Register, us.Close)
	return nil
}

func (a *App) startLimiter(ctx context.Context, rc *roleConns) error {
	c := &a.Config
	adv := cmp.Or(c.AdvertiseAddr, rc.self)
	lim, err := limiter.New(ctx, limiter.Config{
		Etcd: a.etcd, Clock: a.Clock, Logger: a.Logger.With("service", "limiter"), Meter: a.tel.MeterProvider(),
		Usage: usagev1.NewUsageServiceClient(rc.usage), AdvertiseAddr: adv,
		// The limiter adds the service token to forwarded calls itself.
		DialOptions: a.dialOptions(false), ServiceToken: c.RootToken, PreviousServiceTokens: c.PreviousRootTokens,
	})
	if err != nil {
		return fmt.Errorf("limiter: %w", err)
	}
	a.limiter, a.limiterAddr = lim, adv
	a.goBackground(func() { _ = lim.Run(a.ctx) })
	a.addService(limiterv1.LimiterService_ServiceDesc.ServiceName, lim.Register, lim.Close)
	return nil
}

// addService registers a role's service on the gRPC server, closes it with
// the app and reports it serving.
func (a *App) addService(name string, register func(grpc.ServiceRegistrar), close func() error) {
	register(a.grpcSrv)
	a.closers = append(a.closers, close)
	a.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
}

// startGateway serves the REST gateway and the console. Its connections
// carry no token of their own: every call holds exactly the caller's
// credential.
func (a *App) startGateway(rc *roleConns) error {
	c := &a.Config
	gwKeystore, err := a.dial(rc.keystoreAddr, false)
	if err != nil {
		return err
	}
	gwUsage, err := a.dial(rc.usageAddr, false)
	if err != nil {
		return err
	}
	h, err := gateway.New(a.ctx, gateway.Config{Keystore: gwKeystore, Usage: gwUsage, Logger: a.Logger.With("service", "gateway"),
		SSO: &console.SSO{Issuer: c.OIDCIssuer, ClientID: c.OIDCAudience}})
	if err != nil {
		return err
	}
	if a.HTTPAddr, err = a.serveHTTP("gateway", c.HTTPAddr, h, 60*time.Second); err != nil {
		return err
	}
	if a.EmbedEtcd {
		// Beside the root token `up` printed: where to use it.
		fmt.Fprintf(a.Out, "keygate: web console at %s (sign in with the root token)\n", consoleURL(a.HTTPAddr))
	}
	return nil
}

// serveOperations serves /metrics and /healthz for gRPC-only roles (the
// edge and gateway serve them on their own listeners) and the profiles.
func (a *App) serveOperations() error {
	c := &a.Config
	var err error
	if !a.has(RoleEdge) && !a.has(RoleGateway) {
		if a.MetricsAddr, err = a.serveHTTP("metrics", c.MetricsAddr, healthz(a.health), 10*time.Second); err != nil {
			return err
		}
	}
	if c.PprofAddr != "" {
		if a.PprofAddr, err = a.servePprof(c.PprofAddr); err != nil {
			return err
		}
	}
	return nil
}

// servePprof serves Go's profiles (CPU, heap, allocations, mutex, block,
// goroutines) on their own listener, for finding where time goes under
// load. Off unless --pprof-addr is set: keep it on loopback.
func (a *App) servePprof(addr string) (string, error) {
	runtime.SetMutexProfileFraction(100)
	runtime.SetBlockProfileRate(int(time.Millisecond / 10))
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// No write timeout: a CPU profile streams for as long as it was asked.
	return a.serveHTTP("pprof", addr, mux, 0)
}

func (a *App) startEdge(ctx context.Context, keystoreConn, usageConn *grpc.ClientConn) error {
	c := a.Config
	ksClient := keystorev1.NewKeystoreServiceClient(keystoreConn)
	verifier := keycache.New(ksClient, keycache.Options{
		Clock: a.Clock, Logger: a.Logger.With("component", "keycache"), Timeout: c.LimiterTimeout,
		MaxUnconfirmed: c.KeyCacheMaxUnconfirmed, Meter: a.tel.MeterProvider(),
	})
	a.goBackground(func() { _ = verifier.Run(a.ctx) })
	lc, err := a.limits.client(ctx)
	if err != nil {
		return err
	}
	var rec edge.Recorder = usagev1.NewUsageServiceClient(usageConn)
	if a.usage != nil {
		// The ledger in this process takes the usage without a loopback
		// gRPC round trip; it commits until after the edge flushed (Close).
		rec = newLocalUsage(a.usage, c.RootToken)
	}
	es, err := edge.New(edge.Config{
		Verifier: verifier, ErrInvalidKey: keycache.ErrInvalidKey, Limiter: lc,
		Usage: rec, Registry: ksClient, KeyUse: ksClient,
		Clock: a.Clock, Logger: a.Logger.With("service", "edge"), Meter: a.tel.MeterProvider(), Tracer: a.tel.Tracer,
		FailOpen: c.FailOpen, MaxBodyBytes: c.MaxBodyBytes, DefaultMaxTokens: c.DefaultMaxTokens,
		RequestTimeout: c.RequestTimeout, LimiterTimeout: c.LimiterTimeout, UsageBacklog: int(c.UsageBacklog), SpoolDir: spoolDir(c), Mock: mock.Options{Latency: c.MockLatency, ChunkDelay: c.MockChunkDelay},
	})
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	a.edge = es
	a.goBackground(func() { _ = es.Run(a.ctx) })
	// No write timeout: streamed answers last as long as the model writes;
	// the edge bounds each request with its own deadline.
	a.EdgeAddr, err = a.serveHTTP("edge", c.EdgeAddr, es.Handler(), 0)
	return err
}

// Close stops everything in the order documented on App.
func (a *App) Close() error {
	if a.cancel == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.Config.ShutdownTimeout)
	defer cancel()
	var errs []error
	if a.health != nil {
		a.health.Shutdown()
	}
	for _, s := range a.https {
		if err := s.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if a.edge != nil {
		if err := a.edge.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("edge flush: %w", err))
		}
	}
	if a.limiter != nil {
		// Before the gRPC server drains: the limiter leaves the membership
		// (edges route its keys elsewhere and close their check streams to
		// it) and hands its keys' windows to their new owners, serving
		// their pulls, within limiter.HandoverDeadline.
		if err := a.limiter.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("limiter: %w", err))
		}
	}
	// This process's own background work ends first: its streams to its
	// own gRPC server (the edge's key-change and limit-check streams)
	// would otherwise hold GracefulStop until it gives up.
	a.cancel()
	if a.grpcSrv != nil {
		done := make(chan struct{})
		go func() { a.grpcSrv.GracefulStop(); close(done) }()
		stopCtx := ctx
		if a.limiter != nil {
			// Clients that have not seen the limiter leave yet keep their
			// streams open: past a short grace they are cut (they retry
			// the keys' new owners).
			var cancel context.CancelFunc
			stopCtx, cancel = context.WithTimeout(ctx, time.Second)
			defer cancel()
		}
		select {
		case <-done:
		case <-stopCtx.Done():
			a.grpcSrv.Stop()
		}
	}
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cc := range a.conns {
		_ = cc.Close()
	}
	a.bg.Wait()
	if a.etcd != nil {
		_ = a.etcd.Close()
	}
	if a.etcdSrv != nil {
		a.etcdSrv.Close()
	}
	if a.tel != nil {
		if err := a.tel.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	a.cancel = nil
	return errors.Join(errs...)
}

func (a *App) startEmbeddedEtcd(ctx context.Context) error {
	c := &a.Config
	dir := filepath.Join(c.DataDir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	srv, err := etcdembed.Start(ctx, etcdembed.Config{
		Name: c.EtcdName, DataDir: dir, ClientURL: c.EtcdClientURL, PeerURL: c.EtcdPeerURL,
		ListenClientURL: c.EtcdListenClient, ListenPeerURL: c.EtcdListenPeer, LogLevel: c.EtcdLogLevel,
		InitialCluster: c.EtcdInitialCluster, Existing: c.EtcdExisting,
	})
	if err != nil {
		return err
	}
	a.etcdSrv = srv
	c.EtcdEndpoints = srv.Endpoints()
	a.goBackground(func() {
		select {
		case err := <-srv.Err():
			if err != nil {
				a.errc <- fmt.Errorf("embedded etcd: %w", err)
			}
		case <-a.ctx.Done():
		}
	})
	return nil
}

// registerMockModels makes the built-in mock provider and its two priced
// models available, once; an operator's later changes are kept.
func (a *App) registerMockModels(ctx context.Context, conn *grpc.ClientConn) error {
	ks := keystorev1.NewKeystoreServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := ks.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: &keystorev1.Provider{Id: "mock", BaseUrl: "mock"}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("register mock provider: %w", err)
	}
	for _, m := range []*keystorev1.Model{
		{Id: "mock-small", Provider: "mock", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60"},
		{Id: "mock-large", Provider: "mock", InputPricePerMillionUsd: "2.50", OutputPricePerMillionUsd: "10.00"},
	} {
		if _, err := ks.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: m}); err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("register model %s: %w", m.Id, err)
		}
	}
	return nil
}

// applyDeclaration applies the config file through the keystore (this
// process's own, or the configured one, waiting for it to come up).
func (a *App) applyDeclaration(ctx context.Context, d *declaration, keystoreAddr string) error {
	conn, err := a.dial(keystoreAddr, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.apply(ctx, keystorev1.NewKeystoreServiceClient(conn)); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	a.Logger.Info("config applied", "file", d.path, "providers", len(d.providers), "models", len(d.models), "workspaces", len(d.workspaces), "prune", d.prune)
	return nil
}

func (a *App) dialOptions(withToken bool) []grpc.DialOption {
	// Round-robin over every address a name resolves to, so that a
	// headless Service spreads calls over all replicas.
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(a.tls.client),
		// A peer that vanishes without closing its connections (a node
		// lost) is found within seconds, not at the next TCP timeout.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	}
	if withToken {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.Token{Value: a.Config.RootToken, Secure: a.tls.secure}))
	}
	return append(opts, a.tel.DialOptions()...)
}

// dial connects to another service. With the service token, calls carry the
// root token unless the context already carries a caller's credential.
func (a *App) dial(addr string, serviceToken bool, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := append(a.dialOptions(false), extra...)
	if serviceToken {
		opts = append(opts, grpc.WithChainUnaryInterceptor(defaultToken(a.Config.RootToken)), grpc.WithChainStreamInterceptor(defaultTokenStream(a.Config.RootToken)))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	a.conns = append(a.conns, cc)
	return cc, nil
}

func (a *App) serveHTTP(name, addr string, h http.Handler, writeTimeout time.Duration) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s listen %s: %w", name, addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.tel.MetricsHandler())
	mux.Handle("/", h)
	s := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.Logger.Handler(), slog.LevelWarn),
	}
	a.https = append(a.https, s)
	a.goServe(name, func() error {
		if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return l.Addr().String(), nil
}

func (a *App) goServe(name string, f func() error) {
	a.goBackground(func() {
		if err := f(); err != nil {
			a.errc <- fmt.Errorf("%s server: %w", name, err)
		}
	})
}

func (a *App) goBackground(f func()) {
	a.bg.Add(1)
	go func() { defer a.bg.Done(); f() }()
}

// healthz answers what the gRPC health service says of the whole server,
// so that an HTTP probe (e.g. when gRPC needs TLS) sees the same state.
func healthz(h *health.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if h != nil {
			resp, err := h.Check(r.Context(), &healthpb.HealthCheckRequest{})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"status":"NOT_SERVING"}`)
				return
			}
		}
		_, _ = io.WriteString(w, `{"status":"SERVING"}`)
	})
	return mux
}

// consoleURL is where a browser on this machine finds the web console the
// gateway serves; empty without a gateway.
func consoleURL(httpAddr string) string {
	if httpAddr == "" {
		return ""
	}
	return "http://" + loopback(httpAddr) + console.Prefix
}

// loopback turns a bound listen address into one this process can dial.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

const rootTokenFile = "root-token"

// loadOrCreateRootToken reads the root token saved under dir, or creates,
// saves (0600) and prints one. It is printed only when created.
func loadOrCreateRootToken(dir string, out io.Writer) (string, error) {
	path := filepath.Join(dir, rootTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read root token: %w", err)
	}
	tok := "kgr_" + rand.Text() + rand.Text()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save root token: %w", err)
	}
	fmt.Fprintf(out, "keygate: generated a root token, saved in %s (shown only now):\n%s\n", path, tok)
	return tok, nil
}

// spoolDir is where the edge spools usage records; "" when turned off.
func spoolDir(c Config) string {
	switch c.UsageSpool {
	case "off":
		return ""
	case "":
		return filepath.Join(c.DataDir, "edge-spool")
	default:
		return c.UsageSpool
	}
}
