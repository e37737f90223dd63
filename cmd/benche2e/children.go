package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keygate/keygate/internal/loadgen"
	"github.com/keygate/keygate/services/edge/mock"
)

const (
	modeUnary  = "unary"
	modeStream = "stream"

	// benchModel is the priced model the harness registers on the upstream.
	benchModel = "bench"
	// upstreamTokens is the completion length of the upstream's answers:
	// a streamed answer is a role chunk, this many word chunks, a finish
	// chunk, a usage chunk and [DONE].
	upstreamTokens = 8
)

// chatBody is what the load generator sends. The streamed variant asks for
// the usage chunk itself, so the bare proxy and keygate carry the same bytes.
func chatBody(mode string) []byte {
	if mode == modeStream {
		return []byte(`{"model":"` + benchModel + `","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`)
	}
	return []byte(`{"model":"` + benchModel + `","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`)
}

// childMain runs a hidden mode when args start with -upstream, -proxy or
// -loadgen; ok is false for anything else. The upstream and the proxy print
// their base URL as their first stdout line and serve until stdin closes or
// a signal arrives, so they never outlive the harness.
func childMain(args []string) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	mode, _, _ := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
	if !strings.HasPrefix(args[0], "-") || (mode != "upstream" && mode != "proxy" && mode != "loadgen") {
		return 0, false
	}
	fs := flag.NewFlagSet("benche2e -"+mode, flag.ContinueOnError)
	upstream := fs.String("upstream", "", "serve the upstream on this address")
	proxy := fs.String("proxy", "", "serve the bare reverse proxy on this address")
	target := fs.String("target", "", "base URL the proxy forwards to")
	var lc loadConfig
	fs.StringVar(&lc.URL, "loadgen", "", "base URL to load")
	fs.StringVar(&lc.Key, "key", "", "bearer token to send")
	fs.StringVar(&lc.Mode, "mode", modeUnary, "unary or stream")
	fs.IntVar(&lc.Conns, "conns", 1, "connections, one closed-loop client each")
	fs.DurationVar(&lc.Duration, "duration", 10*time.Second, "measured duration")
	fs.IntVar(&lc.Requests, "requests", 0, "measured requests instead of -duration, when > 0")
	fs.DurationVar(&lc.Warmup, "warmup", 0, "unmeasured load first")
	fs.BoolVar(&lc.Handshake, "handshake", false, `after the warm-up print "warm" and wait for a line on stdin`)
	if err := fs.Parse(args); err != nil {
		return 2, true
	}
	var err error
	switch mode {
	case "upstream":
		err = serve(*upstream, mock.New(mock.Options{Tokens: upstreamTokens}))
	case "proxy":
		var h http.Handler
		if h, err = newProxy(*target); err == nil {
			err = serve(*proxy, h)
		}
	case "loadgen":
		err = runLoad(lc, os.Stdin, os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benche2e -%s: %v\n", mode, err)
		return 1, true
	}
	return 0, true
}

// serve serves h on addr, prints the base URL, and returns once stdin
// closes or SIGTERM/SIGINT arrives.
func serve(addr string, h http.Handler) error {
	if addr == "" {
		return errors.New("no listen address")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	fmt.Printf("http://%s\n", l.Addr())
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case err := <-errc:
		return err
	case <-eof:
	case <-sig:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	return nil
}

// newProxy is the bare contender: an httputil.ReverseProxy that flushes
// at once (for streams) and keeps many idle upstream connections.
func newProxy(target string) (http.Handler, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("-target: want a base URL, got %q", target)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        4096,
			MaxIdleConnsPerHost: 4096,
			IdleConnTimeout:     90 * time.Second,
		},
		FlushInterval: -1,
	}
	// The proxy flushes the answer's headers at once, and an HTTP/1 server
	// may then close the request body the transport is still copying
	// upstream (the upstream answers as soon as it has parsed the JSON),
	// which breaks the answer off. Full duplex keeps the body readable.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		rp.ServeHTTP(w, r)
	}), nil
}

type loadConfig struct {
	URL, Key, Mode string
	Conns          int
	Duration       time.Duration
	Requests       int
	Warmup         time.Duration
	Handshake      bool
}

// phaseResult is one phase of a load run. Throughput and latency count 200
// answers only; a 200 whose body is cut short counts as an error.
type phaseResult struct {
	Requests   int64            `json:"requests"`
	Status     map[string]int64 `json:"status"`
	Errors     int64            `json:"errors"`
	FirstError string           `json:"first_error,omitempty"`
	Seconds    float64          `json:"seconds"`
	RPS        float64          `json:"rps"`
	P50us      float64          `json:"p50_us"`
	P99us      float64          `json:"p99_us"`
	// CPUus is the load generator's own user+system CPU over the phase.
	CPUus float64 `json:"cpu_us"`
}

