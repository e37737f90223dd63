// Package edge is keygate's data plane, speaking OpenAI's and Anthropic's
// APIs (one dialect a file, dialect.go). Every request is
// authenticated by the cached verifier, admitted by one limiter Check that
// covers every limit of the key, forwarded to the model's provider, settled
// with its actual usage, and handed to a background sender that records it
// in the usage ledger.
package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/services/edge/internal/spool"
	"github.com/keygate/keygate/services/edge/mock"
)

// Verifier checks a presented secret and returns the key with its levels
// (workspace, member) and their Check item templates. Invalid keys answer
// an error for which errors.Is(err, Config.ErrInvalidKey) holds; any other
// error means the keystore could not be asked.
type Verifier interface {
	Verify(ctx context.Context, secret string) (*keycache.Verified, error)
}

// Limiter admits requests and settles their reservations. An error from
// Check means the limiter is unavailable.
type Limiter interface {
	Check(ctx context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error)
	Settle(ctx context.Context, s []*limiterv1.Settlement) error
	Release(ctx context.Context, r []*limiterv1.Release) error
}

// Recorder writes usage records to the ledger; usagev1.UsageServiceClient
// fits.
type Recorder interface {
	RecordUsage(ctx context.Context, in *usagev1.RecordUsageRequest, opts ...grpc.CallOption) (*usagev1.RecordUsageResponse, error)
}

// Registry lists models and providers; keystorev1.KeystoreServiceClient
// fits.
type Registry interface {
	ListModels(ctx context.Context, in *keystorev1.ListModelsRequest, opts ...grpc.CallOption) (*keystorev1.ListModelsResponse, error)
	ListProviders(ctx context.Context, in *keystorev1.ListProvidersRequest, opts ...grpc.CallOption) (*keystorev1.ListProvidersResponse, error)
}

// Config is what the edge needs. Verifier, ErrInvalidKey, Limiter, Usage
// and Registry are required; the rest have defaults.
type Config struct {
	Verifier      Verifier
	ErrInvalidKey error
	Limiter       Limiter
	Usage         Recorder
	Registry      Registry
	// KeyUse records keys' last-used times in the keystore; nil = off.
	KeyUse KeyUseRecorder

	Clock  clock.Clock          // nil = the wall clock
	Logger *slog.Logger         // nil = discard
	Meter  metric.MeterProvider // nil = noop
	Tracer trace.TracerProvider // nil = noop

	// FailOpen chooses what happens when the limiter is unreachable: false
	// (the default) answers 503 limiter_unavailable; true admits the request
	// unchecked and counts it in keygate.edge.limiter.fail_open.
	FailOpen bool
	// MaxBodyBytes caps request bodies (413 above it); default 4 MiB.
	MaxBodyBytes int64
	// DefaultMaxTokens is the completion estimate when a request has no
	// max_tokens; default 1024.
	DefaultMaxTokens int64
	// RequestTimeout bounds each upstream call; default 120s.
	RequestTimeout time.Duration
	// LimiterTimeout bounds the limit check of one request; a stalled
	// limiter then answers 503 instead of hanging. Default 2s. (The
	// Verifier bounds its own keystore calls.)
	LimiterTimeout time.Duration
	// UsageBacklog is how many usage records may wait for the ledger;
	// past it the edge stops admitting requests (503 usage_backlog) until
	// the ledger catches up, rather than forget an answered request.
	// Default 200000 (about 80 MB).
	UsageBacklog int
	// Producer names this edge's usage records for the ledger's
	// exactly-once; "" = a random id per process. A spool keeps its own.
	Producer string
	// SpoolDir, when set, is the usage spool: every record is written
	// there before the answer ends and replayed after a restart until the
	// ledger has it. One edge process per directory.
	SpoolDir string
	// ModelRefresh is how often the model registry is re-read; default 5s.
	ModelRefresh time.Duration
	// KeyUseInterval is how often the last use of each key is sent to
	// KeyUse, one call for every key used since; default 10s.
	KeyUseInterval time.Duration
	// Getenv reads provider credentials by variable name; nil = os.Getenv.
	Getenv func(string) string
	// Mock shapes the built-in mock provider (base URL "mock").
	Mock mock.Options
}

// Server is the edge. Handler serves requests; Run keeps the model
// registry fresh and sends usage and settlements until its context ends;
// Close flushes what is pending.
type Server struct {
	cfg     Config
	log     *slog.Logger
	clock   clock.Clock
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
	m       *metrics
	models  *catalogHolder
	usage   *sender
	settle  *settler
	keyUse  *keyUses // nil when Config.KeyUse is nil
	idPfx   string
	idSeq   atomic.Uint64
	limDown atomic.Bool // for logging only the transitions
	// ksLogged is when a failed key verification was last logged (Unix ns).
	ksLogged atomic.Int64
	// backlogged is set while the usage backlog refuses requests.
	backlogged atomic.Bool
}

