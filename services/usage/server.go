package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/rpcerr"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// Config is what the usage service needs.
type Config struct {
	Etcd *clientv3.Client
	// Clock tells the time; nil means the real clock.
	Clock  clock.Clock
	Logger *slog.Logger
	// Meter provides instruments; nil means no metrics.
	Meter metric.MeterProvider
	// ServiceToken is required (authorization: Bearer) on RecordUsage and
	// GetTotals, and sent to the keystore for model prices.
	ServiceToken string
	// PreviousServiceTokens are still accepted while a rotation rolls out.
	PreviousServiceTokens []string
	// Keystore gives model prices and authorizes management calls, which
	// are forwarded with the caller's credential.
	Keystore keystorev1.KeystoreServiceClient
	// RequestLog stores the per-request log (reqlog.Pebble embedded, or
	// reqlog.Postgres). Required; the caller opens and closes it.
	RequestLog RequestLog
	// Retention of the request log, and how old a record may be when it
	// arrives; default 7 days, at most MaxRetention.
	Retention time.Duration
}

// RequestLog is where the per-request log lives (see reqlog).
type RequestLog interface {
	Append(ctx context.Context, es []reqlog.Entry) error
	List(ctx context.Context, q reqlog.Query) (reqlog.Page, error)
	Trim(ctx context.Context, cutoff time.Time) (int, error)
	// Cap keeps a workspace's newest keep entries and deletes the rest.
	Cap(ctx context.Context, ws string, keep int) (int, error)
}

var _ RequestLog = (*reqlog.Pebble)(nil)
var _ RequestLog = (*reqlog.Postgres)(nil)

// DefaultRetention is how long request log entries are kept, and how late
// a record may arrive.
const DefaultRetention = 7 * 24 * time.Hour

// MaxRetention keeps late records out of days already rolled up into
// months, where no marks recognise a retry: rollups keep the current and
// the previous month as days.
const MaxRetention = 28 * 24 * time.Hour

// keystore is what this service asks of the keystore.
type keystore interface {
	modelLister
	GetKey(ctx context.Context, in *keystorev1.GetKeyRequest, opts ...grpc.CallOption) (*keystorev1.GetKeyResponse, error)
	GetWorkspace(ctx context.Context, in *keystorev1.GetWorkspaceRequest, opts ...grpc.CallOption) (*keystorev1.GetWorkspaceResponse, error)
}

var _ keystore = keystorev1.KeystoreServiceClient(nil)

