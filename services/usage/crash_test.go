package usage

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/etcdtest"
)

// childEnv carries "<etcd endpoint>,<keystore address>" to the child.
const childEnv = "KEYGATE_USAGE_CRASH_CHILD"

// TestCrashChild is the usage server half of TestCrashRecovery: it runs
// only in a re-executed test binary, prints its address and serves until
// killed.
func TestCrashChild(t *testing.T) {
	v := os.Getenv(childEnv)
	if v == "" {
		t.Skip("run by TestCrashRecovery as a child process")
	}
	ep, ksAddr, _ := strings.Cut(v, ",")
	cli := etcdtest.NewClient(t, []string{ep})
	srv, err := New(t.Context(), Config{
		Etcd: cli, ServiceToken: serviceToken, Keystore: keystorev1.NewKeystoreServiceClient(dial(t, ksAddr)),
	})
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g := grpc.NewServer()
	srv.Register(g)
	fmt.Printf("ADDR=%s\n", lis.Addr())
	_ = g.Serve(lis)
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
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "ADDR="); ok {
			go func() { // keep draining so the child never blocks on stdout
				for sc.Scan() {
				}
			}()
			return cmd, usagev1.NewUsageServiceClient(dial(t, addr))
		}
	}
	t.Fatalf("child exited before serving: %v", sc.Err())
	return nil, nil
}

// TestCrashRecovery kills the usage process (SIGKILL) while batches
// stream in, restarts it, retries every unacknowledged batch, and checks
// that every record is counted exactly once.
func TestCrashRecovery(t *testing.T) {
	cluster := etcdtest.Start(t)
	_, _, ksAddr := startKeystore(t)
	env := cluster.Endpoints[0] + "," + ksAddr
	cmd, cli := startChild(t, env)

	const streams, perStream, batchSize = 4, 30, 40
	// One record time, so that "today" is one day even across midnight.
	at := time.Now()
	batch := func(s, i int) []*usagev1.UsageRecord {
		var out []*usagev1.UsageRecord
		for j := range batchSize {
			out = append(out, rec(fmt.Sprintf("s%d-b%d-r%d", s, i, j), fmt.Sprintf("k%d", j%7), "mock-small", 3, 4, at))
		}
		return out
	}
	send := func(ctx context.Context, c usagev1.UsageServiceClient, b []*usagev1.UsageRecord) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := c.RecordUsage(svc(ctx), &usagev1.RecordUsageRequest{Records: b})
		return err
	}

	var acked atomic.Int64
	var mu sync.Mutex
	var unacked [][]*usagev1.UsageRecord
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for s := range streams {
		wg.Go(func() {
			for i := range perStream {
				b := batch(s, i)
				if err := send(t.Context(), cli, b); err != nil {
					mu.Lock()
					unacked = append(unacked, b)
					mu.Unlock()
					continue
				}
				// Kill once a third of the batches are in, mid-stream.
				if acked.Add(1) == streams*perStream/3 {
					_ = cmd.Process.Kill()
					close(killed)
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatal("the child was never killed")
	}
	require.NotEmpty(t, unacked, "the kill should interrupt the stream")
	t.Logf("acknowledged %d batches before and around the kill; retrying %d", acked.Load(), len(unacked))

	_, cli = startChild(t, env)
	for _, b := range unacked {
		require.Eventually(t, func() bool { return send(t.Context(), cli, b) == nil }, 30*time.Second, 50*time.Millisecond)
	}

	want := int64(streams * perStream * batchSize)
	require.EqualValues(t, want, count(t, cluster.Client, "id/"))
	require.EqualValues(t, want, count(t, cluster.Client, "log/"))
	resp, err := cli.GetTotals(svc(t.Context()), &usagev1.GetTotalsRequest{Day: at.UTC().Format(dayLayout), Queries: func() []*usagev1.TotalsQuery {
		var q []*usagev1.TotalsQuery
		for k := range 7 {
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
}
