package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/etcdtest"
)

// proc is one keygate process of the cluster test.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// addrs waits for the process's "keygate serving" log line and returns the
// addresses it bound (every role listens on :0, so ports never collide).
func (p *proc) addrs(t *testing.T) map[string]string {
	t.Helper()
	var out map[string]string
	require.Eventually(t, func() bool {
		for _, line := range strings.Split(p.out.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "keygate serving" {
				out = map[string]string{}
				for _, k := range []string{"grpc", "http", "edge", "metrics"} {
					if v, _ := rec[k].(string); v != "" {
						out[k] = v
					}
				}
				return true
			}
		}
		return p.cmd.ProcessState != nil
	}, 60*time.Second, 50*time.Millisecond, "%s did not start:\n%s", p.name, p.out.String())
	require.NotNil(t, out, "%s exited:\n%s", p.name, p.out.String())
	return out
}

type cluster struct {
	t     *testing.T
	bin   string
	root  string
	env   []string
	procs []*proc
	mu    sync.Mutex
	// dataDir holds each process's data dir, named after the process, so
	// that a process restarted under its name finds its state again.
	dataDir string
	// health lists the /healthz URLs of the processes served so far.
	health []string
	// etcd lists the `keygate etcd` members started, to kill and restart.
	etcd []*etcdMember
}

// etcdMember is one `keygate etcd` process and how to start it again.
type etcdMember struct {
	name string
	args []string
	p    *proc
}

// restartEtcd starts member i again with its data dir and URLs.
func (c *cluster) restartEtcd(i int) {
	m := c.etcd[i]
	m.p = c.start("etcd-"+m.name, m.args...)
}

// newCluster builds the keygate binary; the cluster's processes are
// stopped when the test ends.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "keygate")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build keygate: %v\n%s", err, out)
	}
	c := &cluster{t: t, bin: bin, root: "kgr_cluster-test-root-token", dataDir: t.TempDir()}
	t.Cleanup(c.stop)
	return c
}

// startEtcd runs n `keygate etcd` members on loopback ports, points every
// process started later at them and waits until they answer; it returns
// their client URLs.
func (c *cluster) startEtcd(n int) []string {
	t := c.t
	t.Helper()
	type member struct{ name, client, peer string }
	var members []member
	var initial []string
	for i := range n {
		m := member{fmt.Sprintf("m%d", i), "http://" + etcdtest.FreeAddr(t), "http://" + etcdtest.FreeAddr(t)}
		members = append(members, m)
		initial = append(initial, m.name+"="+m.peer)
	}
	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, m.client)
		args := []string{"etcd", "--etcd-name", m.name, "--data-dir", filepath.Join(c.dataDir, "etcd-"+m.name),
			"--etcd-client-url", m.client, "--etcd-peer-url", m.peer, "--etcd-initial-cluster", strings.Join(initial, ",")}
		c.etcd = append(c.etcd, &etcdMember{name: m.name, args: args, p: c.start("etcd-"+m.name, args...)})
	}
	c.env = []string{"KEYGATE_ETCD_ENDPOINTS=" + strings.Join(endpoints, ","), "KEYGATE_ROOT_TOKEN=" + c.root, "KEYGATE_LOG_LEVEL=info"}
	cli := etcdtest.NewClient(t, endpoints)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := cli.Put(ctx, "/keygate/cluster-test", "up")
		return err == nil
	}, 60*time.Second, 200*time.Millisecond, "etcd cluster")
	return endpoints
}

// anyPort makes a role bind a free loopback port (and log it).
const anyPort = "127.0.0.1:0"

// serveProc runs `keygate serve <args>` with its own metrics port and
// its data dir under c.dataDir (the usage request log and the edge spool
// live there), waits until it serves and returns it and the addresses it
// bound.
func (c *cluster) serveProc(name string, args ...string) (*proc, map[string]string) {
	c.t.Helper()
	args = append(args, "--metrics-addr", anyPort, "--data-dir", filepath.Join(c.dataDir, name))
	p := c.start(name, append([]string{"serve"}, args...)...)
	a := p.addrs(c.t)
	for _, k := range []string{"metrics", "edge", "http"} {
		if a[k] != "" {
			c.health = append(c.health, "http://"+a[k]+"/healthz")
		}
	}
	return p, a
}

// serve is serveProc for a process the test does not stop itself.
func (c *cluster) serve(name string, args ...string) map[string]string {
	c.t.Helper()
	_, a := c.serveProc(name, args...)
	return a
}

// waitHealthy waits until every process served answers /healthz.
func (c *cluster) waitHealthy() {
	c.t.Helper()
	for _, h := range c.health {
		waitHealthy(c.t, h)
	}
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Kill(), p.name)
	_ = p.cmd.Wait() // "signal: killed"
}