// Server is the UsageService.
type Server struct {
	usagev1.UnimplementedUsageServiceServer

	clk       clock.Clock
	log       *slog.Logger
	st        store
	ks        keystore
	prices    *priceBook
	com       *committer
	token     auth.Tokens
	rlog      RequestLog
	retention time.Duration

	runCtx context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ usagev1.UsageServiceServer = (*Server)(nil)

// New makes the ledger; Run commits and trims it, Close stops it.
func New(ctx context.Context, cfg Config) (*Server, error) {
	switch {
	case cfg.Etcd == nil:
		return nil, errors.New("usage: Config.Etcd is required")
	case cfg.Keystore == nil:
		return nil, errors.New("usage: Config.Keystore is required")
	case cfg.ServiceToken == "":
		return nil, errors.New("usage: Config.ServiceToken is required")
	case cfg.RequestLog == nil:
		return nil, errors.New("usage: Config.RequestLog is required")
	case cfg.Retention < 0 || cfg.Retention > MaxRetention:
		return nil, fmt.Errorf("usage: Config.Retention must be between 0 and %s", MaxRetention)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meter == nil {
		cfg.Meter = noop.NewMeterProvider()
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	m, err := newMeters(cfg.Meter.Meter("github.com/keygate/keygate/services/usage"))
	if err != nil {
		return nil, fmt.Errorf("usage: metrics: %w", err)
	}
	st := store{cli: cfg.Etcd}
	com := newCommitter(st, cfg.RequestLog, cfg.Logger, m)
	s := &Server{
		clk: cfg.Clock, log: cfg.Logger, st: st, ks: cfg.Keystore, com: com,
		prices:    &priceBook{ks: cfg.Keystore, token: cfg.ServiceToken, clk: cfg.Clock},
		token:     auth.NewTokens(cfg.ServiceToken, cfg.PreviousServiceTokens...),
		rlog:      cfg.RequestLog,
		retention: cfg.Retention,
	}
	s.runCtx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return s, nil
}

// Run commits recorded usage (RecordUsage waits for it) and trims the
// ledger until ctx ends or Close; then it finishes the group being
// committed and returns.
func (s *Server) Run(ctx context.Context) error {
	s.wg.Add(1)
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.runCtx, cancel)()
	var wg sync.WaitGroup
	wg.Go(s.com.run)
	wg.Go(func() { s.runJanitor(ctx) })
	<-ctx.Done()
	s.com.close()
	wg.Wait()
	return nil
}

// Register adds the UsageService to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) { usagev1.RegisterUsageServiceServer(r, s) }

// Close stops Run; RecordUsage calls still waiting fail with UNAVAILABLE,
// and their client retries elsewhere.
func (s *Server) Close() error {
	s.cancel()
	s.com.close()
	s.wg.Wait()
	return nil
}

func (s *Server) checkService(ctx context.Context) error {
	if !s.token.Match(auth.BearerFromIncoming(ctx)) {
		return errNoToken
	}
	return nil
}

// RecordUsage implements usagev1.UsageServiceServer.
func (s *Server) RecordUsage(ctx context.Context, req *usagev1.RecordUsageRequest) (*usagev1.RecordUsageResponse, error) {
	if err := s.checkService(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	o, err := s.record(ctx, req)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &usagev1.RecordUsageResponse{Accepted: int32(o.accepted), Duplicates: int32(o.duplicates)}, nil
}

// GetUsage implements usagev1.UsageServiceServer.
func (s *Server) GetUsage(ctx context.Context, req *usagev1.GetUsageRequest) (*usagev1.GetUsageResponse, error) {
	k, err := s.authorizeKey(ctx, req.GetWorkspace(), req.GetKey())
	if err != nil {
		return nil, err
	}
	resp, err := s.usage(ctx, k, req.GetModel())
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return resp, nil
}

// GetUsageSeries implements usagev1.UsageServiceServer.
func (s *Server) GetUsageSeries(ctx context.Context, req *usagev1.GetUsageSeriesRequest) (*usagev1.GetUsageSeriesResponse, error) {
	k, err := s.authorizeKey(ctx, req.GetWorkspace(), req.GetKey())
	if err != nil {
		return nil, err
	}
	pts, err := s.series(ctx, k.GetId(), req.GetModel(), req.GetStartDate(), req.GetEndDate())
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &usagev1.GetUsageSeriesResponse{Points: pts}, nil
}

// ListUsage implements usagev1.UsageServiceServer.
func (s *Server) ListUsage(ctx context.Context, req *usagev1.ListUsageRequest) (*usagev1.ListUsageResponse, error) {
	only, err := s.authorizeWorkspace(ctx, req.GetWorkspace())
	if err != nil {
		return nil, err
	}
	rows, err := s.listUsage(ctx, req.GetWorkspace(), req.GetGroupBy(), req.GetStartDate(), req.GetEndDate(), only)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &usagev1.ListUsageResponse{Rows: rows}, nil
}

// ListRequests implements usagev1.UsageServiceServer.
func (s *Server) ListRequests(ctx context.Context, req *usagev1.ListRequestsRequest) (*usagev1.ListRequestsResponse, error) {
	only, err := s.authorizeWorkspace(ctx, req.GetWorkspace())
	if err != nil {
		return nil, err
	}
	if only != "" {
		// A member reads only the requests of their own keys.
		if req.GetOwner() != "" && req.GetOwner() != only {
			return nil, status.Error(codes.PermissionDenied, "members read only their own requests")
		}
		req = proto.Clone(req).(*usagev1.ListRequestsRequest)
		req.Owner = only
	}
	resp, err := s.listRequests(ctx, req)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return resp, nil
}

// GetTotals implements usagev1.UsageServiceServer.
func (s *Server) GetTotals(ctx context.Context, req *usagev1.GetTotalsRequest) (*usagev1.GetTotalsResponse, error) {
	if err := s.checkService(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	t, err := s.totals(ctx, req)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &usagev1.GetTotalsResponse{Totals: t}, nil
}

// authorizeKey asks the keystore, with the caller's credential, for the
// key: its answer decides access and gives the key's limits.
func (s *Server) authorizeKey(ctx context.Context, ws, key string) (*keystorev1.Key, error) {
	if ws == "" || key == "" {
		return nil, status.Error(codes.InvalidArgument, "workspace and key are required")
	}
	// Without a credential there is nothing to forward; never let the
	// connection's own identity stand in for the caller's.
	if auth.BearerFromIncoming(ctx) == "" {
		return nil, status.Error(codes.Unauthenticated, "missing credential: send authorization: Bearer <token>")
	}
	resp, err := s.ks.GetKey(auth.ForwardIncoming(ctx), &keystorev1.GetKeyRequest{Workspace: ws, Key: key})
	if err != nil {
		return nil, keystoreStatus(err)
	}
	return resp.GetKey(), nil
}

// authorizeWorkspace asks the keystore, with the caller's credential,
// whether the caller may read the workspace. For a plain member it returns
// the member's subject: they see only their own keys' usage. Owners, admins
// and the root token get "".
func (s *Server) authorizeWorkspace(ctx context.Context, ws string) (only string, err error) {
	if ws == "" {
		return "", status.Error(codes.InvalidArgument, "workspace is required")
	}
	if auth.BearerFromIncoming(ctx) == "" {
		return "", status.Error(codes.Unauthenticated, "missing credential: send authorization: Bearer <token>")
	}
	resp, err := s.ks.GetWorkspace(auth.ForwardIncoming(ctx), &keystorev1.GetWorkspaceRequest{Workspace: ws})
	if err != nil {
		return "", keystoreStatus(err)
	}
	switch resp.GetCallerRole() {
	case keystorev1.Role_ROLE_OWNER, keystorev1.Role_ROLE_ADMIN:
		return "", nil
	}
	if resp.GetCaller() == "" {
		return "", status.Error(codes.PermissionDenied, "the keystore did not say who the caller is")
	}
	return resp.GetCaller(), nil
}

// keystoreStatus passes the keystore's verdict on the caller through;
// anything else means the keystore could not answer.
func keystoreStatus(err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.NotFound, codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument:
		return status.Error(st.Code(), st.Message())
	default:
		return status.Error(codes.Unavailable, "keystore unavailable for authorization; retry")
	}
}

// toStatus is where the ledger's errors become gRPC status codes; the
// shared ones (credential, caller gone, a peer's status, anything
// unexpected, logged with its cause) go through rpcerr.
func (s *Server) toStatus(ctx context.Context, err error) error {
	var inv *InvalidError
	switch {
	case errors.As(err, &inv):
		return status.Error(codes.InvalidArgument, inv.Msg)
	case errors.Is(err, ErrUnavailable):
		s.log.WarnContext(ctx, "usage ledger unavailable", slog.Any("error", err))
		return status.Error(codes.Unavailable, "usage ledger unavailable; a retry is safe")
	default:
		return rpcerr.Status(ctx, s.log, "usage", err)
	}
}
