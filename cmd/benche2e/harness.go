package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	contenderBare    = "bare"
	contenderKeygate = "keygate"
	benchWorkspace   = "bench"
)

// Result is everything one harness run measured.
type Result struct {
	Options Options
	Runs    []RunStat
	Rows    []Row
	Ledger  LedgerCheck
	// Dir is the kept temp dir (-keep-data), else empty.
	Dir string
	// PIDs of every process the run started, all ended when Run returns.
	PIDs []int
}

// RunStat is one load run against one contender.
type RunStat struct {
	Conns     int
	Mode      string
	Round     int
	Contender string
	Load      loadResult
	// CPU of the contender's process and of the upstream over the measured
	// phase; CPUKnown is false where /proc is not available.
	ServerCPU, UpstreamCPU time.Duration
	CPUKnown               bool
}

// perReq is CPU µs per 200 answer.
func (r RunStat) perReq(d time.Duration) float64 {
	if !r.CPUKnown || r.Load.ok() == 0 {
		return -1
	}
	return float64(d.Microseconds()) / float64(r.Load.ok())
}

// LedgerCheck compares keygate's 200 answers (warm-ups and readiness
// probes included) with the requests its usage ledger counted for the key.
type LedgerCheck struct {
	OK       bool
	Answered int64 // 200 answers keygate gave
	Ledger   int64 // requests the ledger counts for the key
	Missing  int64 // answered, not in the ledger
	Doubled  int64 // in the ledger beyond the answers
	// Other answers and transport errors keygate gave; upstream errors
	// (5xx after forwarding) are in the ledger too.
	Other  map[string]int64
	Errors int64
	Waited time.Duration
	Note   string
}

type harness struct {
	opts Options
	dir  string
	self string
	kg   string

	upstream, proxy, keygate *proc

	upURL, bareURL, edgeURL, apiURL string
	root, keyID, secret             string
	client                          *http.Client

	// keygate's answers over the whole run.
	kgOK     int64
	kgOther  map[string]int64
	kgErrors int64
	startDay string
	edgeOK   bool
	t0       time.Time
	pids     []int
}

func (h *harness) logf(format string, args ...any) {
	if h.opts.Progress != nil {
		fmt.Fprintf(h.opts.Progress, "%6.1fs  "+format+"\n", append([]any{time.Since(h.t0).Seconds()}, args...)...)
	}
}

// Run runs the whole benchmark: build, start, set up, measure, check.
// Every process it starts has ended when it returns, with an error too
// (the Result then tells only which processes ran).
func Run(ctx context.Context, opts Options) (res *Result, err error) {
	h := &harness{opts: opts, kgOther: map[string]int64{}, t0: time.Now(),
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	if h.self, err = os.Executable(); err != nil {
		return nil, err
	}
	if h.dir, err = os.MkdirTemp("", "benche2e-"); err != nil {
		return nil, err
	}
	res = &Result{Options: opts}
	defer func() {
		h.close()
		h.logf("stopped every process")
		res.PIDs = h.pids
		if opts.KeepData {
			res.Dir = h.dir
			h.logf("kept %s", h.dir)
		} else {
			_ = os.RemoveAll(h.dir)
		}
	}()
	if err := h.start(ctx); err != nil {
		return res, err
	}
	if err := h.setup(ctx); err != nil {
		return res, err
	}
	for _, conns := range opts.Conns {
		for _, mode := range opts.Modes {
			for round := 1; round <= opts.Rounds; round++ {
				for _, c := range []string{contenderBare, contenderKeygate} {
					if err := ctx.Err(); err != nil {
						return res, err
					}
					r, err := h.run(ctx, c, conns, mode, round)
					if err != nil {
						return res, err
					}
					res.Runs = append(res.Runs, r)
				}
			}
		}
	}
	if res.Ledger, err = h.checkLedger(ctx); err != nil {
		return res, err
	}
	res.Rows = summarize(res.Runs, opts)
	return res, nil
}

func (h *harness) close() {
	var wg sync.WaitGroup
	wg.Go(func() { h.keygate.stop(20 * time.Second) })
	wg.Go(func() { h.proxy.stop(5 * time.Second) })
	wg.Go(func() { h.upstream.stop(5 * time.Second) })
	wg.Wait()
}

// start builds keygate (unless given) while the upstream and the bare
// proxy start, then starts keygate; every address comes from :0.
func (h *harness) start(ctx context.Context) error {
	buildErr := make(chan error, 1)
	if h.kg = h.opts.Keygate; h.kg == "" {
		h.kg = filepath.Join(h.dir, "keygate")
		h.logf("building keygate")
		go func() {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", h.kg, "github.com/keygate/keygate/cmd/keygate")
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("go build keygate: %w\n%s", err, out)
			}
			buildErr <- err
		}()
	} else {
		buildErr <- nil
	}
	var err error
	if h.upstream, h.upURL, err = h.startServer(ctx, "upstream", "-upstream", "127.0.0.1:0"); err != nil {
		<-buildErr
		return err
	}
	if h.proxy, h.bareURL, err = h.startServer(ctx, "proxy", "-proxy", "127.0.0.1:0", "-target", h.upURL); err != nil {
		<-buildErr
		return err
	}
	if err := <-buildErr; err != nil {
		return err
	}
	return h.startKeygate(ctx)
}

