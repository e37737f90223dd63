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
	"github.com/keygate/keygate/pkg/loadgen"
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
	h := startEdge(b, options{
		providers: []*keystorev1.Provider{{Id: "up", BaseUrl: up.URL + "/v1"}},
		models:    []*keystorev1.Model{{Id: "bench", Provider: "up", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "2"}},
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

const benchBody = `{"model":"bench","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`
const benchStreamBody = `{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}`

// call sends one request and returns its latency, or the time to the first
// body line when ttfb is set. It fails the benchmark from the benchmark's
// own goroutine only.
func (p benchPair) call(b *testing.B, base, body string, ttfb bool) time.Duration {
	d, err := p.try(base, body, ttfb)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// try is call for load goroutines: it reports failure instead of stopping.
func (p benchPair) try(base, body string, ttfb bool) (time.Duration, error) {
	req, err := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
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
func latencyVsBare(b *testing.B, body string, ttfb bool) {
	p := newBenchPair(b)
	for range 50 { // warm the connection pools
		p.call(b, p.bare, body, ttfb)
		p.call(b, p.edge, body, ttfb)
	}
	bare := make([]time.Duration, 0, b.N)
	edge := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		bare = append(bare, p.call(b, p.bare, body, ttfb))
		edge = append(edge, p.call(b, p.edge, body, ttfb))
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

// BenchmarkLatencyVsBareProxy: added latency of a non-streamed chat
// completion.
func BenchmarkLatencyVsBareProxy(b *testing.B) { latencyVsBare(b, benchBody, false) }

// BenchmarkStreamTTFBVsBareProxy: added time to the first streamed byte.
func BenchmarkStreamTTFBVsBareProxy(b *testing.B) { latencyVsBare(b, benchStreamBody, true) }

// BenchmarkThroughputVsBareProxy: b.N requests through each from 32
// concurrent clients; reports each one's requests per second and the ratio.
func BenchmarkThroughputVsBareProxy(b *testing.B) {
	p := newBenchPair(b)
	var failed int64
	run := func(base string, n int) float64 {
		rps, bad := loadgen.Throughput(n, 32, func() error {
			_, err := p.try(base, benchBody, false)
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