func (p phaseResult) ok() int64 { return p.Status["200"] }

// loadResult is the load generator's output line.
type loadResult struct {
	phaseResult
	URL    string      `json:"url"`
	Mode   string      `json:"mode"`
	Conns  int         `json:"connections"`
	Warmup phaseResult `json:"warmup"`
}

type loader struct {
	cfg    loadConfig
	url    string
	body   []byte
	client *http.Client
}

// runLoad is the load generator: cfg.Conns goroutines, each a closed loop
// of POST /v1/chat/completions on its own keep-alive connection.
func runLoad(cfg loadConfig, stdin io.Reader, stdout io.Writer) error {
	if cfg.URL == "" || cfg.Conns < 1 || (cfg.Mode != modeUnary && cfg.Mode != modeStream) {
		return errors.New("need -loadgen URL, -conns ≥ 1 and -mode unary|stream")
	}
	l := &loader{
		cfg:  cfg,
		url:  strings.TrimSuffix(cfg.URL, "/") + "/v1/chat/completions",
		body: chatBody(cfg.Mode),
		client: &http.Client{
			Timeout: 60 * time.Second,
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				MaxConnsPerHost:     cfg.Conns,
				MaxIdleConns:        cfg.Conns,
				MaxIdleConnsPerHost: cfg.Conns,
				IdleConnTimeout:     5 * time.Minute,
				DisableCompression:  true,
			},
		},
	}
	out := loadResult{URL: cfg.URL, Mode: cfg.Mode, Conns: cfg.Conns}
	if cfg.Warmup > 0 {
		out.Warmup = l.phase(cfg.Warmup, 0)
	}
	if cfg.Handshake {
		fmt.Fprintln(stdout, "warm")
		if _, err := bufio.NewReader(stdin).ReadString('\n'); err != nil {
			return fmt.Errorf("waiting for go: %w", err)
		}
	}
	out.phaseResult = l.phase(cfg.Duration, cfg.Requests)
	return json.NewEncoder(stdout).Encode(out)
}

type workerResult struct {
	lat      []time.Duration
	status   map[int]int64
	errs     int64
	firstErr error
}

// phase runs n requests, or for d when n is 0.
func (l *loader) phase(d time.Duration, n int) phaseResult {
	var left atomic.Int64
	left.Store(int64(n))
	ws := make([]workerResult, l.cfg.Conns)
	cpu0 := selfCPU()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range ws {
		w := &ws[i]
		w.status = map[int]int64{}
		wg.Go(func() {
			var buf bytes.Buffer
			for {
				if n > 0 {
					if left.Add(-1) < 0 {
						return
					}
				} else if !time.Now().Before(deadline) {
					return
				}
				t0 := time.Now()
				code, err := l.do(&buf)
				lat := time.Since(t0)
				if err != nil {
					w.errs++
					if w.firstErr == nil {
						w.firstErr = err
					}
					continue
				}
				w.status[code]++
				if code == http.StatusOK {
					w.lat = append(w.lat, lat)
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	cpu := selfCPU() - cpu0
	res := phaseResult{Status: map[string]int64{}, Seconds: secs, CPUus: float64(cpu.Microseconds())}
	var lat []time.Duration
	for _, w := range ws {
		lat = append(lat, w.lat...)
		for c, k := range w.status {
			res.Status[strconv.Itoa(c)] += k
			res.Requests += k
		}
		res.Errors += w.errs
		res.Requests += w.errs
		if w.firstErr != nil && res.FirstError == "" {
			res.FirstError = w.firstErr.Error()
		}
	}
	if secs > 0 {
		res.RPS = float64(res.ok()) / secs
	}
	res.P50us = loadgen.Percentile(lat, 0.50)
	res.P99us = loadgen.Percentile(lat, 0.99)
	return res
}

var errIncomplete = errors.New("200 answer without its usage (or, streamed, without data: [DONE])")

// do sends one request and reads the whole answer into buf.
func (l *loader) do(buf *bytes.Buffer) (int, error) {
	req, err := http.NewRequest(http.MethodPost, l.url, bytes.NewReader(l.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+l.cfg.Key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, err
	}
	buf.Reset()
	_, err = buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("status %d, reading the body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode == http.StatusOK {
		b := buf.Bytes()
		if !bytes.Contains(b, []byte(`"usage"`)) ||
			l.cfg.Mode == modeStream && !bytes.HasSuffix(bytes.TrimSpace(b), []byte("data: [DONE]")) {
			return 0, errIncomplete
		}
	}
	return resp.StatusCode, nil
}
