package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process. Its stdout and stderr go to a log file; the
// lines of one of them that pass a filter also arrive on lines.
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   string
	lines chan string
	done  chan struct{} // closed when the process has exited
	err   error         // Wait's answer, once done
}

type procSpec struct {
	name string
	path string
	args []string
	env  []string // nil: the harness's environment
	// fromStderr picks the stream whose lines are reported (default stdout).
	fromStderr bool
	// keep filters the reported lines; nil reports every line.
	keep func(string) bool
}

func startProc(dir string, s procSpec) (*proc, error) {
	logPath := filepath.Join(dir, s.name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &proc{name: s.name, log: logPath, lines: make(chan string, 64), done: make(chan struct{})}
	lw := &lineWriter{w: f, keep: s.keep, out: p.lines}
	cmd := exec.Command(s.path, s.args...)
	cmd.Env = s.env
	cmd.SysProcAttr = childAttr()
	if s.fromStderr {
		cmd.Stdout, cmd.Stderr = f, lw
	} else {
		cmd.Stdout, cmd.Stderr = lw, f
	}
	// A child that leaves its output pipe open must not hang Wait.
	cmd.WaitDelay = 5 * time.Second
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		f.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", s.name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		lw.flush()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// next waits for the next reported line.
func (p *proc) next(ctx context.Context, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l := <-p.lines:
		return l, nil
	case <-ctx.Done():
		return "", ctx.Err()
	case <-p.done:
		select { // a last line may have come with the exit
		case l := <-p.lines:
			return l, nil
		default:
		}
		return "", fmt.Errorf("%s exited (%v)%s", p.name, p.err, p.tail())
	case <-t.C:
		return "", fmt.Errorf("%s: no answer within %v%s", p.name, timeout, p.tail())
	}
}

// stop closes stdin, sends SIGTERM, and after a grace period SIGKILL.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.cmd == nil {
		return
	}
	_ = p.stdin.Close()
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// wait waits for the process to exit by itself.
func (p *proc) wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s: %w%s", p.name, p.err, p.tail())
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s did not exit within %v", p.name, timeout)
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- end of " + p.log + " ---\n" + strings.TrimRight(string(b), "\n")
}

// lineWriter copies to w and hands complete lines that keep accepts to out;
// it never blocks on out (a full channel drops the line).
type lineWriter struct {
	mu      sync.Mutex
	w       io.Writer
	keep    func(string) bool
	out     chan string
	partial []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(b); err != nil {
		return 0, err
	}
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.emit(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > 1<<20 { // no newline for a long time: not a line we want
		l.partial = nil
	}
	return len(b), nil
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.emit(string(l.partial))
		l.partial = nil
	}
}

func (l *lineWriter) emit(line string) {
	if l.keep != nil && !l.keep(line) {
		return
	}
	select {
	case l.out <- line:
	default:
	}
}

// childEnv is the harness's environment without any KEYGATE_* or OTEL_*
// setting, which would change what `keygate up` does, plus extra. A
// race-enabled binary (the test's) sleeps a second at exit unless GORACE
// says otherwise; the children need not.
func childEnv(extra ...string) []string {
	var env []string
	race := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "KEYGATE_"), strings.HasPrefix(kv, "OTEL_"):
			continue
		case strings.HasPrefix(kv, "GORACE="):
			if v := strings.TrimPrefix(kv, "GORACE="); strings.Contains(v, "atexit_sleep_ms") {
				race = v
			} else {
				race = v + " " + race
			}
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "GORACE="+race), extra...)
}
