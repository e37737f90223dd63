// Package keystore is the keystore service: workspaces, members and roles,
// API keys, the model registry and the audit log, all kept in etcd.
//
// Files: keystore.go (config, errors, callers and their rights), store.go
// (etcd layout and encoding), keys.go, workspaces.go, registry.go, audit.go,
// watch.go (domain operations), validate.go, server.go (the gRPC adapter:
// the only place that knows status codes).
package keystore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/oidc"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/pkg/keyformat"
)

// Config holds the dependencies of the keystore.
type Config struct {
	Etcd   *clientv3.Client
	Clock  clock.Clock // nil = clock.Real{}
	Logger *slog.Logger
	Meter  metric.MeterProvider // nil = noop
	// RootToken is the bootstrap root token; other keygate services use it
	// as their service token.
	RootToken string
	// PreviousRootTokens are still accepted as the root token while a
	// rotation rolls out.
	PreviousRootTokens []string
	// DefaultMaxKeys is the key cap of a workspace created without one; 0 = 10.
	DefaultMaxKeys int
	// IDTokens verifies OIDC ID tokens from the configured SSO issuer; nil
	// accepts none. The token's subject acts as that member, with the
	// member's role in whichever workspace a call names.
	IDTokens IDTokenVerifier
	// StorageTimeout bounds the etcd work of one management call; default
	// 2 s. Past it the call answers Unavailable.
	StorageTimeout time.Duration
	// Limits answers ExplainKey from the limiter's live state; nil makes
	// ExplainKey answer FailedPrecondition.
	Limits LimitExplainer
	// CreditSpend answers GetCredits' spend (UsageCreditSpend); nil makes
	// GetCredits of a workspace holding credits answer FailedPrecondition.
	CreditSpend CreditSpend
	// Alerts tunes the alert dispatcher (RunDispatcher).
	Alerts DispatchConfig
}

// IDTokenVerifier checks an OIDC ID token and returns its subject.
type IDTokenVerifier interface {
	Verify(ctx context.Context, token string) (subject string, err error)
}

// Domain errors. server.go maps them to gRPC codes.
var (
	errNoCredential     = fmt.Errorf("%w: send authorization: Bearer <root token or admin key>", auth.ErrUnauthenticated)
	ErrInvalidKey       = errors.New("invalid API key")
	ErrPermissionDenied = errors.New("permission denied")
	ErrNotFound         = errors.New("not found")
	ErrAlreadyExists    = errors.New("already exists")
	ErrConflict         = errors.New("etag mismatch: the object changed since it was read; read it again and retry")
	ErrPrecondition     = errors.New("failed precondition")
)

// FieldError is invalid input, naming the field at fault.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Server implements keystorev1.KeystoreServiceServer.
type Server struct {
	keystorev1.UnimplementedKeystoreServiceServer

	etcd      *clientv3.Client
	clock     clock.Clock
	log       *slog.Logger
	rootToken auth.Tokens
	idTokens  IDTokenVerifier
	maxKeys   int
	// storageTimeout bounds the etcd work of one management call.
	storageTimeout time.Duration
	auditSeq       atomic.Uint32
	// auditReplica tells this replica's audit ids from another's written
	// in the same nanosecond.
	auditReplica uint32
	// legacyKeys counts the imported keys (legacyUnknown until known):
	// VerifyKey looks up a secret without keygate's prefix only when some
	// exist.
	legacyKeys atomic.Int64

	limits LimitExplainer

	creditSpend CreditSpend
	dispatch    DispatchConfig

	alertsDelivered metric.Int64Counter

	verifications metric.Int64Counter
	changes       metric.Int64Counter
}

var _ keystorev1.KeystoreServiceServer = (*Server)(nil)

// New checks cfg and returns a keystore server.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Etcd == nil {
		return nil, errors.New("keystore: Config.Etcd is required")
	}
	if len(cfg.RootToken) < 16 {
		return nil, errors.New("keystore: root token must be at least 16 characters")
	}
	if cfg.DefaultMaxKeys < 0 {
		return nil, errors.New("keystore: DefaultMaxKeys must not be negative")
	}
	if cfg.StorageTimeout <= 0 {
		cfg.StorageTimeout = 2 * time.Second
	}
	if err := cfg.Alerts.defaults(); err != nil {
		return nil, err
	}
	s := &Server{
		storageTimeout: cfg.StorageTimeout,
		limits:         cfg.Limits,
		etcd:           cfg.Etcd,
		clock:          cfg.Clock,
		log:            cfg.Logger,
		rootToken:      auth.NewTokens(cfg.RootToken, cfg.PreviousRootTokens...),
		idTokens:       cfg.IDTokens,
		maxKeys:        cfg.DefaultMaxKeys,
		creditSpend:    cfg.CreditSpend,
		dispatch:       cfg.Alerts,
	}
	s.auditReplica = randomUint32()
	s.legacyKeys.Store(legacyUnknown)
	if s.clock == nil {
		s.clock = clock.Real{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxKeys == 0 {
		s.maxKeys = 10
	}
	mp := cfg.Meter
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter("github.com/keygate/keygate/services/keystore")
	var err error
	if s.verifications, err = m.Int64Counter("keygate.keystore.verifications",
		metric.WithUnit("{verification}"),
		metric.WithDescription("VerifyKey calls by result (valid, invalid)")); err != nil {
		return nil, fmt.Errorf("keystore: metric: %w", err)
	}
	if s.changes, err = m.Int64Counter("keygate.keystore.changes",
		metric.WithUnit("{change}"),
		metric.WithDescription("Committed changes by action")); err != nil {
		return nil, fmt.Errorf("keystore: metric: %w", err)
	}
	if s.alertsDelivered, err = m.Int64Counter("keygate.keystore.alerts_delivered",
		metric.WithUnit("{delivery}"),
		metric.WithDescription("Alert deliveries to webhooks by outcome (delivered, retry, failed, no_webhook)")); err != nil {
		return nil, fmt.Errorf("keystore: metric: %w", err)
	}
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, s) }