// spawn starts a child process and remembers its pid.
func (h *harness) spawn(s procSpec) (*proc, error) {
	if s.env == nil {
		s.env = childEnv()
	}
	p, err := startProc(h.dir, s)
	if err == nil {
		h.pids = append(h.pids, p.pid())
	}
	return p, err
}

// startServer starts a hidden server mode and reads its base URL.
func (h *harness) startServer(ctx context.Context, name string, args ...string) (*proc, string, error) {
	p, err := h.spawn(procSpec{name: name, path: h.self, args: args})
	if err != nil {
		return nil, "", err
	}
	line, err := p.next(ctx, 30*time.Second)
	if err != nil {
		return p, "", err
	}
	if !strings.HasPrefix(line, "http://127.0.0.1:") {
		return p, "", fmt.Errorf("%s: unexpected first line %q", name, line)
	}
	h.logf("%s on %s (pid %d)", name, line, p.pid())
	return p, line, nil
}

func (h *harness) startKeygate(ctx context.Context) error {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	h.root = "bench-root-" + hex.EncodeToString(b)
	var err error
	h.keygate, err = h.spawn(procSpec{
		name: "keygate",
		path: h.kg,
		args: append([]string{"up",
			"--data-dir", filepath.Join(h.dir, "keygate-data"),
			"--http-addr", "127.0.0.1:0", "--edge-addr", "127.0.0.1:0",
			"--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
			"--etcd-client-url", "http://127.0.0.1:0", "--etcd-peer-url", "http://127.0.0.1:0",
			"--shutdown-timeout", "1s",
		}, h.opts.KeygateArgs...),
		env:        childEnv("KEYGATE_ROOT_TOKEN=" + h.root),
		fromStderr: true,
		keep:       func(l string) bool { return strings.Contains(l, `"msg":"keygate serving"`) },
	})
	if err != nil {
		return err
	}
	// {"level":"INFO","msg":"keygate serving","grpc":"127.0.0.1:…","http":…,"edge":…}
	line, err := h.keygate.next(ctx, 2*time.Minute)
	if err != nil {
		return err
	}
	var addrs struct{ HTTP, Edge, GRPC string }
	if err := json.Unmarshal([]byte(line), &addrs); err != nil || addrs.HTTP == "" || addrs.Edge == "" {
		return fmt.Errorf("keygate: cannot read its addresses from %q", line)
	}
	h.apiURL, h.edgeURL = "http://"+addrs.HTTP, "http://"+addrs.Edge
	h.logf("keygate up: REST %s, edge %s, gRPC %s (pid %d)", h.apiURL, h.edgeURL, addrs.GRPC, h.keygate.pid())
	return h.poll(ctx, "keygate /healthz", 30*time.Second, func() (bool, error) {
		resp, err := h.client.Get(h.apiURL + "/healthz")
		if err != nil {
			return false, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

var errNotDone = errors.New("not done")

// poll calls f every 50 ms until it reports done, fails, or the deadline.
func (h *harness) poll(ctx context.Context, what string, timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := f()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if done {
			return nil
		}
		if h.keygate != nil && h.keygate.exited() {
			return fmt.Errorf("%s: keygate exited (%v)%s", what, h.keygate.err, h.keygate.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w within %v", what, errNotDone, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// rest sends one request with the root token and decodes the JSON answer.
func (h *harness) rest(method, path string, body string) (map[string]any, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.apiURL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+h.root)
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))
	}
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return out, nil
}

// setup registers the upstream as a provider, a priced model on it, a
// workspace and a key with every check on (limits far above the load),
// then waits until the edge serves the model.
func (h *harness) setup(ctx context.Context) error {
	steps := []struct{ path, body string }{
		{"/v1/providers", `{"id":"up","baseUrl":"` + h.upURL + `/v1"}`},
		{"/v1/models", `{"id":"` + benchModel + `","provider":"up","inputPricePerMillionUsd":"0.15","outputPricePerMillionUsd":"0.60"}`},
		{"/v1/workspaces", `{"id":"` + benchWorkspace + `","name":"Bench"}`},
	}
	for _, s := range steps {
		if _, err := h.rest(http.MethodPost, s.path, s.body); err != nil {
			return err
		}
	}
	key, err := h.rest(http.MethodPost, "/v1/workspaces/"+benchWorkspace+"/keys", `{
		"name":"bench",
		"allowedModels":["`+benchModel+`"],
		"globalLimits":{"rpm":100000000,"rpd":10000000000,"tpm":100000000000,"tpd":10000000000000},
		"modelLimits":[{"model":"`+benchModel+`","limits":{"rpm":100000000,"rpd":10000000000,"tpm":100000000000,"tpd":10000000000000}}],
		"tokenCap":{"tokens":"100000000000000","resetPeriod":"RESET_PERIOD_MONTHLY"},
		"budget":{"amountUsd":"100000000","resetPeriod":"RESET_PERIOD_MONTHLY"}}`)
	if err != nil {
		return err
	}
	h.secret, _ = key["secret"].(string)
	if k, ok := key["key"].(map[string]any); ok {
		h.keyID, _ = k["id"].(string)
	}
	if h.secret == "" || h.keyID == "" {
		return fmt.Errorf("create key: no secret or id in %v", key)
	}
	base, day, err := h.ledger()
	if err != nil {
		return err
	}
	if base != 0 {
		return fmt.Errorf("new key's usage counts %d requests", base)
	}
	h.startDay = day
	h.logf("key %s in workspace %s", h.keyID, benchWorkspace)
	return nil
}

// edgeReady waits until the edge serves the new model: it re-reads the
// model registry every few seconds (meanwhile the first bare run goes).
func (h *harness) edgeReady(ctx context.Context) error {
	if h.edgeOK {
		return nil
	}
	lg := &loader{cfg: loadConfig{Key: h.secret, Mode: modeUnary}, url: h.edgeURL + "/v1/chat/completions",
		body: chatBody(modeUnary), client: h.client}
	var buf bytes.Buffer
	var last string
	err := h.poll(ctx, "edge serving the model", time.Minute, func() (bool, error) {
		code, err := lg.do(&buf)
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusOK:
			h.kgOK++
			return true, nil
		default:
			last = fmt.Sprintf("%d %s", code, bytes.TrimSpace(buf.Bytes()))
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last answer: %s)", err, last)
	}
	h.edgeOK = true
	return nil
}

// ledger reads the key's request count and the ledger's UTC day.
func (h *harness) ledger() (int64, string, error) {
	u, err := h.rest(http.MethodGet, "/v1/workspaces/"+benchWorkspace+"/keys/"+h.keyID+"/usage", "")
	if err != nil {
		return 0, "", err
	}
	n, err := jsonInt(u["requestsToday"])
	day, _ := u["day"].(string)
	return n, day, err
}

// ledgerSince sums the key's requests over every UTC day since the first
// (so a run across midnight still adds up).
func (h *harness) ledgerSince(day string) (int64, error) {
	n, today, err := h.ledger()
	if err != nil || today == day || day == "" {
		return n, err
	}
	s, err := h.rest(http.MethodGet, "/v1/workspaces/"+benchWorkspace+"/keys/"+h.keyID+"/usage:series?startDate="+day+"&endDate="+today, "")
	if err != nil {
		return 0, err
	}
	pts, _ := s["points"].([]any)
	var sum int64
	for _, p := range pts {
		m, _ := p.(map[string]any)
		k, err := jsonInt(m["requests"])
		if err != nil {
			return 0, err
		}
		sum += k
	}
	return sum, nil
}

// jsonInt reads a protojson int64 (a string) or a number; absent is 0.
func jsonInt(v any) (int64, error) {
	switch x := v.(type) {
	case nil:
		return 0, nil
	case float64:
		return int64(x), nil
	case string:
		return strconv.ParseInt(x, 10, 64)
	}
	return 0, fmt.Errorf("not a number: %#v", v)
}

// run is one load run: a fresh load generator process against one
// contender, the servers' CPU read around its measured phase.
func (h *harness) run(ctx context.Context, contender string, conns int, mode string, round int) (RunStat, error) {
	r := RunStat{Conns: conns, Mode: mode, Round: round, Contender: contender}
	base, server := h.bareURL, h.proxy
	if contender == contenderKeygate {
		base, server = h.edgeURL, h.keygate
		if err := h.edgeReady(ctx); err != nil {
			return r, err
		}
	}
	lg, err := h.spawn(procSpec{
		name: fmt.Sprintf("loadgen-c%d-%s-r%d-%s", conns, mode, round, contender),
		path: h.self,
		args: []string{"-loadgen", base, "-key", h.secret, "-mode", mode, "-conns", strconv.Itoa(conns),
			"-duration", h.opts.Duration.String(), "-requests", strconv.Itoa(h.opts.Requests),
			"-warmup", h.opts.Warmup.String(), "-handshake"},
	})
	if err != nil {
		return r, err
	}
	defer lg.stop(5 * time.Second)
	line, err := lg.next(ctx, h.opts.Warmup+time.Minute)
	if err != nil {
		return r, err
	}
	if line != "warm" {
		return r, fmt.Errorf("load generator: want \"warm\", got %q", line)
	}
	s0, err1 := procCPU(server.pid())
	u0, err2 := procCPU(h.upstream.pid())
	if _, err := io.WriteString(lg.stdin, "go\n"); err != nil {
		return r, fmt.Errorf("load generator: %w", err)
	}
	limit := h.opts.Duration + 2*time.Minute
	if h.opts.Requests > 0 {
		limit = time.Hour
	}
	if line, err = lg.next(ctx, limit); err != nil {
		return r, err
	}
	s1, err3 := procCPU(server.pid())
	u1, err4 := procCPU(h.upstream.pid())
	r.CPUKnown = errors.Join(err1, err2, err3, err4) == nil
	r.ServerCPU, r.UpstreamCPU = s1-s0, u1-u0
	if err := json.Unmarshal([]byte(line), &r.Load); err != nil {
		return r, fmt.Errorf("load generator output %q: %w", line, err)
	}
	if err := lg.wait(10 * time.Second); err != nil {
		return r, err
	}
	if contender == contenderKeygate {
		for _, p := range []phaseResult{r.Load.Warmup, r.Load.phaseResult} {
			for code, n := range p.Status {
				if code == "200" {
					h.kgOK += n
				} else {
					h.kgOther[code] += n
				}
			}
			h.kgErrors += p.Errors
		}
	}
	h.logf("%s", r.line())
	return r, nil
}

// line is the progress line of one run.
func (r RunStat) line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "conns=%-3d %-6s round %d %-7s %8.0f req/s  p50 %7.0fµs  p99 %7.0fµs", r.Conns, r.Mode, r.Round, r.Contender,
		r.Load.RPS, r.Load.P50us, r.Load.P99us)
	if r.CPUKnown && r.Load.ok() > 0 {
		fmt.Fprintf(&b, "  cpu %5.0fµs/req  upstream %4.0fµs/req  loadgen %4.0fµs/req", r.perReq(r.ServerCPU), r.perReq(r.UpstreamCPU),
			r.Load.CPUus/float64(r.Load.ok()))
	}
	if n := r.Load.Requests - r.Load.ok(); n > 0 {
		fmt.Fprintf(&b, "  NOT 200: %d %v errors %d %s", n, r.Load.Status, r.Load.Errors, r.Load.FirstError)
	}
	return b.String()
}

// checkLedger waits until the key's ledger count reaches keygate's 200
// answers (or passes them, or the deadline), then, when the edge exports
// its pending usage records, until none is pending, and compares.
func (h *harness) checkLedger(ctx context.Context) (LedgerCheck, error) {
	c := LedgerCheck{Answered: h.kgOK, Other: h.kgOther, Errors: h.kgErrors}
	start := time.Now()
	h.logf("waiting for the ledger to count %d requests", c.Answered)
	var n int64
	err := h.poll(ctx, "ledger", h.opts.DrainTimeout, func() (bool, error) {
		var err error
		n, err = h.ledgerSince(h.startDay)
		return err == nil && n >= c.Answered, err
	})
	if err != nil && !errors.Is(err, errNotDone) {
		return c, err
	}
	if err == nil {
		// Nothing may still be on its way (a late duplicate would show).
		if pending, ok := h.edgePending(); ok && pending > 0 {
			_ = h.poll(ctx, "edge usage pending", h.opts.DrainTimeout, func() (bool, error) {
				p, ok := h.edgePending()
				return !ok || p == 0, nil
			})
		}
		if n, err = h.ledgerSince(h.startDay); err != nil {
			return c, err
		}
	} else {
		c.Note = fmt.Sprintf("gave up waiting after %v", h.opts.DrainTimeout)
	}
	c.Waited = time.Since(start)
	c.Ledger = n
	c.Missing, c.Doubled = max(0, c.Answered-n), max(0, n-c.Answered)
	c.OK = n == c.Answered
	return c, nil
}

// edgePending reads keygate_edge_usage_pending from keygate's /metrics;
// ok is false when it is not exported.
func (h *harness) edgePending() (int64, bool) {
	resp, err := h.client.Get(h.edgeURL + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var sum float64
	found := false
	for sc.Scan() {
		l := sc.Text()
		name, _, _ := strings.Cut(l, " ")
		if name, _, _ = strings.Cut(name, "{"); name != "keygate_edge_usage_pending" {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	return int64(sum), found
}
