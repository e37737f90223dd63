package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

// cliRun runs keygate in-process as main does, and returns what it wrote
// and its exit status.
func cliRun(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), args, func(k string) string { return env[k] }, &out, &errOut)
	code = report(err, &errOut)
	return out.String(), errOut.String(), code
}

// commandPaths lists every command below c as the words a user types.
func commandPaths(c *cobra.Command, prefix []string) [][]string {
	var paths [][]string
	for _, sub := range c.Commands() {
		p := append(slices.Clone(prefix), sub.Name())
		paths = append(paths, p)
		paths = append(paths, commandPaths(sub, p)...)
	}
	return paths
}

func isAdminPath(path []string) bool {
	return len(path) > 0 && slices.Contains([]string{"workspaces", "keys", "audit", "usage", "providers", "models"}, path[0])
}

// helpSecrets are credentials in the environment that no help may show.
func helpSecrets() map[string]string {
	return map[string]string{"KEYGATE_TOKEN": "kga_secret-admin-key", "KEYGATE_ROOT_TOKEN": "kgr_secret-root-token"}
}

// requireCleanHelp checks one help text: its usage line, no line garbled
// (backquotes, which flag help takes for a value's name; a formatting
// mistake; a sentinel default; trailing spaces), no credential, and the
// environment variables of the administration commands where they apply.
func requireCleanHelp(t *testing.T, help string, path []string) {
	t.Helper()
	require.Contains(t, help, "Usage:\n  "+strings.Join(append([]string{"keygate"}, path...), " "))
	for _, secret := range helpSecrets() {
		require.NotContains(t, help, secret)
	}
	for i, line := range strings.Split(help, "\n") {
		require.NotContains(t, line, "`", "line %d: %q", i+1, line)
		require.NotContains(t, line, "%!", "line %d: %q", i+1, line)
		require.NotContains(t, line, "(default -1)", "line %d: %q", i+1, line)
		require.Equal(t, strings.TrimRight(line, " "), line, "line %d ends in spaces", i+1)
	}
	if len(path) == 0 || isAdminPath(path) {
		for _, env := range []string{"KEYGATE_ADDR", "KEYGATE_TOKEN", "KEYGATE_WORKSPACE", "KEYGATE_OUTPUT"} {
			require.Contains(t, help, env)
		}
	}
}

// TestHelp: every command answers --help, -h and keygate help <command>
// on stdout, with a clean help text.
func TestHelp(t *testing.T) {
	t.Parallel()
	paths := append(commandPaths(newRootCmd(noEnv, io.Discard, io.Discard), nil), []string{})
	require.Greater(t, len(paths), 40)
	for _, path := range paths {
		t.Run(strings.Join(append([]string{"keygate"}, path...), " "), func(t *testing.T) {
			t.Parallel()
			for _, args := range [][]string{
				append(slices.Clone(path), "--help"),
				append(slices.Clone(path), "-h"),
				append([]string{"help"}, path...),
			} {
				out, errOut, code := cliRun(t, helpSecrets(), args...)
				require.Zero(t, code, "keygate %s: %s", strings.Join(args, " "), errOut)
				require.Empty(t, errOut)
				requireCleanHelp(t, out, path)
			}
		})
	}
}

// TestServerHelp: the server commands list every flag config.go parses,
// and the README's flag table names only flags that exist.
func TestServerHelp(t *testing.T) {
	t.Parallel()
	fs := newServerFlags("up", noEnv).fs
	for _, path := range [][]string{{"up"}, {"etcd"}, {"serve", "keystore"}, {"serve", "edge"}} {
		out, _, code := cliRun(t, nil, append(path, "--help")...)
		require.Zero(t, code)
		fs.VisitAll(func(f *flag.Flag) {
			require.Contains(t, out, "--"+f.Name+" ", "keygate %s --help", strings.Join(path, " "))
			require.Contains(t, out, "$"+envName(f.Name))
		})
	}

	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	named := 0
	for line := range strings.SplitSeq(string(readme), "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		for _, m := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(line, -1) {
			require.NotNil(t, fs.Lookup(m[1]), "README names --%s, which keygate up does not have", m[1])
			named++
		}
	}
	require.Greater(t, named, 30)
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		out, errOut, code := cliRun(t, nil, "completion", shell)
		require.Zero(t, code, errOut)
		require.Contains(t, out, "keygate", shell)
	}
	out, _, _ := cliRun(t, nil, "completion", "bash")
	require.Contains(t, out, "__start_keygate")

	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{""}, []string{"up", "serve", "keys", "completion"}},
		{[]string{"keys", ""}, []string{"create", "rotate", "delete"}},
		{[]string{"serve", ""}, []string{"keystore", "limiter", "usage", "edge", "gateway"}},
		{[]string{"keys", "create", "--bud"}, []string{"--budget", "--budget-period"}},
		{[]string{"keys", "list", "--work"}, []string{"--workspace"}},
		{[]string{"workspaces", "add-member", "acme", "bob", ""}, []string{"owner", "admin", "member"}},
		{[]string{"help", "ke"}, []string{"keys"}},
		{[]string{"up", "--grp"}, []string{"--grpc-addr"}},
		{[]string{"serve", "edge", "--edge"}, []string{"--edge-addr"}},
		{[]string{"help", "keys", "ro"}, []string{"rotate"}},
	} {
		out, errOut, code := cliRun(t, nil, append([]string{cobra.ShellCompRequestCmd}, c.args...)...)
		require.Zero(t, code, errOut)
		var got []string
		for line := range strings.SplitSeq(out, "\n") {
			name, _, _ := strings.Cut(line, "\t")
			got = append(got, name)
		}
		for _, w := range c.want {
			require.Contains(t, got, w, "completing %q", c.args)
		}
	}
}

