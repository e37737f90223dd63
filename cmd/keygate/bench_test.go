package main

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/loadgen"
	"github.com/keygate/keygate/services/edge/mock"
)

// stack is a whole keygate (edge, keystore, limiter and usage over real
// loopback gRPC, embedded etcd) and a bare httputil.ReverseProxy, both in
// front of the same mock provider on a loopback listener: the edge's cost
// in one run, with the real limiter round trip in it.
type stack struct {
	edge, bare, secret string
	client             *http.Client
}

func newStack(b *testing.B) stack {
	b.Helper()
	up := httptest.NewServer(mock.New(mock.Options{}))
	b.Cleanup(up.Close)
	app := MustRunApp(b, "", nil)
	api, root := "http://"+app.HTTPAddr, app.Config.RootToken
	post := func(path string, body string) map[string]any {
		code, out := restB(b, api+path, root, body)
		if code != http.StatusOK {
			b.Fatalf("%s: %d %v", path, code, out)
		}
		return out
	}
	post("/v1/providers", `{"id":"up","baseUrl":"`+up.URL+`/v1"}`)
	post("/v1/models", `{"id":"bench","provider":"up","inputPricePerMillionUsd":"1","outputPricePerMillionUsd":"2"}`)
	post("/v1/workspaces", `{"id":"bench","name":"Bench"}`)
	// Limits high enough never to refuse, so every window is checked.
	key := post("/v1/workspaces/bench/keys", `{"name":"bench","globalLimits":{"rpm":1000000000,"tpm":1000000000000,"rpd":1000000000,"tpd":1000000000000},
		"modelLimits":[{"model":"bench","limits":{"rpm":1000000000}}],"budget":{"amountUsd":"1000000","resetPeriod":"RESET_PERIOD_MONTHLY"}}`)
	target, _ := url.Parse(up.URL)
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     &http.Transport{ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 256},
		FlushInterval: -1,
	})
	b.Cleanup(bare.Close)
	s := stack{edge: "http://" + app.EdgeAddr, bare: bare.URL, secret: key["secret"].(string),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
	// The edge learns new models on its registry refresh.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := s.call(s.edge, benchChat, false); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

func restB(b *testing.B, url, token, body string) (int, map[string]any) {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	_ = jsonDecode(resp.Body, &out)
	return resp.StatusCode, out
}

const (
	benchChat   = `{"model":"bench","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`
	benchStream = `{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`
)

type statusError int

func (e statusError) Error() string { return "status " + http.StatusText(int(e)) }

// call sends one request; with ttfb it times the first body line.
func (s stack) call(base, body string, ttfb bool) (time.Duration, error) {
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+s.secret)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var d time.Duration
	if ttfb {
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			return 0, err
		}
		d = time.Since(start)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, statusError(resp.StatusCode)
	}
	if !ttfb {
		d = time.Since(start)
	}
	return d, nil
}

// stackLatency alternates bare and edge requests, so both see the same
// machine load, and reports percentiles in µs and what the edge adds.
func stackLatency(b *testing.B, body string, ttfb bool) {
	s := newStack(b)
	for range 50 {
		_, _ = s.call(s.bare, body, ttfb)
		_, _ = s.call(s.edge, body, ttfb)
	}
	bare := make([]time.Duration, 0, b.N)
	edge := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		d, err := s.call(s.bare, body, ttfb)
		if err != nil {
			b.Fatal(err)
		}
		bare = append(bare, d)
		if d, err = s.call(s.edge, body, ttfb); err != nil {
			b.Fatal(err)
		}
		edge = append(edge, d)
	}
	b.StopTimer()
	bp50, bp99 := loadgen.Percentile(bare, 0.50), loadgen.Percentile(bare, 0.99)
	ep50, ep99 := loadgen.Percentile(edge, 0.50), loadgen.Percentile(edge, 0.99)
	b.ReportMetric(bp50, "bare-p50-µs")
	b.ReportMetric(bp99, "bare-p99-µs")
	b.ReportMetric(ep50, "edge-p50-µs")
	b.ReportMetric(ep99, "edge-p99-µs")
	b.ReportMetric(ep50-bp50, "added-p50-µs")
	b.ReportMetric(ep99-bp99, "added-p99-µs")
}

// BenchmarkStackLatency: what the whole edge path (cached key check, a
// real limiter Check and Settle over gRPC, usage hand-off) adds to a
// non-streamed chat completion.
func BenchmarkStackLatency(b *testing.B) { stackLatency(b, benchChat, false) }

// BenchmarkStackStreamTTFB: the same for the first byte of a stream.
func BenchmarkStackStreamTTFB(b *testing.B) { stackLatency(b, benchStream, true) }

// BenchmarkStackThroughput: the most requests per second through each,
// from 32 concurrent clients, and the ratio.
func BenchmarkStackThroughput(b *testing.B) {
	s := newStack(b)
	var failed int64
	run := func(base string, n int) float64 {
		rps, bad := loadgen.Throughput(n, 32, func() error {
			_, err := s.call(base, benchChat, false)
			return err
		})
		failed += bad
		return rps
	}
	run(s.bare, 200)
	run(s.edge, 200)
	b.ResetTimer()
	bare := run(s.bare, b.N)
	edge := run(s.edge, b.N)
	b.StopTimer()
	if failed > 0 {
		b.Fatalf("%d requests failed", failed)
	}
	b.ReportMetric(bare, "bare-req/s")
	b.ReportMetric(edge, "edge-req/s")
	b.ReportMetric(edge/bare, "rps-ratio")
}
