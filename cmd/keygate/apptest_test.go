package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdtest"
)

// MustRunApp runs `keygate up` in-process on free loopback ports with its data
// in dir (a new temp dir when empty), and closes it at the end of the test.
func MustRunApp(tb testing.TB, dir string, clk clock.Clock, opts ...func(*App)) *App {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	cfg, _, err := parseConfig("up", nil, func(string) string { return "" })
	if err != nil {
		tb.Fatal(err)
	}
	cfg.DataDir = dir
	cfg.HTTPAddr, cfg.EdgeAddr, cfg.GRPCAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.EtcdClientURL = "http://127.0.0.1:0"
	cfg.EtcdPeerURL = "http://" + etcdtest.FreeAddr(tb)
	cfg.ShutdownTimeout = 10 * time.Second
	// etcd logs its listeners closing as errors; tests need not see that.
	cfg.EtcdLogLevel = "fatal"
	app := &App{Config: cfg, Roles: AllRoles, EmbedEtcd: true, Clock: clk, Logger: slog.New(slog.DiscardHandler), Out: io.Discard}
	for _, o := range opts {
		o(app)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		_ = app.Close()
		tb.Fatalf("start keygate: %v", err)
	}
	tb.Cleanup(func() { _ = app.Close() })
	return app
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