func (c *cluster) start(name string, args ...string) *proc {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), c.env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(c.t, cmd.Start(), name)
	p := &proc{name: name, cmd: cmd, out: out}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// stopTimed sends SIGTERM to every process still running (newest first),
// waits for each up to 30 s, and returns how long each took.
func (c *cluster) stopTimed(t *testing.T) map[string]time.Duration {
	t.Helper()
	took := map[string]time.Duration{}
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		if p.cmd.ProcessState != nil {
			continue // killed or stopped already
		}
		start := time.Now()
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM), p.name)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case <-done:
			took[p.name] = time.Since(start)
		case <-time.After(30 * time.Second):
			// SIGQUIT makes a Go process print every goroutine's stack:
			// the failure shows what it waits on.
			_ = p.cmd.Process.Signal(syscall.SIGQUIT)
			<-done
			t.Errorf("%s did not stop within 30 s of SIGTERM:\n%s", p.name, tail(p.out.String(), 30000))
		}
	}
	return took
}

// stop sends SIGTERM to every process (newest first) and waits.
func (c *cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
		if c.t.Failed() {
			c.t.Logf("--- %s output:\n%s", p.name, tail(p.out.String(), 4000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func waitHealthy(t *testing.T, url string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 60*time.Second, 100*time.Millisecond, url)
}

// TestCluster runs keygate as separate processes, as on Kubernetes: three
// `keygate etcd` members, one keystore, one usage, two limiters, two edges
// and the gateway, all on loopback ports. It drives the core path through
// both edges at once and checks that the key's rpm limit holds across them.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	c := newCluster(t)
	c.startEtcd(3)

	// Every role binds :0 and logs what it bound; later roles are pointed
	// at earlier ones.
	ks := c.serve("keystore", "keystore", "--grpc-addr", anyPort)["grpc"]
	us := c.serve("usage", "usage", "--grpc-addr", anyPort, "--keystore-addr", ks)["grpc"]
	for i := range 2 {
		c.serve(fmt.Sprintf("limiter-%d", i), "limiter", "--grpc-addr", anyPort, "--usage-addr", us)
	}
	var edges []string
	for i := range 2 {
		e := c.serve(fmt.Sprintf("edge-%d", i), "edge", "--edge-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["edge"]
		edges = append(edges, "http://"+e)
	}
	gw := c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["http"]
	c.waitHealthy()

	api := "http://" + gw
	seedCatalog(t, api, c.root)
	const rpm = 10
	code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/keys", c.root, map[string]any{"name": "web", "globalLimits": map[string]any{"rpm": rpm}})
	require.Equal(t, http.StatusOK, code, body)
	secret := body["secret"].(string)
	keyID := body["key"].(map[string]any)["id"].(string)

	// The edges learn the model registry and the limiter members
	// asynchronously: wait until each edge has answered once. That answer
	// counts against the key's limit.
	for _, e := range edges {
		require.Eventually(t, func() bool {
			code, _, _ := chatOnce(t, e, secret)
			return code == http.StatusOK
		}, 30*time.Second, 200*time.Millisecond, e)
	}

	// 30 requests through both edges at once: exactly rpm-2 more admitted.
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, _ := chatOnce(t, edges[i%2], secret)
			switch code {
			case http.StatusOK:
				ok.Add(1)
			case http.StatusTooManyRequests:
				limited.Add(1)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int64(rpm-2), ok.Load(), "admitted across both edges")
	require.Equal(t, int64(30-(rpm-2)), limited.Load())

	require.Eventually(t, func() bool {
		code, _, u := rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID+"/usage", c.root, nil)
		return code == http.StatusOK && num(t, u["requestsToday"]) == rpm
	}, 30*time.Second, 200*time.Millisecond, "usage counted once per admitted request")
}

func chatOnce(t *testing.T, edge, secret string) (int, http.Header, map[string]any) {
	return restQuiet(edge+"/v1/chat/completions", secret, `{"model":"mock-small","messages":[{"role":"user","content":"hi"}]}`)
}

// restQuiet is rest without require, safe in goroutines.
func restQuiet(url, token, body string) (int, http.Header, map[string]any) {
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, resp.Header, out
}

// seedCatalog registers the mock provider, its priced model mock-small and
// workspace acme over REST: what every cluster test starts from.
func seedCatalog(t *testing.T, api, root string) {
	t.Helper()
	for _, step := range []struct {
		path string
		body map[string]any
	}{
		{"/v1/providers", map[string]any{"id": "mock", "baseUrl": "mock"}},
		{"/v1/models", map[string]any{"id": "mock-small", "provider": "mock", "inputPricePerMillionUsd": "0.15", "outputPricePerMillionUsd": "0.60"}},
		{"/v1/workspaces", map[string]any{"id": "acme", "name": "Acme"}},
	} {
		code, _, body := rest(t, "POST", api+step.path, root, step.body)
		require.Equal(t, http.StatusOK, code, "%s: %v", step.path, body)
	}
}
