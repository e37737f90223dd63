// Command keygate runs the keygate services and administers a running
// keygate. Wiring only: the program is App (app.go), the command tree is
// built in root.go; signals end here.
//
//	keygate up                 every service, one process, embedded etcd
//	keygate serve <role>       one role against an external etcd
//	keygate etcd               one standalone etcd member
//	keygate workspaces|keys|audit|usage|providers|models …   admin commands
//	keygate completion bash|zsh|fish|powershell              shell completion
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(report(err, os.Stderr))
}

// report tells the user what went wrong, if anything, and returns the exit
// status: 0, or 1 after any error.
func report(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if !errors.Is(err, errUsage) {
		fmt.Fprintln(stderr, "keygate:", describe(err))
	}
	return 1
}

// run runs keygate with args, as main does with the command line.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	root := newRootCmd(getenv, stdout, stderr)
	if args == nil {
		// Cobra reads os.Args when given none.
		args = []string{}
	}
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
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