// New validates cfg and builds the edge.
func New(cfg Config) (*Server, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, errors.New("edge: no randomness for request ids")
	}
	if cfg.Producer == "" {
		cfg.Producer = "edge-" + hex.EncodeToString(rnd[:])
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger,
		clock:  cfg.Clock,
		tracer: cfg.Tracer.Tracer("github.com/keygate/keygate/services/edge"),
		prop:   propagation.TraceContext{},
		idPfx:  "req_" + hex.EncodeToString(rnd[:]),
	}
	s.usage = newSender(cfg.Usage, cfg.Producer, cfg.UsageBacklog, cfg.Logger)
	m, err := newMetrics(cfg.Meter, s.usage, cfg.Clock)
	if err != nil {
		return nil, err
	}
	s.m = m
	s.usage.sent, s.usage.refusedRecs = m.usageSent, m.usageRefused
	s.settle = newSettler(cfg.Limiter, cfg.Logger)
	s.models = newCatalogHolder(cfg.Registry, cfg.Getenv, cfg.Mock, cfg.Logger)
	if cfg.KeyUse != nil {
		if s.keyUse, err = newKeyUses(cfg.KeyUse, keyUseLimit, cfg.Meter, cfg.Logger); err != nil {
			return nil, err
		}
	}
	// Last: nothing after it may fail and leave the directory locked.
	if cfg.SpoolDir != "" {
		sp, replay, err := spool.Open(cfg.SpoolDir)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		if err := s.usage.withSpool(sp, replay); err != nil {
			_ = sp.Close()
			return nil, err
		}
	}
	return s, nil
}

// check refuses a Config missing a dependency or holding a negative size.
func (cfg *Config) check() error {
	switch {
	case cfg.Verifier == nil:
		return errors.New("edge: Config.Verifier is required")
	case cfg.ErrInvalidKey == nil:
		return errors.New("edge: Config.ErrInvalidKey is required")
	case cfg.Limiter == nil:
		return errors.New("edge: Config.Limiter is required")
	case cfg.Usage == nil:
		return errors.New("edge: Config.Usage is required")
	case cfg.Registry == nil:
		return errors.New("edge: Config.Registry is required")
	case cfg.MaxBodyBytes < 0, cfg.DefaultMaxTokens < 0, cfg.RequestTimeout < 0, cfg.UsageBacklog < 0, cfg.ModelRefresh < 0, cfg.KeyUseInterval < 0:
		return errors.New("edge: sizes and durations in Config must not be negative")
	}
	return nil
}

// setDefaults fills what cfg leaves zero.
func (cfg *Config) setDefaults() {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meter == nil {
		cfg.Meter = metricnoop.NewMeterProvider()
	}
	if cfg.Tracer == nil {
		cfg.Tracer = tracenoop.NewTracerProvider()
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 4 << 20
	}
	if cfg.DefaultMaxTokens == 0 {
		cfg.DefaultMaxTokens = 1024
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 120 * time.Second
	}
	if cfg.LimiterTimeout == 0 {
		cfg.LimiterTimeout = 2 * time.Second
	}
	if cfg.UsageBacklog == 0 {
		cfg.UsageBacklog = 200_000
	}
	if cfg.ModelRefresh == 0 {
		cfg.ModelRefresh = 5 * time.Second
	}
	if cfg.KeyUseInterval == 0 {
		cfg.KeyUseInterval = 10 * time.Second
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
}

// Handler serves the inference endpoints (see endpoints), GET /v1/models,
// GET /v1/models/{id} and GET /healthz.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Run loads the model registry, then refreshes it every ModelRefresh, and
// sends usage records, settlements and (every KeyUseInterval) keys' last
// uses, until ctx ends. It returns nil when ctx ends.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.usage.run(ctx) })
	wg.Go(func() { s.usage.syncSpool(ctx) })
	wg.Go(func() { s.settle.run(ctx) })
	wg.Go(func() { s.models.run(ctx, s.cfg.ModelRefresh) })
	wg.Go(func() { s.keyUse.run(ctx, s.cfg.KeyUseInterval) })
	wg.Wait()
	return nil
}

// Close flushes pending settlements, usage records and keys' last uses,
// giving up when ctx ends; it then reports what was not delivered. Call it
// after the HTTP server has stopped taking requests.
func (s *Server) Close(ctx context.Context) error {
	s.settle.flush(ctx)
	err := s.usage.flush(ctx)
	if s.usage.sp != nil {
		// What was not delivered stays in the spool for the next start.
		err = errors.Join(err, s.usage.sp.Close())
	}
	return errors.Join(err, s.keyUse.flush(ctx))
}
