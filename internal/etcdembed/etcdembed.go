// Package etcdembed runs an etcd member inside the process: the store behind
// `keygate up`, one member of a `keygate etcd` cluster, and test fixtures.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config describes one member.
type Config struct {
	// Name of this member; default "default".
	Name    string
	DataDir string
	// ClientURL and PeerURL are advertised to clients and peers, e.g.
	// http://etcd-0.etcd:2379.
	ClientURL string
	PeerURL   string
	// ListenClientURL and ListenPeerURL are bound; default the advertised
	// URLs. Set them (e.g. http://0.0.0.0:2379) when the advertised URL
	// names a host, which etcd cannot bind.
	ListenClientURL string
	ListenPeerURL   string
	// InitialCluster lists every member as name=peerURL,…; default this one.
	InitialCluster string
	// Existing joins a cluster that already runs ("existing" state).
	Existing bool
	// LogLevel of etcd's own logs; default "error".
	LogLevel string
	// ReadyTimeout bounds the wait for the member to serve; default 60s.
	ReadyTimeout time.Duration
	// ClientTLS and PeerTLS secure the client and peer URLs (which then use
	// https). A CA makes the member require certificates it signed.
	ClientTLS TLSFiles
	PeerTLS   TLSFiles
	// ListenMetricsURL serves /metrics, /livez and /readyz in plaintext,
	// for probes and scrapes that hold no client certificate.
	ListenMetricsURL string
}

// TLSFiles are the PEM files of one listener; no CertFile means plaintext.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
}

func (f TLSFiles) info() transport.TLSInfo {
	return transport.TLSInfo{CertFile: f.CertFile, KeyFile: f.KeyFile, TrustedCAFile: f.CAFile, ClientCertAuth: f.CAFile != ""}
}

// Server is a running member.
type Server struct {
	etcd *embed.Etcd
	// closing is set by Close: etcd then logs its listeners' shutdown as
	// errors, which a clean stop should not show.
	closing *atomic.Bool
	scheme  string // of the client URLs: http or https
}

// Start starts a member and waits until it serves clients.
func Start(ctx context.Context, c Config) (*Server, error) {
	cfg := embed.NewConfig()
	if c.Name != "" {
		cfg.Name = c.Name
	}
	cfg.Dir = c.DataDir
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("etcd client url: %w", err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("etcd peer url: %w", err)
	}
	lcu, lpu := cu, pu
	if c.ListenClientURL != "" {
		if lcu, err = url.Parse(c.ListenClientURL); err != nil {
			return nil, fmt.Errorf("etcd listen client url: %w", err)
		}
	}
	if c.ListenPeerURL != "" {
		if lpu, err = url.Parse(c.ListenPeerURL); err != nil {
			return nil, fmt.Errorf("etcd listen peer url: %w", err)
		}
	}
	cfg.ListenClientUrls = []url.URL{*lcu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*lpu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.ClientTLSInfo = c.ClientTLS.info()
	cfg.PeerTLSInfo = c.PeerTLS.info()
	if c.ListenMetricsURL != "" {
		mu, err := url.Parse(c.ListenMetricsURL)
		if err != nil {
			return nil, fmt.Errorf("etcd listen metrics url: %w", err)
		}
		cfg.ListenMetricsUrls = []url.URL{*mu}
	}
	cfg.InitialCluster = c.InitialCluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
	}
	if c.Existing {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	cfg.LogLevel = c.LogLevel
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	cfg.LogOutputs = []string{"stderr"}
	closing := &atomic.Bool{}
	lvl, err := zapcore.ParseLevel(cfg.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("etcd log level: %w", err)
	}
	zc := zap.NewProductionEncoderConfig()
	zc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zc), zapcore.Lock(os.Stderr), lvl)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(quietClose{Core: core, closing: closing}, zap.AddCaller()))
	// Keep the keyspace history bounded: the usage ledger writes steadily,
	// and an hour of history at 1,000 requests/s nears the 2 GiB quota.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "10m"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	timeout := c.ReadyTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, closing: closing, scheme: cu.Scheme}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed: %w", err)
	case <-t.C:
		e.Close()
		return nil, errors.New("etcd did not become ready in time")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}

// Endpoints are the client URLs to dial.
func (s *Server) Endpoints() []string {
	out := make([]string, 0, len(s.etcd.Clients))
	for _, l := range s.etcd.Clients {
		out = append(out, s.scheme+"://"+l.Addr().String())
	}
	return out
}

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the member; etcd finishes in-flight requests and syncs its WAL.
func (s *Server) Close() {
	s.closing.Store(true)
	s.etcd.Close()
}

// quietClose drops the errors etcd logs for its own listeners closing,
// once Close has begun; everything else passes.
type quietClose struct {
	zapcore.Core
	closing *atomic.Bool
}

func (q quietClose) With(f []zapcore.Field) zapcore.Core {
	return quietClose{Core: q.Core.With(f), closing: q.closing}
}

func (q quietClose) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if q.Enabled(e.Level) {
		return ce.AddCore(e, q)
	}
	return ce
}

func (q quietClose) Write(e zapcore.Entry, f []zapcore.Field) error {
	if q.closing.Load() && e.Message == "setting up serving from embedded etcd failed." {
		return nil
	}
	return q.Core.Write(e, f)
}
