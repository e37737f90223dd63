package main

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// limiterCluster is a multi-process cluster with two limiters and a key
// limited to rpm (and a large rpd) on which the limiter tests put load.
type limiterCluster struct {
	c      *cluster
	api    string
	keyID  string
	usage  string
	lims   []*limiterProc
	edges  []string
	secret string
	keys   int // created so far
}

type limiterProc struct {
	name, addr, metrics string
	p                   *proc
}

func newLimiterCluster(t *testing.T, edges int, rpm int) *limiterCluster {
	t.Helper()
	lc := &limiterCluster{c: newCluster(t)}
	c := lc.c
	c.startEtcd(1)
	ks := c.serve("keystore", "keystore", "--grpc-addr", anyPort)["grpc"]
	lc.usage = c.serve("usage", "usage", "--grpc-addr", anyPort, "--keystore-addr", ks)["grpc"]
	for i := range 2 {
		name := fmt.Sprintf("limiter-%d", i)
		p, a := c.serveProc(name, "limiter", "--grpc-addr", anyPort, "--usage-addr", lc.usage)
		lc.lims = append(lc.lims, &limiterProc{name: name, addr: a["grpc"], metrics: "http://" + a["metrics"], p: p})
	}
	for i := range edges {
		a := c.serve(fmt.Sprintf("edge-%d", i), "edge", "--edge-addr", anyPort, "--keystore-addr", ks, "--usage-addr", lc.usage)
		lc.edges = append(lc.edges, "http://"+a["edge"])
	}
	lc.api = "http://" + c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", ks, "--usage-addr", lc.usage)["http"]
	c.waitHealthy()

	seedCatalog(t, lc.api, c.root)
	lc.newKey(t, rpm)
	return lc
}

// newKey creates a key limited to rpm (and a large rpd), deleting the
// previous one (the workspace's key cap is 10); the cluster's tests and
// load use it from then on.
func (lc *limiterCluster) newKey(t *testing.T, rpm int) {
	t.Helper()
	if lc.keyID != "" {
		code, _, body := rest(t, "DELETE", lc.api+"/v1/workspaces/acme/keys/"+lc.keyID, lc.c.root, nil)
		require.Equal(t, http.StatusOK, code, body)
	}
	lc.keys++
	code, _, body := rest(t, "POST", lc.api+"/v1/workspaces/acme/keys", lc.c.root,
		map[string]any{"name": fmt.Sprintf("web-%d", lc.keys), "globalLimits": map[string]any{"rpm": rpm, "rpd": max(10_000, rpm)}})
	require.Equal(t, http.StatusOK, code, body)
	lc.secret = body["secret"].(string)
	lc.keyID = body["key"].(map[string]any)["id"].(string)
}

// warm sends the key's first request through every edge until each
// answers 200 (each waits out learning the model registry and the
// limiters); the first check seeds the key on its owner. The answers
// count against the key's rpm and open the minute the test must stay
// within.
func (lc *limiterCluster) warm(t *testing.T) int64 {
	t.Helper()
	for _, edge := range lc.edges {
		require.Eventually(t, func() bool {
			code, _, _ := chatOnce(t, edge, lc.secret)
			return code == http.StatusOK
		}, 30*time.Second, 100*time.Millisecond, "%s answers the key", edge)
	}
	return int64(len(lc.edges))
}

// restart starts a stopped limiter again on its address and waits until
// it serves.
func (lc *limiterCluster) restart(t *testing.T, l *limiterProc) {
	t.Helper()
	p, a := lc.c.serveProc(l.name, "limiter", "--grpc-addr", l.addr, "--usage-addr", lc.usage)
	require.Equal(t, l.addr, a["grpc"])
	l.p, l.metrics = p, "http://"+a["metrics"]
	waitHealthy(t, l.metrics+"/healthz")
}

// sumMetric adds a counter over both limiters.
func (lc *limiterCluster) sumMetric(name string) int {
	n := 0
	for _, l := range lc.lims {
		if v := metric(l.metrics, name); v > 0 {
			n += v
		}
	}
	return n
}

// load sends requests for one key at a steady rate from several workers
// over the edges in turn, and counts the answers.
type load struct {
	sent, admitted, limited, unavailable atomic.Int64
	mu                                   sync.Mutex
	other                                []string
	recs                                 []answer
	ids                                  map[string]bool // of the requests answered 200
	stop                                 chan struct{}
	wg                                   sync.WaitGroup
}

