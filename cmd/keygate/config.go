package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/internal/etcdembed"
)

// Config is every setting of the binary, parsed once from flags, each with a
// KEYGATE_* environment variable as its default.
type Config struct {
	DataDir string
	// ConfigFile declares providers, models and workspaces, applied at
	// start (declare.go).
	ConfigFile string
	// RequestLog is the usage request log's store ("" = embedded).
	RequestLog         string
	RequestLogMaxBytes int64
	// PprofAddr serves Go's profiles when set.
	PprofAddr string
	// GCPercent is the garbage collector's target (GOGC) unless the GOGC
	// variable sets one; -1 turns the collector off.
	GCPercent int64
	// UsageSpool is the edge's usage spool directory ("off" = none).
	UsageSpool string
	// UsageBacklog bounds an edge's unacknowledged usage records.
	UsageBacklog  int64
	HTTPAddr      string
	EdgeAddr      string
	GRPCAddr      string
	MetricsAddr   string
	EtcdEndpoints []string
	RootToken     string
	// PreviousRootTokens are still accepted during a root token rotation.
	PreviousRootTokens []string
	LogLevel           slog.Level
	OTLPEndpoint       string
	OTLPInsecure       bool
	SampleRatio        float64

	// Where a single-role process finds the others.
	KeystoreAddr  string
	UsageAddr     string
	AdvertiseAddr string

	// Edge.
	FailOpen         bool
	MaxBodyBytes     int64
	DefaultMaxTokens int64
	RequestTimeout   time.Duration
	LimiterTimeout   time.Duration
	// KeyCacheMaxUnconfirmed bounds how long the edge's key cache answers
	// without its change stream.
	KeyCacheMaxUnconfirmed time.Duration
	// StorageTimeout bounds the etcd work of one management call.
	StorageTimeout time.Duration
	MockLatency    time.Duration
	MockChunkDelay time.Duration

	// Embedded etcd member (keygate etcd, keygate up).
	EtcdName           string
	EtcdClientURL      string
	EtcdPeerURL        string
	EtcdInitialCluster string
	EtcdExisting       bool
	EtcdListenClient   string
	EtcdListenPeer     string
	EtcdLogLevel       string
	// The member's TLS (keygate etcd): its client URL, and its peer URL.
	EtcdServerTLS etcdembed.TLSFiles
	EtcdPeerTLS   etcdembed.TLSFiles
	// EtcdListenMetrics serves /metrics, /livez and /readyz in plaintext,
	// for probes and scrapes that hold no client certificate.
	EtcdListenMetrics string
	// How the roles dial EtcdEndpoints over TLS.
	EtcdCA   string
	EtcdCert string
	EtcdKey  string

	// SSO: OIDC ID tokens from one issuer authenticate console users.
	OIDCIssuer   string
	OIDCAudience string
	OIDCJWKSFile string
	OIDCJWKSURL  string

	// TLS between services (PEM files); empty = plaintext.
	TLSCert string
	TLSKey  string
	TLSCA   string

	ShutdownTimeout time.Duration

	// Alert delivery to webhooks (the keystore's dispatcher).
	AlertAttempts   int64
	AlertBackoff    time.Duration
	AlertMaxBackoff time.Duration
}

// envFlags registers flags whose defaults come from the environment.
type envFlags struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
}

func (e *envFlags) env(name string) string { return envName(name) }

// envName is the environment variable of a flag: --grpc-addr has
// KEYGATE_GRPC_ADDR.
func envName(flag string) string {
	return "KEYGATE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func (e *envFlags) str(p *string, name, def, usage string) {
	if v := e.getenv(e.env(name)); v != "" {
		def = v
	}
	e.fs.StringVar(p, name, def, usage+" ($"+e.env(name)+")")
}

func (e *envFlags) boolean(p *bool, name string, def bool, usage string) {
	if v := e.getenv(e.env(name)); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("$%s: want true or false, got %q", e.env(name), v))
		}
		def = b
	}
	e.fs.BoolVar(p, name, def, usage+" ($"+e.env(name)+")")
}

func (e *envFlags) int64(p *int64, name string, def int64, usage string) {
	if v := e.getenv(e.env(name)); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("$%s: want an integer, got %q", e.env(name), v))
		}
		def = n
	}
	e.fs.Int64Var(p, name, def, usage+" ($"+e.env(name)+")")
}

func (e *envFlags) float(p *float64, name string, def float64, usage string) {
	if v := e.getenv(e.env(name)); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("$%s: want a number, got %q", e.env(name), v))
		}
		def = f
	}
	e.fs.Float64Var(p, name, def, usage+" ($"+e.env(name)+")")
}

