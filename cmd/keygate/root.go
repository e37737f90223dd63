package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// errUsage ends a run that printed its usage instead of doing anything:
// the exit status is 1 and no message follows.
var errUsage = errors.New("usage shown")

const rootLong = `API keys, rate limits and usage accounting for AI gateways.

The server commands run keygate; the administration commands talk to a
running keygate over gRPC. Every server flag has a KEYGATE_* environment
variable (--grpc-addr: KEYGATE_GRPC_ADDR); flags win.

` + adminEnvHelp

// adminEnvHelp is the environment of the administration commands, shown in
// the help of keygate and of each administration command.
const adminEnvHelp = `Environment of the administration commands (each is the default of its flag):
  KEYGATE_ADDR       gRPC address of a running keygate (--addr; default 127.0.0.1:9090)
  KEYGATE_TOKEN      credential: an admin key or the root token (--token; else KEYGATE_ROOT_TOKEN)
  KEYGATE_WORKSPACE  workspace of keys, usage and audit (--workspace)
  KEYGATE_OUTPUT     table or json (--output; default table)`

// newRootCmd builds the whole command tree: the server commands, which
// run keygate, and the administration commands, which talk to one.
func newRootCmd(getenv func(string) string, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "keygate",
		Short: "API keys, rate limits and usage accounting for AI gateways",
		Long:  rootLong,
		// main prints the error once, through describe.
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE:          showUsage,
	}
	// Before the completion command, which keeps the writer it finds.
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(flagError)
	root.AddGroup(&cobra.Group{ID: "servers", Title: "Servers:"}, &cobra.Group{ID: "admin", Title: "Administration:"})
	for _, c := range serverCmds(getenv) {
		c.GroupID = "servers"
		root.AddCommand(c)
	}
	for _, c := range adminCmds(getenv) {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	root.SetHelpCommand(helpCmd())
	// Made now rather than when the tree runs, so that it answers an
	// unknown shell as the other nouns answer an unknown verb.
	root.InitDefaultCompletionCmd()
	if completion, _, err := root.Find([]string{"completion"}); err == nil {
		completion.Args = cobra.ArbitraryArgs
		completion.RunE = needVerb
	}
	return root
}

// helpCmd is keygate help [command]. Cobra's own answers a command it does
// not know with the root's help and success.
func helpCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "help [command]",
		Short:             "Help about any command",
		ValidArgsFunction: completeCommands,
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := cmd.Root().Find(args)
			if err != nil {
				return fmt.Errorf("help: %w", err)
			}
			if len(rest) > 0 {
				return needVerb(target, rest)
			}
			return target.Help()
		},
	}
}

// completeCommands completes help's arguments: the commands under those
// already typed.
func completeCommands(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	target, _, err := cmd.Root().Find(args)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []cobra.Completion
	for _, c := range target.Commands() {
		if c.IsAvailableCommand() && strings.HasPrefix(c.Name(), toComplete) {
			names = append(names, cobra.CompletionWithDesc(c.Name(), c.Short))
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// showUsage answers keygate without a command: the usage on stderr and a
// failed exit, as a script that forgot the command should see.
func showUsage(cmd *cobra.Command, _ []string) error {
	cmd.SetOut(cmd.ErrOrStderr())
	if err := cmd.Help(); err != nil {
		return fmt.Errorf("help: %w", err)
	}
	return errUsage
}

// flagError points a mistyped flag at the help that lists the right ones.
func flagError(cmd *cobra.Command, err error) error {
	return fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())
}

// needVerb answers a noun given no verb or an unknown one. Cobra would print
// the help and succeed, which hides a typo from a script.
func needVerb(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("name a command for %q: %s (see %s --help)", cmd.CommandPath(), verbs(cmd), cmd.CommandPath())
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		return fmt.Errorf("unknown command %q for %q; did you mean %s?", args[0], cmd.CommandPath(), strings.Join(s, " or "))
	}
	return fmt.Errorf("unknown command %q for %q: want %s", args[0], cmd.CommandPath(), verbs(cmd))
}

// verbs lists cmd's subcommands as a user types them.
func verbs(cmd *cobra.Command) string {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return strings.Join(names, ", ")
}
