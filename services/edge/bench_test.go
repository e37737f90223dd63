package edge_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/loadgen"
	"github.com/keygate/keygate/services/edge/mock"
)

// benchPair is the edge and a bare httputil.ReverseProxy in front of the
// same mock upstream on a loopback listener.
type benchPair struct {
	edge, bare string
	client     *http.Client
}

func newBenchPair(b *testing.B) benchPair {
	b.Helper()
	up := httptest.NewServer(mock.New(mock.Options{}))
	b.Cleanup(up.Close)
	// The same mock behind an OpenAI-kind and an Anthropic-kind provider.
	h := startEdge(b, options{
		providers: []*keystorev1.Provider{{Id: "up", BaseUrl: up.URL + "/v1"},
			{Id: "upa", BaseUrl: up.URL + "/v1", Kind: keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC}},
		models: []*keystorev1.Model{{Id: "bench", Provider: "up", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "2"},
			{Id: "bench-claude", Provider: "upa", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "2"}},
	})
	target, err := url.Parse(up.URL)
	if err != nil {
		b.Fatal(err)
	}
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     &http.Transport{ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 256},
		FlushInterval: -1,
	})
	b.Cleanup(bare.Close)
	return benchPair{
		edge:   h.url,
		bare:   bare.URL,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
	}
}

// benchCall is one kind of request: a dialect's path and body.
type benchCall struct {
	name, path, body string
}

var (
	benchUnary = []benchCall{
		{"chat", "/v1/chat/completions", `{"model":"bench","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`},
		{"responses", "/v1/responses", `{"model":"bench","input":"Say something short.","max_output_tokens":16}`},
		{"messages", "/v1/messages", `{"model":"bench-claude","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`},
	}
	benchStream = []benchCall{
		{"chat", "/v1/chat/completions", `{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`},
		{"responses", "/v1/responses", `{"model":"bench","stream":true,"input":"Say something short.","max_output_tokens":16}`},
		{"messages", "/v1/messages", `{"model":"bench-claude","stream":true,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`},
	}
)

// call sends one request and returns its latency, or the time to the first
// body line when ttfb is set. It fails the benchmark from the benchmark's
// own goroutine only.
func (p benchPair) call(b *testing.B, base string, c benchCall, ttfb bool) time.Duration {
	d, err := p.try(base, c, ttfb)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// try is call for load goroutines: it reports failure instead of stopping.
func (p benchPair) try(base string, c benchCall, ttfb bool) (time.Duration, error) {
	req, err := http.NewRequest(http.MethodPost, base+c.path, strings.NewReader(c.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+goodKey)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := p.client.Do(req)
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
		return 0, fmt.Errorf("%s: status %d", base, resp.StatusCode)
	}
	if !ttfb {
		d = time.Since(start)
	}
	return d, nil
}

// latencyVsBare alternates one bare and one edge request per iteration, so
// both see the same machine load, and reports percentiles in µs.
func latencyVsBare(b *testing.B, c benchCall, ttfb bool) {
	p := newBenchPair(b)
	for range 50 { // warm the connection pools
		p.call(b, p.bare, c, ttfb)
		p.call(b, p.edge, c, ttfb)
	}
	bare := make([]time.Duration, 0, b.N)
	edge := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		bare = append(bare, p.call(b, p.bare, c, ttfb))
		edge = append(edge, p.call(b, p.edge, c, ttfb))
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
	b.ReportMetric(ep50/bp50, "p50-ratio")
}

// eachCall runs f as a sub-benchmark per call.
func eachCall(b *testing.B, calls []benchCall, f func(*testing.B, benchCall)) {
	for _, c := range calls {
		b.Run(c.name, func(b *testing.B) { f(b, c) })
	}
}

// BenchmarkLatencyVsBareProxy: added latency of a non-streamed answer, per
// dialect.
func BenchmarkLatencyVsBareProxy(b *testing.B) {
	eachCall(b, benchUnary, func(b *testing.B, c benchCall) { latencyVsBare(b, c, false) })
}

// BenchmarkStreamTTFBVsBareProxy: added time to the first streamed byte,
// per dialect.
func BenchmarkStreamTTFBVsBareProxy(b *testing.B) {
	eachCall(b, benchStream, func(b *testing.B, c benchCall) { latencyVsBare(b, c, true) })
}

// BenchmarkStreamVsBareProxy: added time to the end of a streamed answer
// (every event passed through, usage read, the request accounted), per
// dialect.
func BenchmarkStreamVsBareProxy(b *testing.B) {
	eachCall(b, benchStream, func(b *testing.B, c benchCall) { latencyVsBare(b, c, false) })
}

// BenchmarkThroughputVsBareProxy: b.N requests through each from 32
// concurrent clients; reports each one's requests per second and the
// ratio, per dialect.
func BenchmarkThroughputVsBareProxy(b *testing.B) {
	eachCall(b, benchUnary, throughputVsBare)
}

func throughputVsBare(b *testing.B, c benchCall) {
	p := newBenchPair(b)
	var failed int64
	run := func(base string, n int) float64 {
		rps, bad := loadgen.Throughput(n, 32, func() error {
			_, err := p.try(base, c, false)
			return err
		})
		failed += bad
		return rps
	}
	run(p.bare, 200)
	run(p.edge, 200)
	b.ResetTimer()
	bare := run(p.bare, b.N)
	edge := run(p.edge, b.N)
	b.StopTimer()
	if failed > 0 {
		b.Fatalf("%d requests failed", failed)
	}
	b.ReportMetric(bare, "bare-req/s")
	b.ReportMetric(edge, "edge-req/s")
	b.ReportMetric(edge/bare, "rps-ratio")
}