// TestCLIErrors: a mistake is one clear line on stderr and exit status 1.
func TestCLIErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate", "now"}, `keygate: unknown command "frobnicate" for "keygate"`},
		{"unknown verb", []string{"keys", "frobnicate"}, `unknown command "frobnicate" for "keygate keys": want create, delete`},
		{"misspelt verb", []string{"keys", "lst"}, "did you mean list"},
		{"no verb", []string{"usage"}, `name a command for "keygate usage": get, list, requests, series`},
		{"unknown flag", []string{"keys", "list", "--nope"}, "unknown flag: --nope (see keygate keys list --help)"},
		{"flag of another verb", []string{"keys", "get", "k1", "--grace", "1h"}, "unknown flag: --grace"},
		{"missing argument", []string{"keys", "get"}, "usage: keygate keys get <key-id> [flags]"},
		{"extra argument", []string{"workspaces", "list", "extra"}, "usage: keygate workspaces list [flags]"},
		{"unknown server flag", []string{"up", "--nope"}, "flag provided but not defined: -nope (see keygate up --help)"},
		{"bad server flag", []string{"serve", "edge", "--log-level", "loud"}, "--log-level: want debug, info, warn or error"},
		{"no role", []string{"serve"}, "serve: name a role: keystore, limiter, usage, edge or gateway"},
		{"unknown role", []string{"serve", "frobnicate"}, `serve: unknown role "frobnicate"`},
		{"unknown shell", []string{"completion", "tcsh"}, `unknown command "tcsh" for "keygate completion": want bash, fish`},
		{"help on an unknown command", []string{"help", "frobnicate"}, `unknown command "frobnicate" for "keygate"`},
		{"help on an unknown verb", []string{"help", "keys", "frobnicate"}, `unknown command "frobnicate" for "keygate keys"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := cliRun(t, nil, c.args...)
			require.Equal(t, 1, code, "keygate %s", strings.Join(c.args, " "))
			require.Contains(t, errOut, c.want)
			require.Equal(t, 1, strings.Count(errOut, "\n"), "one line: %q", errOut)
			require.Empty(t, out)
		})
	}

	t.Run("no command", func(t *testing.T) {
		t.Parallel()
		out, errOut, code := cliRun(t, nil)
		require.Equal(t, 1, code)
		require.Empty(t, out)
		requireCleanHelp(t, errOut, nil)
		require.NotContains(t, errOut, "keygate: ", "the usage, and no error line")
	})
}

// TestAdminSettings: each connection flag defaults to its environment
// variable; a flag given wins, even an empty one.
func TestAdminSettings(t *testing.T) {
	t.Parallel()
	all := map[string]string{
		"KEYGATE_ADDR": "env:1", "KEYGATE_TOKEN": "kga_env", "KEYGATE_ROOT_TOKEN": "kgr_env",
		"KEYGATE_WORKSPACE": "env-ws", "KEYGATE_OUTPUT": "json",
	}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want admin
	}{
		{"defaults", nil, nil, admin{addr: "127.0.0.1:9090", output: "table"}},
		{"environment", all, nil, admin{addr: "env:1", token: "kga_env", workspace: "env-ws", output: "json"}},
		{"root token without an admin key", map[string]string{"KEYGATE_ROOT_TOKEN": "kgr_env"}, nil,
			admin{addr: "127.0.0.1:9090", token: "kgr_env", output: "table"}},
		{"flags win", all, []string{"--addr", "flag:2", "--token", "kga_flag", "--workspace", "flag-ws", "--output", "table"},
			admin{addr: "flag:2", token: "kga_flag", workspace: "flag-ws", output: "table"}},
		{"an empty flag wins", all, []string{"--token", "", "--workspace="},
			admin{addr: "env:1", output: "json"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a := &admin{getenv: func(k string) string { return c.env[k] }}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			a.flags(fs)
			require.NoError(t, fs.Parse(c.args))
			a.fromEnv(fs)
			require.Equal(t, c.want, admin{addr: a.addr, token: a.token, workspace: a.workspace, output: a.output})
		})
	}
}
