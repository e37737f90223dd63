package reqlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// pgInstallHint says how to get the server binaries the tests run.
const pgInstallHint = "the PostgreSQL server binaries (initdb, postgres) are needed for the request log's " +
	"PostgreSQL tests and were not found under /usr/lib/postgresql/*/bin or on PATH: " +
	"run `make test-deps` (as root) or `apt-get install -y postgresql`"

// pgServer is a throwaway PostgreSQL server for one test.
type pgServer struct {
	host, user, pass string
	port             int
	dbs              atomic.Int64
}

// url is the address of database db on the server.
func (s *pgServer) url(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(s.user, s.pass),
		Host:     net.JoinHostPort(s.host, strconv.Itoa(s.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// newDatabase creates an empty database and returns its URL.
func (s *pgServer) newDatabase(t *testing.T) string {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, s.url("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	db := fmt.Sprintf("reqlog_%d", s.dbs.Add(1))
	_, err = conn.Exec(ctx, "CREATE DATABASE "+db)
	require.NoError(t, err)
	return s.url(db)
}

// pgBinDir finds the directory of initdb and postgres: the newest Debian
// version under /usr/lib/postgresql, else PATH.
func pgBinDir() (string, bool) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return int(version(b)*100 - version(a)*100) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, true
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && isExec(filepath.Join(filepath.Dir(p), "postgres")) {
		return filepath.Dir(p), true
	}
	return "", false
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startPostgres runs a PostgreSQL server in a temporary directory on a free
// port of 127.0.0.1 until the test ends. As root it runs the server as the
// postgres user, since initdb and postgres refuse to run as root.
func startPostgres(t *testing.T) *pgServer {
	t.Helper()
	bin, ok := pgBinDir()
	if !ok {
		t.Fatal(pgInstallHint)
	}
	var cred *syscall.Credential
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and initdb refuses root: the tests run the server as the "+
				"user postgres, which the Debian postgresql package creates (`make test-deps`): %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	base := t.TempDir()
	data := filepath.Join(base, "data")
	pwfile := filepath.Join(base, "pw")
	s := &pgServer{host: "127.0.0.1", user: "keygate", pass: "test-password"}
	require.NoError(t, os.WriteFile(pwfile, []byte(s.pass+"\n"), 0o644))
	require.NoError(t, os.Mkdir(data, 0o700))
	if cred != nil {
		// The server's user must reach its directory through ours.
		for _, d := range []string{filepath.Dir(base), base} {
			require.NoError(t, os.Chmod(d, 0o711))
		}
		require.NoError(t, os.Chown(data, uid, gid))
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "TZ=UTC"}
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Env = env
		cmd.Dir = base
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
		return cmd
	}

	start := time.Now()
	out, err := command("initdb", "-D", data, "-U", s.user, "--pwfile", pwfile, "--auth", "scram-sha-256",
		"-E", "UTF8", "--locale", "C", "--no-sync").CombinedOutput()
	require.NoError(t, err, "initdb: %s", out)

	// A free port may be taken before the server binds it: then try another.
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		log := &syncBuffer{}
		cmd := command("postgres", "-D", data, "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "shared_buffers=32MB", "-c", "max_connections=50")
		cmd.Stdout, cmd.Stderr = log, log
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		s.port = port
		err := waitReady(t.Context(), s.url("postgres"), exited)
		if err == nil {
			t.Cleanup(func() { stopPostgres(t, cmd, exited, log) })
			t.Logf("postgres %s on port %d ready in %s", filepath.Base(filepath.Dir(bin)), port, time.Since(start).Round(time.Millisecond))
			return s
		}
		if !errors.Is(err, errExited) {
			_ = cmd.Process.Kill()
			<-exited
		}
		if attempt < 5 && strings.Contains(log.String(), "could not bind") {
			continue
		}
		t.Fatalf("postgres did not start: %v\n%s", err, log.String())
	}
}

var errExited = errors.New("server exited")

// waitReady polls a connection until the server answers, it exits, or a
// minute passes.
func waitReady(ctx context.Context, url string, exited <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, url)
		ccancel()
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("%w: %v", errExited, werr)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// stopPostgres asks for a fast shutdown and waits for it.
func stopPostgres(t *testing.T, cmd *exec.Cmd, exited <-chan error, log *syncBuffer) {
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Errorf("postgres did not stop in 30s\n%s", log.String())
	}
	if t.Failed() {
		t.Logf("postgres log:\n%s", log.String())
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pgPartitions lists the request log's partitions by name.
func pgPartitions(t *testing.T, url string) []string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(t.Context()))
	rows, err := conn.Query(t.Context(), `SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'request_log'::regclass ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

func openPostgres(t *testing.T, url string) *Postgres {
	t.Helper()
	p, err := OpenPostgres(t.Context(), url, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// TestPostgres checks what is particular to the PostgreSQL store; the
// behaviour it shares with Pebble is in the conformance suite.
func TestPostgres(t *testing.T) {
	srv := startPostgres(t)
	day := time.Date(2031, 5, 20, 0, 0, 0, 0, time.UTC)
	mk := func(at time.Time, seq uint64) Entry {
		return Entry{Workspace: "ws", Key: "k", Owner: "o", Model: "m", Status: 200, At: at, Producer: "p", Seq: seq, Record: []byte{byte(seq)}}
	}

	t.Run("one partition per UTC day", func(t *testing.T) {
		url := srv.newDatabase(t)
		p := openPostgres(t, url)
		require.Empty(t, pgPartitions(t, url))
		require.NoError(t, p.Append(t.Context(), []Entry{
			mk(day.Add(-time.Nanosecond), 1), mk(day, 2), mk(day.Add(24*time.Hour-1), 3), mk(day.Add(48*time.Hour), 4),
		}))
		require.Equal(t, []string{"request_log_20310519", "request_log_20310520", "request_log_20310522"}, pgPartitions(t, url))
		// The day boundary is exact: each entry is in its own day.
		conn, err := pgx.Connect(t.Context(), url)
		require.NoError(t, err)
		defer conn.Close(context.WithoutCancel(t.Context()))
		var n int
		require.NoError(t, conn.QueryRow(t.Context(), "SELECT count(*) FROM request_log_20310520").Scan(&n))
		require.Equal(t, 2, n)
	})

	t.Run("trim drops old days and the older rows of the cutoff's day", func(t *testing.T) {
		url := srv.newDatabase(t)
		p := openPostgres(t, url)
		cutoff := day.Add(12*time.Hour + 123)
		es := []Entry{
			mk(day.Add(-48*time.Hour), 1), mk(day.Add(-time.Nanosecond), 2), // whole days before
			mk(day, 3), mk(cutoff.Add(-time.Nanosecond), 4), // the cutoff's day, older
			mk(cutoff, 5), mk(cutoff.Add(time.Nanosecond), 6), mk(day.Add(30*time.Hour), 7), // kept
		}
		require.NoError(t, p.Append(t.Context(), es))
		require.Len(t, pgPartitions(t, url), 4)
		n, err := p.Trim(t.Context(), cutoff)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		require.Equal(t, []string{"request_log_20310520", "request_log_20310521"}, pgPartitions(t, url))
		page, err := p.List(t.Context(), Query{Workspace: "ws", Limit: 100})
		require.NoError(t, err)
		require.Equal(t, []Entry{es[6], es[5], es[4]}, page.Entries)

		// A day ending exactly at the cutoff goes whole.
		n, err = p.Trim(t.Context(), day.Add(24*time.Hour))
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, []string{"request_log_20310521"}, pgPartitions(t, url))
	})

	t.Run("replicas share the store", func(t *testing.T) {
		url := srv.newDatabase(t)
		a, b := openPostgres(t, url), openPostgres(t, url)
		// Both create the same new days at once, with overlapping batches.
		var want []Entry
		for i := range 600 {
			want = append(want, mk(day.Add(time.Duration(i)*7*time.Minute+time.Duration(i)), uint64(i)))
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			s := []*Postgres{a, b}[w%2]
			wg.Go(func() {
				for i := w * 50; i < len(want); i += 200 {
					if err := s.Append(t.Context(), want[i:min(i+200, len(want))]); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		slices.Reverse(want)
		require.Equal(t, want, confListAll(t, a, Query{Workspace: "ws", Limit: 1000}))

		// b trims a day that a believes exists; a then writes into it again.
		n, err := b.Trim(t.Context(), day.Add(24*time.Hour))
		require.NoError(t, err)
		require.Equal(t, 1, n)
		late := mk(day.Add(time.Hour+1), 10_000)
		require.NoError(t, a.Append(t.Context(), []Entry{late}))
		page, err := b.List(t.Context(), Query{Workspace: "ws", Key: "k", Limit: 1, Before: &Cursor{At: day.Add(2 * time.Hour)}})
		require.NoError(t, err)
		require.Equal(t, []Entry{late}, page.Entries)
	})

	t.Run("bad URL", func(t *testing.T) {
		_, err := OpenPostgres(t.Context(), "postgres://nobody:wrong@"+net.JoinHostPort(srv.host, strconv.Itoa(srv.port))+"/postgres?sslmode=disable", nil)
		require.Error(t, err)
		_, err = OpenPostgres(t.Context(), "::not a url", nil)
		require.Error(t, err)
	})
}
