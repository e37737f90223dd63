// Command benche2e measures keygate end to end, as a user runs it: the real
// binary (`keygate up`, embedded etcd, usage ledger) in front of an
// OpenAI-compatible upstream, against a bare httputil.ReverseProxy in
// front of the same upstream, every party in its own process:
//
//	benche2e                the harness: builds keygate, starts the rest, prints the table
//	benche2e -upstream A    hidden: the upstream (services/edge/mock) on A
//	benche2e -proxy A …     hidden: the bare reverse proxy on A
//	benche2e -loadgen URL … hidden: the closed-loop load generator
//
// The harness runs the contenders interleaved (bare, then keygate, per
// round), takes each server's CPU from /proc/<pid>/stat, and at the end
// checks that keygate's usage ledger holds exactly one request per 200
// answer it gave. It exits 1 when the ledger check fails, 2 on any other
// failure.
//
//	make bench-edge-e2e BENCH_E2E_FLAGS='-duration 5s -conns 1,16'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if code, ok := childMain(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(harnessMain(os.Args[1:], os.Stdout, os.Stderr))
}

func harnessMain(args []string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "benche2e:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts.Progress = stderr
	res, err := Run(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "benche2e:", err)
		return 2
	}
	res.Print(stdout)
	if !res.Ledger.OK {
		return 1
	}
	return 0
}

// Options of one harness run.
type Options struct {
	Keygate      string        // prebuilt keygate binary; empty: go build
	Duration     time.Duration // measured time of one run
	Requests     int           // measured requests of one run instead of Duration, when > 0
	Warmup       time.Duration // unmeasured load before each run
	Conns        []int
	Rounds       int
	Modes        []string // "unary", "stream"
	KeepData     bool
	DrainTimeout time.Duration
	// KeygateArgs are added to `keygate up`'s arguments.
	KeygateArgs []string
	// Progress receives one line per run and the setup steps; nil: none.
	Progress io.Writer
}

func parseOptions(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("benche2e", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conns := fs.String("conns", "1,16,64", "comma-separated connection counts")
	stream := fs.Bool("stream", false, "only the streamed variant (default: unary and streamed)")
	unary := fs.Bool("unary", false, "only the unary variant (default: unary and streamed)")
	fs.StringVar(&o.Keygate, "keygate", "", "path of a prebuilt keygate binary (default: go build ./cmd/keygate into a temp dir)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "measured duration of each run")
	fs.IntVar(&o.Requests, "requests", 0, "measured requests of each run instead of -duration, when > 0")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "unmeasured load before each run")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds per connection count and mode (bare, then keygate, each round)")
	fs.BoolVar(&o.KeepData, "keep-data", false, "keep the temp dir (keygate's data dir, every process's log) and print its path")
	kgArgs := fs.String("keygate-args", "", "extra arguments for `keygate up`, space-separated (e.g. \"--request-log-max-bytes 67108864\")")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 2*time.Minute, "how long to wait for keygate's ledger to count every request")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: benche2e [flags]\n\nEnd-to-end benchmark: keygate against a bare reverse proxy, in front of the same upstream.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.KeygateArgs = strings.Fields(*kgArgs)
	for _, s := range strings.Split(*conns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-conns: want positive integers, got %q", s)
		}
		o.Conns = append(o.Conns, n)
	}
	switch {
	case *unary && !*stream:
		o.Modes = []string{modeUnary}
	case *stream && !*unary:
		o.Modes = []string{modeStream}
	default:
		o.Modes = []string{modeUnary, modeStream}
	}
	if o.Rounds < 1 {
		return o, errors.New("-rounds must be at least 1")
	}
	if o.Duration <= 0 && o.Requests <= 0 {
		return o, errors.New("-duration must be positive (or set -requests)")
	}
	if o.Warmup < 0 || o.DrainTimeout <= 0 {
		return o, errors.New("-warmup must not be negative, -drain-timeout must be positive")
	}
	return o, nil
}