// startLoad runs workers, each sending one request every interval until
// stopped, max requests are sent in all, or until. The workers' ticks are
// spread evenly over the interval.
func startLoad(t *testing.T, edges []string, secret string, workers int, every time.Duration, max int64, until time.Time) *load {
	l := &load{stop: make(chan struct{}), ids: map[string]bool{}}
	for w := range workers {
		l.wg.Go(func() {
			pause(t, time.Duration(w)*every/time.Duration(workers))
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := w; ; i++ {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				if time.Now().After(until) {
					return
				}
				if l.sent.Add(1) > max {
					l.sent.Add(-1)
					return
				}
				start := time.Now()
				code, h, body := chatOnce(t, edges[i%len(edges)], secret)
				l.mu.Lock()
				l.recs = append(l.recs, answer{edge: i % len(edges), start: start, end: time.Now(), code: code})
				l.mu.Unlock()
				l.count(code, h.Get("X-Request-Id"), body)
			}
		})
	}
	return l
}

func (l *load) count(code int, id string, body map[string]any) {
	e, _ := body["error"].(map[string]any)
	reason, _ := e["code"].(string)
	switch {
	case code == http.StatusOK:
		l.admitted.Add(1)
		l.mu.Lock()
		l.ids[id] = true
		l.mu.Unlock()
	case code == http.StatusTooManyRequests:
		l.limited.Add(1)
	case code == http.StatusServiceUnavailable && reason == "limiter_unavailable":
		l.unavailable.Add(1)
	default:
		l.mu.Lock()
		l.other = append(l.other, fmt.Sprintf("%d %s %v", code, reason, body))
		l.mu.Unlock()
	}
}

// wait stops the load and waits for its answers.
func (l *load) wait() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// done waits until the load sent all it may, or stops it at until.
func (l *load) done(until time.Time) {
	finished := make(chan struct{})
	go func() { l.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(time.Until(until)):
	}
	l.wait()
}

func (l *load) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("sent %d: admitted %d, rate limited %d, 503 limiter_unavailable %d, other %d",
		l.sent.Load(), l.admitted.Load(), l.limited.Load(), l.unavailable.Load(), len(l.other))
}

// answer is one request of a load: the edge it went to, when it was sent
// and answered, and the status.
type answer struct {
	edge       int
	start, end time.Time
	code       int
}

// answers returns the requests answered so far.
func (l *load) answers() []answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]answer(nil), l.recs...)
}

// startedSince counts the requests sent from since to until, answered or
// not by now.
func (l *load) startedSince(since, until time.Time) int64 {
	n := int64(0)
	for _, a := range l.answers() {
		if !a.start.Before(since) && !a.start.After(until) {
			n++
		}
	}
	return n
}

// pause waits d or until the test ends.
func pause(t *testing.T, d time.Duration) {
	select {
	case <-time.After(d):
	case <-t.Context().Done():
	}
}

// TestLimiterRollingRestart: both limiters of a multi-process cluster are
// restarted in turn (SIGTERM, start again on the same address) under
// steady load on a key with rpm 100: within one minute the key admits
// exactly 100, and each limiter exits promptly on SIGTERM.
func TestLimiterRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	const rpm = 100
	lc := newLimiterCluster(t, 1, rpm)
	warm := lc.warm(t)
	warmed := time.Now()
	// Every request is sent before the key's first admission leaves the
	// rolling window, with a margin for the slowest answer.
	mustEnd := warmed.Add(50 * time.Second)
	ld := startLoad(t, lc.edges, lc.secret, 4, 160*time.Millisecond, 1<<30, mustEnd) // 25 a second
	defer ld.wait()

	pause(t, 5*time.Second)
	var exits []time.Duration
	for _, l := range lc.lims {
		// SIGTERM: the limiter hands its keys over and exits promptly.
		start := time.Now()
		require.NoError(t, l.p.cmd.Process.Signal(syscall.SIGTERM), l.name)
		exited := make(chan error, 1)
		go func() { exited <- l.p.cmd.Wait() }()
		select {
		case err := <-exited:
			require.NoError(t, err, "%s exits cleanly on SIGTERM", l.name)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not exit within 5 s of SIGTERM:\n%s", l.name, tail(l.p.out.String(), 4000))
		}
		exits = append(exits, time.Since(start))
		t.Logf("%s exited %v after SIGTERM", l.name, time.Since(start).Round(time.Millisecond))
		// Back on the same address; it takes its keys back from the
		// replica that took them over.
		lc.restart(t, l)
		t.Logf("%s serving again %v after SIGTERM", l.name, time.Since(start).Round(time.Millisecond))
		pause(t, 7*time.Second)
	}
	ld.wait()
	require.Positive(t, lc.sumMetric("keygate_limiter_handovers_total"), "the restarted limiters took the key over from one another")
	require.True(t, time.Now().Before(warmed.Add(time.Minute)), "the load stayed within one minute of the first admission")

	t.Logf("warm %d, %v in %v", warm, ld, time.Since(warmed).Round(time.Millisecond))
	require.Empty(t, ld.other, "no answers but 200, 429 and 503 limiter_unavailable")
	asked := warm + ld.sent.Load() - ld.unavailable.Load()
	require.EqualValues(t, min(asked, rpm), warm+ld.admitted.Load(),
		"within one minute the key admits exactly its rpm across the restarts")
	require.GreaterOrEqual(t, asked, int64(rpm), "the load asked for more than the key's rpm")
	chaosRow{scenario: "rolling restart of both limiters (SIGTERM) under load", trials: 1,
		admitted: fmt.Sprintf("%d of %d", warm+ld.admitted.Load(), rpm), unavailable: ld.unavailable.Load(),
		recovery: durations(exits), note: "recovery: limiter exit after SIGTERM"}.report(t)
}

