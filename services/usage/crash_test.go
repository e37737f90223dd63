package usage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// childEnv carries "<etcd endpoint>,<keystore address>,<request log dir>"
// to the child.
const childEnv = "KEYGATE_USAGE_CRASH_CHILD"

// TestCrashChild is the usage server half of TestCrashRecovery: it runs
// only in a re-executed test binary, prints its address and serves until
// killed. A restarted child reopens the same request log.
func TestCrashChild(t *testing.T) {
	v := os.Getenv(childEnv)
	if v == "" {
		t.Skip("run by TestCrashRecovery as a child process")
	}
	parts := strings.SplitN(v, ",", 3)
	require.Len(t, parts, 3)
	ep, ksAddr, dir := parts[0], parts[1], parts[2]
	cli := etcdtest.NewClient(t, []string{ep})
	rl, err := reqlog.OpenPebble(dir, 0, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rl.Close() })
	srv, err := New(t.Context(), Config{
		Etcd: cli, ServiceToken: serviceToken, Keystore: keystorev1.NewKeystoreServiceClient(grpctest.Dial(t, ksAddr)), RequestLog: rl,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	go func() { _ = srv.Run(t.Context()) }()
	s := grpctest.Serve(t, srv.Register)
	fmt.Printf("ADDR=%s\n", s.Addr)
	select {} // serves until the parent kills this process
}

// startChild runs the usage server as a child process.
func startChild(t *testing.T, env string) (*exec.Cmd, usagev1.UsageServiceClient) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), childEnv+"="+env)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait() // an error if the test waited already
	})
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "ADDR="); ok {
			go func() { // keep draining so the child never blocks on stdout
				for sc.Scan() {
				}
			}()
			return cmd, usagev1.NewUsageServiceClient(grpctest.Dial(t, addr))
		}
	}
	t.Fatalf("child exited before serving: %v", sc.Err())
	return nil, nil
}

// TestCrashRecovery kills the usage process (SIGKILL) while producers
// stream batches in, restarts it on the same request log, and lets each
// producer retry its unacknowledged batch (same first_sequence) before
// going on: every record is counted exactly once, and logged once.
func TestCrashRecovery(t *testing.T) {
	cluster := etcdtest.Start(t)
	_, _, ksAddr := startKeystore(t)
	env := cluster.Endpoints[0] + "," + ksAddr + "," + t.TempDir()
	cmd, first := startChild(t, env)

	const streams, perStream, batchSize, keys = 4, 30, 40, 7
	// One record time, so that "today" is one day even across midnight.
	at := time.Now()
	batch := func(s, i int) []*usagev1.UsageRecord {
		var out []*usagev1.UsageRecord
		for j := range batchSize {
			out = append(out, rec(fmt.Sprintf("s%d-b%d-r%d", s, i, j), fmt.Sprintf("k%d", j%keys), "mock-small", 3, 4, at))
		}
		return out
	}
	call := func(ctx context.Context, c usagev1.UsageServiceClient, producer string, i int, b []*usagev1.UsageRecord) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := send(ctx, c, producer, uint64(i*batchSize+1), b)
		return err
	}

	// The client to use: the first child's until the restart.
	var mu sync.Mutex
	cur := first
	client := func() usagev1.UsageServiceClient {
		mu.Lock()
		defer mu.Unlock()
		return cur
	}
	// kill fires once a third of the batches are in (or at the first
	// error, so that a stream never waits for a restart that won't come);
	// restarted closes once the new child serves.
	kill, restarted := make(chan struct{}), make(chan struct{})
	var killOnce sync.Once
	fireKill := func() { killOnce.Do(func() { close(kill) }) }
	var acked, retries atomic.Int64
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for s := range streams {
		wg.Go(func() {
			producer := fmt.Sprintf("s%d", s)
			for i := range perStream {
				b := batch(s, i)
				// Retry the same batch until it is acknowledged: after the
				// restart, at most a few attempts.
				for attempt := 0; ; attempt++ {
					err := call(t.Context(), client(), producer, i, b)
					if err == nil {
						break
					}
					if attempt == 5 {
						errs[s] = fmt.Errorf("%s batch %d: %w", producer, i, err)
						return
					}
					retries.Add(1)
					fireKill()
					select {
					case <-restarted:
					case <-t.Context().Done():
						return
					}
				}
				if acked.Add(1) == streams*perStream/3 {
					fireKill()
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-kill:
	case <-done:
		t.Fatal("the streams finished before the kill")
	}
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait() // the store's lock is free once the process is gone
	_, second := startChild(t, env)
	mu.Lock()
	cur = second
	mu.Unlock()
	close(restarted)
	<-done
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.NotZero(t, retries.Load(), "the kill should interrupt the streams")
	t.Logf("killed after %d acknowledged batches; %d retries", streams*perStream/3, retries.Load())

	want := int64(streams * perStream * batchSize)
	resp, err := second.GetTotals(svc(t.Context()), &usagev1.GetTotalsRequest{Day: at.UTC().Format(dayLayout), Queries: func() []*usagev1.TotalsQuery {
		var q []*usagev1.TotalsQuery
		for k := range keys {
			q = append(q, &usagev1.TotalsQuery{Key: fmt.Sprintf("k%d", k)})
		}
		return q
	}()})
	require.NoError(t, err)
	var reqs, toks int64
	for _, x := range resp.GetTotals() {
		reqs += x.GetRequestsToday()
		toks += x.GetPeriodTokens()
	}
	require.Equal(t, want, reqs, "every record counted exactly once")
	require.Equal(t, 7*want, toks)

	// The restarted child's log holds every record once, those logged
	// before the kill included.
	ids := map[string]bool{}
	req := &usagev1.ListRequestsRequest{Workspace: "acme", PageSize: 500}
	for {
		l, err := second.ListRequests(member(t.Context()), req)
		require.NoError(t, err)
		for _, r := range l.GetRequests() {
			require.False(t, ids[r.GetRequestId()], "%s listed twice", r.GetRequestId())
			ids[r.GetRequestId()] = true
		}
		if l.GetNextPageToken() == "" {
			break
		}
		req.PageToken = l.GetNextPageToken()
	}
	require.EqualValues(t, want, len(ids))
}