// Close releases nothing today: the etcd client belongs to the caller, and
// open change streams end with their RPCs.
func (s *Server) Close() error { return nil }

// principal is a verified caller.
type principal struct {
	root bool
	// subject is "root" for the root token, else the member the admin key
	// acts for.
	subject    string
	credential string
	// workspace and role of an admin key; the root token has neither.
	workspace string
	role      keystorev1.Role
	keyID     string
	// roleIn resolves an ID token's subject's role in the workspace a call
	// names (the subject may belong to several); nil for other credentials.
	roleIn func(ws string) (keystorev1.Role, error)
}

const (
	rootSubject   = "root"
	credRootToken = "root_token"
	credAdminKey  = "admin_key"
	credOIDC      = "oidc"
)

// authenticate resolves the bearer credential of an incoming call.
func (s *Server) authenticate(ctx context.Context) (*principal, error) {
	tok := auth.BearerFromIncoming(ctx)
	if tok == "" {
		return nil, errNoCredential
	}
	if s.rootToken.Match(tok) {
		return &principal{root: true, subject: rootSubject, credential: credRootToken}, nil
	}
	if s.idTokens != nil && oidc.LooksLikeJWT(tok) {
		sub, err := s.idTokens.Verify(ctx, tok)
		if err != nil {
			if errors.Is(err, oidc.ErrInvalidToken) {
				return nil, errNoCredential
			}
			return nil, err
		}
		return &principal{subject: sub, credential: credOIDC, roleIn: func(ws string) (keystorev1.Role, error) {
			return s.memberRole(ctx, ws, sub)
		}}, nil
	}
	k, err := keyformat.Parse(tok)
	if err != nil || k.Kind != keyformat.Admin {
		return nil, errNoCredential
	}
	vk, err := s.verify(ctx, k)
	if errors.Is(err, ErrInvalidKey) {
		return nil, errNoCredential
	}
	if err != nil {
		return nil, err
	}
	if vk.member == nil {
		// The owner left the workspace: the key acts for nobody.
		return nil, errNoCredential
	}
	return &principal{
		subject:    vk.key.GetOwner(),
		credential: credAdminKey,
		workspace:  vk.key.GetWorkspace(),
		role:       vk.member.GetRole(),
		keyID:      vk.key.GetId(),
	}, nil
}

// inWorkspace hides every other workspace from an admin key: the answer is
// the one a missing workspace gets.
func (p *principal) inWorkspace(ws string) error {
	if p.root || p.workspace == ws {
		return nil
	}
	if p.roleIn != nil && p.workspace == "" && ws != "" {
		role, err := p.roleIn(ws)
		if err == nil {
			p.workspace, p.role = ws, role
			return nil
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return fmt.Errorf("workspace %q: %w", ws, ErrNotFound)
}

// manager reports whether p manages every key of its workspace.
func (p *principal) manager() bool {
	return p.root || p.role == keystorev1.Role_ROLE_OWNER || p.role == keystorev1.Role_ROLE_ADMIN
}

func (p *principal) requireRoot() error {
	if !p.root {
		return fmt.Errorf("%w: this call needs the root token", ErrPermissionDenied)
	}
	return nil
}

// canManageKey: owners and admins manage every standard key of the
// workspace and their own admin keys; another member's admin key acts with
// that member's rights, so only owners (and root) manage it, or an admin
// could rotate an owner's admin key and act as the owner. Members manage
// their own standard keys.
func (p *principal) canManageKey(k *keystorev1.Key) error {
	own := k.GetOwner() == p.subject
	switch {
	case p.root:
		return nil
	case k.GetKind() == keystorev1.KeyKind_KEY_KIND_ADMIN:
		if own && p.manager() || p.role == keystorev1.Role_ROLE_OWNER {
			return nil
		}
		if own {
			return fmt.Errorf("%w: owners and admins manage admin keys, a member's own included", ErrPermissionDenied)
		}
		return fmt.Errorf("%w: only owners manage another member's admin keys", ErrPermissionDenied)
	case p.manager() || own:
		return nil
	}
	return fmt.Errorf("%w: members manage only their own standard keys", ErrPermissionDenied)
}

// roleRank orders roles by the rights they give.
func roleRank(r keystorev1.Role) int {
	switch r {
	case keystorev1.Role_ROLE_OWNER:
		return 3
	case keystorev1.Role_ROLE_ADMIN:
		return 2
	case keystorev1.Role_ROLE_MEMBER:
		return 1
	}
	return 0
}
