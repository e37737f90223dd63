package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keygate/keygate/pkg/client"
)

// adminTimeout bounds one administration command, connection included.
const adminTimeout = 30 * time.Second

// admin is what every administration command shares: the connection
// settings, the output and, once connected, the client. One run executes
// one command, so the commands of a tree share one admin.
type admin struct {
	getenv    func(string) string
	addr      string
	token     string
	workspace string
	output    string
	out       io.Writer
	c         *client.Client
}

// adminCmds are the nouns of the administration commands.
func adminCmds(getenv func(string) string) []*cobra.Command {
	a := &admin{getenv: getenv}
	return []*cobra.Command{a.workspacesCmd(), a.keysCmd(), a.limitsCmd(), a.creditsCmd(), a.webhooksCmd(),
		a.alertsCmd(), a.auditCmd(), a.usageCmd(), a.providersCmd(), a.modelsCmd()}
}

// noun groups the verbs of one resource, such as keys create and keys
// list, under the connection flags they share.
func (a *admin) noun(cmd *cobra.Command, verbs ...*cobra.Command) *cobra.Command {
	cmd.Long = cmd.Short + ".\n\n" + adminEnvHelp
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = needVerb
	cmd.SuggestionsMinimumDistance = 2
	a.flags(cmd.PersistentFlags())
	cmd.AddCommand(verbs...)
	return cmd
}

// flags registers the connection flags. Their defaults come from the
// environment only when a command runs (fromEnv), so that help never shows
// a credential.
func (a *admin) flags(fs *pflag.FlagSet) {
	fs.StringVar(&a.addr, "addr", "127.0.0.1:9090", "gRPC address of a running keygate ($KEYGATE_ADDR)")
	fs.StringVar(&a.token, "token", "", "credential: an admin key or the root token ($KEYGATE_TOKEN, else $KEYGATE_ROOT_TOKEN)")
	fs.StringVar(&a.workspace, "workspace", "", "workspace id ($KEYGATE_WORKSPACE)")
	fs.StringVar(&a.output, "output", "table", "table or json ($KEYGATE_OUTPUT)")
}

// fromEnv fills each connection flag the command line left out from its
// environment variable.
func (a *admin) fromEnv(fs *pflag.FlagSet) {
	for name, p := range map[string]*string{"addr": &a.addr, "workspace": &a.workspace, "output": &a.output} {
		if v := a.getenv(envName(name)); v != "" && !fs.Changed(name) {
			*p = v
		}
	}
	if !fs.Changed("token") {
		a.token = a.getenv("KEYGATE_TOKEN")
		if a.token == "" {
			a.token = a.getenv("KEYGATE_ROOT_TOKEN")
		}
	}
}

// verb makes cmd an administration command that runs do connected, within
// adminTimeout.
func (a *admin) verb(cmd *cobra.Command, do func(ctx context.Context, args []string) error) *cobra.Command {
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		a.fromEnv(cmd.Flags())
		a.out = cmd.OutOrStdout()
		if err := a.connect(); err != nil {
			return err
		}
		defer a.c.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), adminTimeout)
		defer cancel()
		return do(ctx, args)
	}
	return cmd
}

// inWorkspace is verb for commands about one workspace's keys, usage or
// audit log, which need --workspace.
func (a *admin) inWorkspace(cmd *cobra.Command, do func(ctx context.Context, args []string) error) *cobra.Command {
	return a.verb(cmd, func(ctx context.Context, args []string) error {
		if a.workspace == "" {
			return errors.New("--workspace (or KEYGATE_WORKSPACE) is required")
		}
		return do(ctx, args)
	})
}

// connect checks the connection settings and makes the client.
func (a *admin) connect() error {
	if a.output != "table" && a.output != "json" {
		return fmt.Errorf("--output: want table or json, got %q", a.output)
	}
	if a.token == "" {
		return errors.New("no credential: set KEYGATE_TOKEN (an admin key) or KEYGATE_ROOT_TOKEN, or pass --token")
	}
	c, err := client.New(a.addr, a.token, client.WithWorkspace(a.workspace))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", a.addr, err)
	}
	a.c = c
	return nil
}

// exactArgs wants n positional arguments and shows the usage line when
// they are not there.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return errors.New("usage: " + cmd.UseLine())
		}
		return nil
	}
}

func (a *admin) json(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return fmt.Errorf("json: %w", err)
	}
	_, err = fmt.Fprintln(a.out, string(b))
	return err
}

func (a *admin) table(header string, rows [][]string) error {
	w := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

// deleted reports a deletion, or the error that prevented it.
func (a *admin) deleted(what string, err error) error {
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.out, "deleted "+what)
	return err
}