// TestLimiterKill: the limiter that owns a key is killed (kill -9) under
// load on the key (rpm 100, about 100 requests a second over two edges),
// then started again on its address, and the load goes on within the
// same minute. The other limiter had the key's replica and starts from
// it; the restarted one takes the key back by handover. Over the minute
// the key admits at most its rpm plus 2%, plus the requests sent in the
// last moments before the crash. Each trial uses a fresh key.
func TestLimiterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	const rpm = 100
	trials := chaosScale(t)
	lc := newLimiterCluster(t, 2, rpm)
	row := chaosRow{scenario: "kill -9 of the limiter owning a key (rpm 100)", trials: trials}
	var worst int64
	var gaps []time.Duration
	for i := range trials {
		if i > 0 {
			lc.newKey(t, rpm)
		}
		admitted, unavailable, gap := limiterKillTrial(t, lc, rpm)
		worst = max(worst, admitted)
		row.unavailable += unavailable
		gaps = append(gaps, gap)
	}
	row.admitted = fmt.Sprintf("at most %d of %d", worst, rpm)
	row.recovery = durations(gaps)
	row.note = "recovery: longest wait for an answer after the kill"
	row.report(t)
}

// limiterKillTrial kills the limiter that owns the cluster's key under
// load and restarts it; it returns what the key admitted within the
// minute, the 503 answers, and the longest a request sent after the kill
// waited for its answer.
func limiterKillTrial(t *testing.T, lc *limiterCluster, rpm int64) (admitted, unavailable int64, gap time.Duration) {
	t.Helper()
	decided := map[*limiterProc]int{}
	for _, l := range lc.lims {
		decided[l] = metric(l.metrics, "keygate_limiter_decisions_total")
	}
	warm := lc.warm(t)
	warmed := time.Now()
	mustEnd := warmed.Add(50 * time.Second)
	var owner *limiterProc
	for _, l := range lc.lims {
		if metric(l.metrics, "keygate_limiter_decisions_total") > decided[l] {
			owner = l
		}
	}
	require.NotNil(t, owner, "one limiter decided the warm-up requests")

	const total = 500
	ld := startLoad(t, lc.edges, lc.secret, 4, 40*time.Millisecond, total, mustEnd) // 100 a second
	defer ld.wait()
	// Crash when part of the limit is spent.
	require.Eventually(t, func() bool { return warm+ld.admitted.Load() >= rpm/2 }, 30*time.Second, time.Millisecond)
	owner.p.kill(t)
	crashed := time.Now()
	t.Logf("killed %s with %d admitted", owner.name, warm+ld.admitted.Load())
	pause(t, time.Second)
	lc.restart(t, owner)
	t.Logf("%s serving again %v after the kill", owner.name, time.Since(crashed).Round(time.Millisecond))
	ld.done(mustEnd)
	require.True(t, time.Now().Before(warmed.Add(time.Minute)), "the load stayed within one minute of the first admission")
	// What the crash may lose: the decisions of the last replication
	// interval (10 ms) and of the replication call in flight.
	recent := ld.startedSince(crashed.Add(-30*time.Millisecond), crashed)
	for _, a := range ld.answers() {
		if a.start.After(crashed) {
			gap = max(gap, a.end.Sub(a.start))
		}
	}

	t.Logf("%d sent in the 30 ms before the kill; warm %d, %v in %v; restores %d, handovers %d", recent, warm, ld, time.Since(warmed).Round(time.Millisecond),
		lc.sumMetric("keygate_limiter_restores_total"), lc.sumMetric("keygate_limiter_handovers_total"))
	require.Empty(t, ld.other, "no answers but 200, 429 and 503 limiter_unavailable")
	require.EqualValues(t, total, ld.sent.Load(), "all the load was sent")
	admitted = warm + ld.admitted.Load()
	require.GreaterOrEqual(t, admitted, rpm, "the key admitted its limit")
	require.LessOrEqual(t, admitted, rpm+rpm/50+recent, "over-admission within 2%% of the limit plus the requests in flight at the crash")
	return admitted, ld.unavailable.Load(), gap
}
