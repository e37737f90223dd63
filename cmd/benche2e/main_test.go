package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the harness's child processes,
// which re-execute it with -upstream, -proxy or -loadgen.
func TestMain(m *testing.M) {
	if code, ok := childMain(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestSmoke runs the whole harness once, briefly: a built keygate, the
// upstream, the bare proxy and the load generators as processes, one
// connection, one round of each mode. The ledger must count every 200
// answer once, the table must have every row, and no process may outlive
// the run.
func TestSmoke(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads server CPU from /proc")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command to build keygate")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	opts := Options{
		Duration: time.Second, Warmup: 100 * time.Millisecond,
		Conns: []int{1}, Rounds: 1, Modes: []string{modeUnary, modeStream},
		DrainTimeout: 30 * time.Second, Progress: testWriter{t},
	}
	res, err := Run(ctx, opts)
	if res != nil {
		for _, pid := range res.PIDs {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("process %d still exists after the run (kill 0: %v)", pid, err)
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.Print(&out)
	t.Log("\n" + out.String())

	if len(res.PIDs) != 3+4 { // upstream, proxy, keygate; a load generator per run
		t.Errorf("started %d processes, want 7", len(res.PIDs))
	}
	l := res.Ledger
	if !l.OK || l.Answered == 0 || l.Missing != 0 || l.Doubled != 0 {
		t.Errorf("ledger check: %+v", l)
	}
	if len(res.Rows) != 2 {
		t.Fatalf("%d rows, want 2: %+v", len(res.Rows), res.Rows)
	}
	for i, mode := range opts.Modes {
		row := res.Rows[i]
		if row.Conns != 1 || row.Mode != mode || row.Rounds != 1 {
			t.Errorf("row %d: %d conns, %s, %d rounds", i, row.Conns, row.Mode, row.Rounds)
		}
		for name, s := range map[string]Stat{"bare": row.Bare, "keygate": row.Keygate} {
			if s.RPS <= 0 || s.P50us <= 0 || s.P99us < s.P50us || s.CPUus <= 0 || s.UpstreamCPUus < 0 || s.NotOK != 0 {
				t.Errorf("%s %s: %+v", mode, name, s)
			}
		}
		if !containsLine(out.String(), "1", mode) {
			t.Errorf("table has no row for 1 connection, %s", mode)
		}
	}
	if !strings.Contains(out.String(), "missing 0, doubled 0: OK") || !strings.Contains(out.String(), "one-connection p50 overhead") {
		t.Error("report lacks the ledger verdict or the one-connection overhead")
	}
}

func containsLine(s string, fields ...string) bool {
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) >= len(fields) && slicesEqual(f[:len(fields)], fields) {
			return true
		}
	}
	return false
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