func (e *envFlags) duration(p *time.Duration, name string, def time.Duration, usage string) {
	if v := e.getenv(e.env(name)); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("$%s: want a duration such as 30s, got %q", e.env(name), v))
		}
		def = d
	}
	e.fs.DurationVar(p, name, def, usage+" ($"+e.env(name)+")")
}

// parseConfig reads flags for a server command (up, serve, etcd).
func parseConfig(name string, args []string, getenv func(string) string) (Config, []string, error) {
	return newServerFlags(name, getenv).parse(args)
}

// serverFlags is the flag set of a server command and the values it fills
// in. It is built apart from parsing so that help can show the flags.
type serverFlags struct {
	fs  *flag.FlagSet
	env *envFlags
	c   Config
	// Parsed into Config after the flags.
	endpoints, previous, level string
}

// newServerFlags registers every server flag, its default taken from its
// KEYGATE_* variable when set.
func newServerFlags(name string, getenv func(string) string) *serverFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	s := &serverFlags{fs: fs, env: &envFlags{fs: fs, getenv: getenv}}
	c, e := &s.c, s.env
	e.str(&c.DataDir, "data-dir", "keygate-data", "directory for etcd data and the generated root token")
	e.str(&c.ConfigFile, "config", "", "YAML file of providers, models and workspaces, applied at start (idempotent; all or nothing)")
	e.str(&c.HTTPAddr, "http-addr", ":8080", "REST gateway listen address")
	e.str(&c.EdgeAddr, "edge-addr", ":8081", "OpenAI-compatible edge listen address")
	e.str(&c.GRPCAddr, "grpc-addr", ":9090", "gRPC listen address (every service)")
	e.str(&c.MetricsAddr, "metrics-addr", ":9464", "/metrics and /healthz for roles without an HTTP port")
	// No backquotes in a usage: flag help would take the quoted words for
	// the value's name.
	e.str(&s.endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs; empty in keygate up runs an embedded member")
	e.str(&c.RootToken, "root-token", "", "bootstrap root token; keygate up generates one under the data dir when empty")
	e.str(&s.previous, "previous-root-tokens", "", "comma-separated root tokens still accepted while a new one rolls out to every process")
	e.str(&s.level, "log-level", "info", "debug, info, warn or error")
	e.str(&c.OTLPEndpoint, "otlp-endpoint", getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "OTLP/gRPC trace collector host:port; empty disables export")
	e.boolean(&c.OTLPInsecure, "otlp-insecure", true, "send traces without TLS")
	e.float(&c.SampleRatio, "trace-sample-ratio", 1, "share of requests traced when exporting (sampled requests check limits unary, with per-request limiter spans)")
	e.str(&c.KeystoreAddr, "keystore-addr", "127.0.0.1:9090", "keystore gRPC address (serve edge|usage|gateway)")
	e.str(&c.UsageAddr, "usage-addr", "127.0.0.1:9090", "usage gRPC address (serve edge|limiter|gateway)")
	e.str(&c.AdvertiseAddr, "advertise-addr", "", "gRPC address peers dial to reach this limiter; default derived from --grpc-addr")
	e.str(&c.RequestLog, "request-log", "", "where the usage service keeps the request log: empty = embedded store under the data dir; postgres://… = PostgreSQL")
	e.int64(&c.RequestLogMaxBytes, "request-log-max-bytes", 10<<30, "disk the embedded request log may use; the oldest entries go first")
	e.int64(&c.GCPercent, "gc-percent", 400, "Go garbage collector target (heap growth in % before a collection, as GOGC); the GOGC variable, when set, wins. Lower it to trade CPU for memory")
	e.str(&c.PprofAddr, "pprof-addr", "", "serve Go's profiles (/debug/pprof/) here, e.g. 127.0.0.1:6060; off when empty")
	e.str(&c.UsageSpool, "usage-spool", "", "the edge's usage spool directory (records survive an edge crash); empty = <data-dir>/edge-spool, \"off\" = memory only")
	e.int64(&c.UsageBacklog, "usage-backlog", 200_000, "usage records an edge may hold for the ledger; past it the edge answers 503 usage_backlog")
	e.boolean(&c.FailOpen, "fail-open", false, "admit requests when no limiter answers (default: 503 limiter_unavailable)")
	e.int64(&c.MaxBodyBytes, "max-body-bytes", 4<<20, "largest request body the edge accepts")
	e.int64(&c.DefaultMaxTokens, "default-max-tokens", 1024, "completion tokens reserved when a request sets no max_tokens")
	e.duration(&c.RequestTimeout, "request-timeout", 120*time.Second, "deadline of one inference request")
	e.duration(&c.LimiterTimeout, "limiter-timeout", 2*time.Second, "deadline of the edge's key and limit checks; past it the request answers 503 (or, with --fail-open, goes through)")
	e.duration(&c.StorageTimeout, "storage-timeout", 2*time.Second, "how long one management call may wait for etcd before it answers 503 unavailable (for example while etcd has no quorum)")
	e.duration(&c.KeyCacheMaxUnconfirmed, "key-cache-max-unconfirmed", 3*time.Minute, "how long the edge's key cache keeps verifying the keys it knows once its keystore change stream is lost; past it every key check asks the keystore (503 while it is down)")
	e.duration(&c.MockLatency, "mock-latency", 0, "latency the built-in mock provider adds to each answer")
	e.duration(&c.MockChunkDelay, "mock-chunk-delay", 0, "delay between the built-in mock provider's streamed chunks")
	e.str(&c.EtcdName, "etcd-name", "default", "name of the embedded etcd member")
	e.str(&c.EtcdClientURL, "etcd-client-url", "http://127.0.0.1:2379", "client URL of the embedded etcd member")
	e.str(&c.EtcdPeerURL, "etcd-peer-url", "http://127.0.0.1:2380", "peer URL of the embedded etcd member")
	e.str(&c.EtcdInitialCluster, "etcd-initial-cluster", "", "name=peerURL,… of every member; default this member alone")
	e.boolean(&c.EtcdExisting, "etcd-existing", false, "join a running cluster instead of forming a new one")
	e.str(&c.EtcdListenClient, "etcd-listen-client-url", "", "client URL to bind when it differs from --etcd-client-url, e.g. http://0.0.0.0:2379")
	e.str(&c.EtcdListenPeer, "etcd-listen-peer-url", "", "peer URL to bind when it differs from --etcd-peer-url")
	e.str(&c.EtcdLogLevel, "etcd-log-level", "error", "level of the embedded etcd member's own logs: debug, info, warn, error, panic or fatal")
	e.str(&c.EtcdServerTLS.CertFile, "etcd-server-cert", "", "keygate etcd: PEM certificate of the member's client URL (https)")
	e.str(&c.EtcdServerTLS.KeyFile, "etcd-server-key", "", "keygate etcd: PEM private key of --etcd-server-cert")
	e.str(&c.EtcdServerTLS.CAFile, "etcd-server-ca", "", "keygate etcd: PEM CA bundle; when set, clients must present a certificate it signed")
	e.str(&c.EtcdPeerTLS.CertFile, "etcd-peer-cert", "", "keygate etcd: PEM certificate of the member's peer URL (https; usable as server and client)")
	e.str(&c.EtcdPeerTLS.KeyFile, "etcd-peer-key", "", "keygate etcd: PEM private key of --etcd-peer-cert")
	e.str(&c.EtcdPeerTLS.CAFile, "etcd-peer-ca", "", "keygate etcd: PEM CA bundle that signs every member's peer certificate (mutual TLS)")
	e.str(&c.EtcdListenMetrics, "etcd-listen-metrics-url", "", "keygate etcd: plaintext URL serving /metrics, /livez and /readyz, e.g. http://0.0.0.0:2381")
	e.str(&c.EtcdCA, "etcd-ca", "", "PEM CA bundle that signs the etcd members' certificates (dial --etcd-endpoints over https)")
	e.str(&c.EtcdCert, "etcd-cert", "", "PEM client certificate presented to etcd")
	e.str(&c.EtcdKey, "etcd-key", "", "PEM private key of --etcd-cert")
	e.str(&c.OIDCIssuer, "oidc-issuer", "", "issuer (iss) of trusted OIDC ID tokens; empty disables SSO sign-in")
	e.str(&c.OIDCAudience, "oidc-audience", "", "audience (aud) the ID tokens must carry: the console's client id")
	e.str(&c.OIDCJWKSFile, "oidc-jwks-file", "", "the issuer's JSON Web Key Set, as a file")
	e.str(&c.OIDCJWKSURL, "oidc-jwks-url", "", "the issuer's JSON Web Key Set, as a URL")
	e.str(&c.TLSCert, "tls-cert", "", "PEM certificate this process serves gRPC with")
	e.str(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	e.str(&c.TLSCA, "tls-ca", "", "PEM CA bundle that signs the other services' certificates (and clients', for mutual TLS)")
	e.int64(&c.AlertAttempts, "alert-attempts", 8, "attempts to deliver an alert to a webhook before it is marked failed")
	e.duration(&c.AlertBackoff, "alert-backoff", time.Second, "wait after an alert's first failed delivery, doubling after each one (jittered)")
	e.duration(&c.AlertMaxBackoff, "alert-max-backoff", 5*time.Minute, "longest wait between an alert's delivery attempts")
	e.duration(&c.ShutdownTimeout, "shutdown-timeout", 20*time.Second, "how long in-flight requests may finish on SIGTERM")
	return s
}

// given reports whether the command line named the flag.
func (s *serverFlags) given(name string) bool {
	found := false
	s.fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// parse parses args and checks the settings.
func (s *serverFlags) parse(args []string) (Config, []string, error) {
	if err := s.fs.Parse(args); err != nil {
		return s.c, nil, err
	}
	c := s.c
	if len(s.env.errs) > 0 {
		return c, nil, errors.Join(s.env.errs...)
	}
	for _, ep := range strings.Split(s.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			c.EtcdEndpoints = append(c.EtcdEndpoints, ep)
		}
	}
	for _, p := range strings.Split(s.previous, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.PreviousRootTokens = append(c.PreviousRootTokens, p)
		}
	}
	if err := c.LogLevel.UnmarshalText([]byte(s.level)); err != nil {
		return c, nil, fmt.Errorf("--log-level: want debug, info, warn or error, got %q", s.level)
	}
	if c.SampleRatio <= 0 || c.SampleRatio > 1 {
		return c, nil, errors.New("--trace-sample-ratio must be in (0, 1]")
	}
	if c.GCPercent < -1 || c.GCPercent == 0 {
		return c, nil, errors.New("--gc-percent must be positive, or -1 to turn the collector off")
	}
	if c.MaxBodyBytes <= 0 {
		return c, nil, errors.New("--max-body-bytes must be positive")
	}
	if c.DefaultMaxTokens <= 0 {
		return c, nil, errors.New("--default-max-tokens must be positive")
	}
	if c.RequestTimeout <= 0 || c.ShutdownTimeout <= 0 || c.LimiterTimeout <= 0 {
		return c, nil, errors.New("--request-timeout, --limiter-timeout and --shutdown-timeout must be positive")
	}
	if c.KeyCacheMaxUnconfirmed < 2*time.Second {
		// The keystore confirms the cache every second.
		return c, nil, errors.New("--key-cache-max-unconfirmed must be at least 2s")
	}
	if c.AlertAttempts < 1 || c.AlertAttempts > 100 || c.AlertBackoff <= 0 || c.AlertMaxBackoff < c.AlertBackoff {
		return c, nil, errors.New("--alert-attempts must be 1-100, --alert-backoff positive and --alert-max-backoff at least --alert-backoff")
	}
	if err := checkTLSFlags(c); err != nil {
		return c, nil, err
	}
	if c.OIDCIssuer != "" && (c.OIDCAudience == "" || (c.OIDCJWKSFile == "") == (c.OIDCJWKSURL == "")) {
		return c, nil, errors.New("--oidc-issuer needs --oidc-audience and one of --oidc-jwks-file, --oidc-jwks-url")
	}
	return c, s.fs.Args(), nil
}

// checkTLSFlags: every certificate comes with its key, and a member's CA
// (which requires client certificates) only with a certificate to serve.
func checkTLSFlags(c Config) error {
	pairs := []struct{ cert, key, ca, name string }{
		{c.TLSCert, c.TLSKey, "", "--tls-cert and --tls-key"},
		{c.EtcdCert, c.EtcdKey, "", "--etcd-cert and --etcd-key"},
		{c.EtcdServerTLS.CertFile, c.EtcdServerTLS.KeyFile, c.EtcdServerTLS.CAFile, "--etcd-server-cert and --etcd-server-key"},
		{c.EtcdPeerTLS.CertFile, c.EtcdPeerTLS.KeyFile, c.EtcdPeerTLS.CAFile, "--etcd-peer-cert and --etcd-peer-key"},
	}
	for _, p := range pairs {
		if (p.cert == "") != (p.key == "") {
			return errors.New(p.name + " go together")
		}
		if p.ca != "" && p.cert == "" {
			return errors.New(p.name + " are needed with their CA")
		}
	}
	return nil
}

func osGetenv(k string) string { return os.Getenv(k) }
