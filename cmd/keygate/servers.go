package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/keygate/keygate/internal/etcdembed"
	"github.com/keygate/keygate/internal/telemetry"
)

// serverCmds are the commands that run keygate: up, serve <role> and etcd.
func serverCmds(getenv func(string) string) []*cobra.Command {
	return []*cobra.Command{upCmd(getenv), serveCmd(getenv), etcdCmd(getenv)}
}

// serverStart runs a server command once its flags are parsed.
type serverStart func(cmd *cobra.Command, cfg Config, flags *serverFlags) error

// serverCmd wires a server command to config.go's parser rather than
// cobra's, so that its flags keep Go's syntax (-flag as well as --flag) and
// their KEYGATE_* defaults; cobra only lists them in the help. The listed
// defaults ignore the environment, so that help never shows a token.
func serverCmd(cmd *cobra.Command, getenv func(string) string, start serverStart) *cobra.Command {
	cmd.DisableFlagParsing = true
	cmd.Args = cobra.ArbitraryArgs
	cmd.Flags().AddGoFlagSet(newServerFlags(cmd.Name(), noEnv).fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		flags := newServerFlags(cmd.CommandPath(), getenv)
		flags.fs.SetOutput(io.Discard)
		cfg, _, err := flags.parse(args)
		if errors.Is(err, flag.ErrHelp) {
			return cmd.Help()
		}
		if err != nil {
			return flagError(cmd, err)
		}
		if pct, ok := gcPercent(cfg, getenv); ok {
			debug.SetGCPercent(pct)
		}
		return start(cmd, cfg, flags)
	}
	return cmd
}

func noEnv(string) string { return "" }

// gcPercent is the collector target a server sets: --gc-percent, unless
// GOGC chose one (the runtime applied it already). A server allocates per
// request and holds little, so the default 400 spends a quarter of Go's
// default collector CPU for a heap that peaks at five times its live size
// rather than twice.
func gcPercent(cfg Config, getenv func(string) string) (int, bool) {
	if getenv("GOGC") != "" {
		return 0, false
	}
	return int(cfg.GCPercent), true
}

func upCmd(getenv func(string) string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run every service in one process with an embedded etcd",
		Long: `Run every service in one process with an embedded etcd member: the REST
gateway, the OpenAI- and Anthropic-compatible edge, and every gRPC service.
It registers the built-in mock provider. Every flag has a KEYGATE_*
environment variable; flags win.`,
		Example: "  keygate up\n  keygate up --config keygate.yaml --data-dir /var/lib/keygate",
	}
	return serverCmd(cmd, getenv, func(cmd *cobra.Command, cfg Config, flags *serverFlags) error {
		if len(cfg.EtcdEndpoints) > 0 {
			return errors.New("keygate up embeds its own etcd: leave KEYGATE_ETCD_ENDPOINTS empty, or use keygate serve")
		}
		if getenv("KEYGATE_ETCD_CLIENT_URL") == "" && !flags.given("etcd-client-url") {
			// The embedded member needs no fixed port of its own.
			cfg.EtcdClientURL = "http://127.0.0.1:0"
		}
		app := &App{Config: cfg, Roles: AllRoles, EmbedEtcd: true, Logger: telemetry.NewLogger(cmd.ErrOrStderr(), cfg.LogLevel), Out: cmd.OutOrStdout()}
		return app.Run(cmd.Context())
	})
}

// roleShort says what each role serves, for help.
func roleShort(r Role) string {
	switch r {
	case RoleKeystore:
		return "Serve keys, workspaces, providers and models over gRPC"
	case RoleLimiter:
		return "Serve the rate and budget limits over gRPC"
	case RoleUsage:
		return "Serve the usage ledger and the request log over gRPC"
	case RoleEdge:
		return "Serve the OpenAI- and Anthropic-compatible edge"
	case RoleGateway:
		return "Serve the REST gateway"
	}
	return "Serve " + string(r)
}

func serveCmd(getenv func(string) string) *cobra.Command {
	serve := &cobra.Command{
		Use:   "serve <role>",
		Short: "Run one role against an external etcd",
		Long: `Run one role (keystore, limiter, usage, edge or gateway) against the etcd
named by --etcd-endpoints. Unlike keygate up, it registers no mock provider.
Every flag has a KEYGATE_* environment variable; flags win.`,
		Example: "  keygate serve keystore --etcd-endpoints http://127.0.0.1:2379 --grpc-addr :9091",
		// A role's flags may come before it; the role's command parses them.
		DisableFlagParsing: true,
		Args:               cobra.ArbitraryArgs,
		RunE:               unknownRole,
	}
	for _, r := range AllRoles {
		cmd := &cobra.Command{Use: string(r), Short: roleShort(r)}
		serve.AddCommand(serverCmd(cmd, getenv, func(cmd *cobra.Command, cfg Config, _ *serverFlags) error {
			app := &App{Config: cfg, Roles: []Role{r}, Logger: telemetry.NewLogger(cmd.ErrOrStderr(), cfg.LogLevel), Out: cmd.OutOrStdout()}
			return app.Run(cmd.Context())
		}))
	}
	return serve
}

// unknownRole answers keygate serve without a role it knows.
func unknownRole(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return errors.New("serve: name a role: keystore, limiter, usage, edge or gateway")
	case args[0] == "-h" || args[0] == "-help" || args[0] == "--help":
		return cmd.Help()
	}
	return fmt.Errorf("serve: unknown role %q: want keystore, limiter, usage, edge or gateway", args[0])
}

func etcdCmd(getenv func(string) string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Run one standalone etcd member for multi-process setups",
		Long: `Run one etcd member for keygate serve to use; three of them, each given
--etcd-initial-cluster, form a cluster. Every flag has a KEYGATE_*
environment variable; flags win.`,
		Example: "  keygate etcd --etcd-name m1 --data-dir /var/lib/keygate --etcd-initial-cluster m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380,m3=http://10.0.0.3:2380",
	}
	return serverCmd(cmd, getenv, func(cmd *cobra.Command, cfg Config, _ *serverFlags) error {
		return runEtcd(cmd.Context(), cfg, cmd.ErrOrStderr())
	})
}

func runEtcd(ctx context.Context, cfg Config, stderr io.Writer) error {
	log := telemetry.NewLogger(stderr, cfg.LogLevel)
	srv, err := etcdembed.Start(ctx, memberConfig(cfg))
	if err != nil {
		return err
	}
	defer srv.Close()
	log.Info("etcd member serving", "name", cfg.EtcdName, "client", srv.Endpoints())
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Err():
		return err
	}
}

// memberConfig is the etcd member that `keygate etcd` runs.
func memberConfig(cfg Config) etcdembed.Config {
	return etcdembed.Config{
		Name: cfg.EtcdName, DataDir: filepath.Join(cfg.DataDir, "etcd"), ClientURL: cfg.EtcdClientURL,
		PeerURL: cfg.EtcdPeerURL, ListenClientURL: cfg.EtcdListenClient, ListenPeerURL: cfg.EtcdListenPeer, LogLevel: cfg.EtcdLogLevel,
		InitialCluster: cfg.EtcdInitialCluster, Existing: cfg.EtcdExisting,
		ClientTLS: cfg.EtcdServerTLS, PeerTLS: cfg.EtcdPeerTLS, ListenMetricsURL: cfg.EtcdListenMetrics,
	}
}
