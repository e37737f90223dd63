// Command keygate runs the keygate services and administers a running
// keygate. Wiring only: the program is App (app.go); signals end here.
//
//	keygate up                 every service, one process, embedded etcd
//	keygate serve <role>       one role against an external etcd
//	keygate etcd               one standalone etcd member
//	keygate workspaces|keys|audit|usage|providers|models …   admin commands
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/internal/etcdembed"
	"github.com/keygate/keygate/internal/telemetry"
)

const usageText = `keygate: API keys, rate limits and usage accounting for AI gateways.

Servers:
  keygate up                       every service in one process with an embedded etcd
  keygate serve <role>             one role: keystore, limiter, usage, edge or gateway
  keygate etcd                     one standalone etcd member for multi-process setups

Administration (talks to a running keygate over gRPC):
  keygate workspaces|keys|audit|usage|providers|models <command> [flags]

Run "keygate <command> -h" for flags; every flag has a KEYGATE_* environment variable.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "keygate:", describe(err))
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return flag.ErrHelp
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "up":
		cfg, _, err := parseConfig("up", rest, getenv)
		if err != nil {
			return err
		}
		if len(cfg.EtcdEndpoints) > 0 {
			return errors.New("keygate up embeds its own etcd: leave KEYGATE_ETCD_ENDPOINTS empty, or use keygate serve")
		}
		if getenv("KEYGATE_ETCD_CLIENT_URL") == "" && !flagSet(rest, "etcd-client-url") {
			// The embedded member needs no fixed port of its own.
			cfg.EtcdClientURL = "http://127.0.0.1:0"
		}
		app := &App{Config: cfg, Roles: AllRoles, EmbedEtcd: true, Logger: telemetry.NewLogger(stderr, cfg.LogLevel), Out: stdout}
		return app.Run(ctx)
	case "serve":
		if len(rest) == 0 {
			return errors.New("serve: name a role: keystore, limiter, usage, edge or gateway")
		}
		role := Role(rest[0])
		if !validRole(role) {
			return fmt.Errorf("serve: unknown role %q: want keystore, limiter, usage, edge or gateway", rest[0])
		}
		cfg, _, err := parseConfig("serve "+rest[0], rest[1:], getenv)
		if err != nil {
			return err
		}
		app := &App{Config: cfg, Roles: []Role{role}, Logger: telemetry.NewLogger(stderr, cfg.LogLevel), Out: stdout}
		return app.Run(ctx)
	case "etcd":
		cfg, _, err := parseConfig("etcd", rest, getenv)
		if err != nil {
			return err
		}
		return runEtcd(ctx, cfg, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	default:
		return runAdmin(ctx, cmd, rest, getenv, stdout)
	}
}

func runEtcd(ctx context.Context, cfg Config, stderr io.Writer) error {
	log := telemetry.NewLogger(stderr, cfg.LogLevel)
	srv, err := etcdembed.Start(ctx, etcdembed.Config{
		Name: cfg.EtcdName, DataDir: filepath.Join(cfg.DataDir, "etcd"), ClientURL: cfg.EtcdClientURL,
		PeerURL: cfg.EtcdPeerURL, ListenClientURL: cfg.EtcdListenClient, ListenPeerURL: cfg.EtcdListenPeer, LogLevel: cfg.EtcdLogLevel,
		InitialCluster: cfg.EtcdInitialCluster, Existing: cfg.EtcdExisting,
	})
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

// describe shows a server's answer as "NOT_FOUND: key … not found" rather
// than gRPC's "rpc error: code = NotFound desc = …".
func describe(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return canonicalCode(st.Code()) + ": " + st.Message()
	}
	return err.Error()
}

func canonicalCode(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func validRole(r Role) bool {
	for _, x := range AllRoles {
		if x == r {
			return true
		}
	}
	return false
}

func flagSet(args []string, name string) bool {
	for _, a := range args {
		if a == "-"+name || a == "--"+name || len(a) > len(name)+2 && (a[:len(name)+2] == "-"+name+"=" || a[:len(name)+3] == "--"+name+"=") {
			return true
		}
	}
	return false
}
