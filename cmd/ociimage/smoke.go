package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// smoke runs the binary taken out of the image as the image would (its
// environment, its default command `up`), on free loopback ports: it must
// print its help, answer /healthz on the gateway and the edge, and stop on
// SIGTERM.
func smoke(ctx context.Context, binary string) error {
	// The help of the command the image runs, naming the flags used below.
	help, err := exec.CommandContext(ctx, binary, "up", "--help").CombinedOutput()
	if err != nil || !bytes.Contains(help, []byte("--etcd-peer-url")) {
		return fmt.Errorf("keygate up --help: %v\n%s", err, help)
	}
	peer, err := freeAddr()
	if err != nil {
		return err
	}
	data, err := os.MkdirTemp("", "keygate-smoke-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(data)
	up := exec.CommandContext(ctx, binary, append(defaultCmd,
		"--data-dir", data, "--etcd-peer-url", "http://"+peer,
		"--http-addr", "127.0.0.1:0", "--edge-addr", "127.0.0.1:0",
		"--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0")...)
	up.Env = env
	stderr, err := up.StderrPipe()
	if err != nil {
		return err
	}
	if err := up.Start(); err != nil {
		return err
	}
	defer up.Process.Kill()
	addrs, err := serving(ctx, stderr)
	if err != nil {
		return err
	}
	go io.Copy(io.Discard, stderr)
	for _, role := range []string{"http", "edge"} {
		if err := healthy(ctx, addrs[role]); err != nil {
			return fmt.Errorf("keygate up, %s: %w", role, err)
		}
	}
	return stop(up, 30*time.Second)
}

// serving reads the JSON log until the "keygate serving" line, which holds
// the bound addresses.
func serving(ctx context.Context, r io.Reader) (map[string]string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil || line["msg"] != "keygate serving" {
			continue
		}
		addrs := map[string]string{}
		for _, k := range []string{"http", "edge"} {
			addrs[k], _ = line[k].(string)
		}
		return addrs, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("keygate up exited before serving")
}

// healthy polls /healthz until it answers 200: the edge reports 503 until
// it has loaded the model registry.
func healthy(ctx context.Context, addr string) error {
	if strings.HasPrefix(addr, ":") || strings.HasPrefix(addr, "[::]:") {
		addr = "127.0.0.1" + addr[strings.LastIndex(addr, ":"):]
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := errors.New("no answer")
	for {
		if last = get(ctx, "http://"+addr+"/healthz"); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("/healthz: %w", last)
		case <-tick.C:
		}
	}
}

func get(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("answered %s", res.Status)
	}
	return nil
}

func stop(p *exec.Cmd, timeout time.Duration) error {
	if err := p.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- p.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("keygate up after SIGTERM: %w", err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("keygate up still running %s after SIGTERM", timeout)
	}
}

// freeAddr is a loopback address nobody listens on: etcd must know its peer
// URL before it starts, so :0 cannot be used there.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
